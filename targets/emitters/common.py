"""Helpers the backend emitters share: op inventories, ONNX payloads, timing, comparisons."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import PROTOBUF_LIMIT, model_bytes, save_model
from edgeopt.ir.reference import compare_outputs

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                       "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "MatMulNBits"})
# Tolerances of the reference comparison: FP32 artifacts must agree to 1e-4 (the bar);
# FP16 weights and INT8 QDQ graphs are judged by agreement (cosine, top-1) with a looser bound.
FP32_TOLERANCE = (1e-4, 1e-3)
REDUCED_TOLERANCE = (5e-2, 5e-2)


def op_name(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def op_inventory(model: ir.Model) -> dict[str, list[str]]:
    """Op name -> names of the nodes using it, subgraphs included (an op inside an If counts)."""
    found: dict[str, list[str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        found.setdefault(op_name(node), []).append(node.name or "?")
    return found


def is_quantized(model: ir.Model) -> bool:
    return any(node.op_type in QUANT_OPS for node in ir.traversal.RecursiveGraphIterator(model.graph))


def onnx_bytes(model: ir.Model) -> bytes | None:
    """The serialized model, or None when it is too big for one protobuf (save it to a file then)."""
    if model_bytes(model) >= PROTOBUF_LIMIT - 64 * 2**20:
        return None
    return ir.serde.serialize_model(model).SerializeToString()


def write_onnx(model: ir.Model, path: Path) -> list[Path]:
    """Save a standalone copy (external data beside it only above 2 GB); returns the files written."""
    return save_model(model, path)


def time_call(run: Callable[[], Any], warmup: int = 3, repeats: int = 20, budget_s: float = 5.0) -> float:
    """Median wall time of ``run()`` in milliseconds after warm-up, bounded by a time budget."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return float(np.median(times))


def compare(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
            reduced: bool) -> dict[str, Any]:
    """Comparison.summary() plus the tolerance used and whether it was an agreement check."""
    atol, rtol = REDUCED_TOLERANCE if reduced else FP32_TOLERANCE
    summary = dict(compare_outputs(reference, outputs, atol=atol, rtol=rtol).summary())
    summary.update({"atol": atol, "rtol": rtol, "mode": "agreement" if reduced else "fp32"})
    return summary


def by_position(reference: Mapping[str, np.ndarray], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Name positional backend outputs after the reference's (backends may rename outputs)."""
    names = list(reference)
    if len(arrays) != len(names):
        raise ValueError(f"backend returned {len(arrays)} output(s), the reference has {len(names)}")
    return dict(zip(names, arrays, strict=True))


def check_dim_names(backend: str, option: str, given: set[str], used: set[str]) -> None:
    """A size given for a dim the model does not have is a typo: say which, and what the model has."""
    unknown = given - used
    if unknown:
        raise UserError(f"backend '{backend}': {option} names unknown dim(s) {', '.join(sorted(unknown))}"
                        f" (the model's are: {', '.join(sorted(used)) or 'none'})")
