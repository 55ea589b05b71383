"""Data types shared by the zoo families: what a model is called, how it is built, what it eats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import onnx
import torch
from torch import nn

Size = Literal["small", "full"]
SIZES: tuple[str, ...] = ("small", "full")
Family = Literal["cnn", "detector", "transformer", "rnn"]


@dataclass(frozen=True)
class InputSpec:
    """One graph input. `shape` includes the batch dim (its value there is ignored)."""

    name: str
    shape: tuple[int, ...]
    kind: Literal["normal", "ids", "mask"] = "normal"  # float N(0,1) / int64 ids / int64 0-1 mask
    high: int = 0  # exclusive upper bound of "ids"
    axes: tuple[tuple[int, str], ...] = ((0, "batch"),)  # symbolic dims in the exported graph


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: `factory(size)` makes the torch module, `inputs(size)` describes its inputs."""

    name: str
    family: Family
    description: str
    factory: Callable[[str], nn.Module]
    inputs: Callable[[str], tuple[InputSpec, ...]]
    outputs: tuple[str, ...] = ("logits",)
    # Rewrites the exported graph (the Paddle-style variant turns small tensors into Constants).
    postprocess: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None


def image_input(res: int, channels: int = 3) -> tuple[InputSpec, ...]:
    return (InputSpec("images", (1, channels, res, res)),)


def pick(cfgs: dict[str, dict], size: str) -> dict:
    if size not in cfgs:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(cfgs)}")
    return cfgs[size]


def randomize_norms(module: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms.

    Freshly made BNs are identities (mean 0, var 1, weight 1, bias 0): a fusion bug would go
    unseen, and the exporter would also dedupe the equal tensors into Identity nodes.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
