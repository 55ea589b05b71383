"""The zoo registry and its entry points: `module`, `example_inputs`, `build`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import cnn, detector, rnn, transformer
from .export import export_onnx
from .spec import SIZES, ZooEntry, randomize_norms

ZOO: dict[str, ZooEntry] = {
    e.name: e for e in (*cnn.ENTRIES, *detector.ENTRIES, *transformer.ENTRIES, *rnn.ENTRIES)
}


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def module(name: str, size: str = "small", seed: int = 0) -> torch.nn.Module:
    """The torch module behind a zoo model, in eval mode, with weights drawn from `seed`."""
    e = entry(name)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        m = e.factory(size)
    randomize_norms(m, torch.Generator().manual_seed(seed + 1))
    return m.eval()


def example_inputs(name: str, size: str = "small", batch: int = 1, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Valid inputs for the exported model (ids inside the vocabulary, masks that keep token 0)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s in entry(name).inputs(size):
        shape = (batch, *s.shape[1:])
        if s.kind == "ids":
            out[s.name] = rng.integers(0, s.high, shape, dtype=np.int64)
        elif s.kind == "mask":  # right padding of random length, at least one real token
            keep = rng.integers(1, shape[-1] + 1, shape[:-1])
            out[s.name] = (np.arange(shape[-1]) < keep[..., None]).astype(np.int64)
        else:
            out[s.name] = rng.standard_normal(shape, dtype=np.float32)
    return out


def build(name: str, out_dir: Path | str, size: str = "small", opset: int = 17, seed: int = 0,
          force: bool = False) -> Path:
    """Write `<out_dir>/<name>-<size>.onnx` (kept as a cache unless `force`) and return its path.

    The cache key is the file name only: a file built with another opset or seed is reused.
    """
    if opset < 17:
        raise ValueError("the zoo exports at opset 17 or newer")
    path = Path(out_dir) / f"{name}-{size}.onnx"
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    e = entry(name)
    m = module(name, size, seed)
    # Trace with batch 2 so no dim of size 1 gets special-cased into the graph.
    feeds = example_inputs(name, size, batch=2, seed=seed)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    meta = {"zoo.name": name, "zoo.size": size, "zoo.seed": str(seed), "zoo.family": e.family}
    export_onnx(m, e, e.inputs(size), args, path, opset, meta)
    return path
