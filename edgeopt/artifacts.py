"""The compile folder's manifest.json and report.json.

The manifest follows the packaging format of the seed guide (§8.3: model name,
version, framework, file, input/output specs, hardware requirements, metrics)
and adds what a deployment pipeline needs to trust the folder: the SHA-256 of
every file, the target and the precision.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import onnx_ir as ir

import edgeopt
from edgeopt.ir.costs import parameter_count
from edgeopt.ir.model_io import model_bytes
from edgeopt.ir.reference import Comparison

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulNBits",
              "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_spec(value: ir.Value) -> dict[str, Any]:
    shape = None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
    dtype = value.dtype.name.lower() if value.dtype is not None else None
    return {"name": value.name, "dtype": dtype, "shape": shape}


def precision_of(model: ir.Model) -> str:
    """fp32, fp16, int8, int4 or mixed, judged from the weights and quantization ops."""
    kinds: set[str] = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in _QUANT_OPS:
            kinds.add("int8")
    for value in model.graph.initializers.values():
        dtype = value.dtype
        if dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            kinds.add("int4")
        elif dtype == ir.DataType.FLOAT16:
            kinds.add("fp16")
        elif dtype == ir.DataType.FLOAT and value.const_value is not None and value.const_value.size > 16:
            kinds.add("fp32")
    if "int8" in kinds or "int4" in kinds:
        kinds.discard("fp32")  # scales and biases stay float in quantized graphs
    if not kinds:
        return "fp32"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_report(folder: Path, request: Any, target: Any, pipeline: Any, emitted: Any,
                 final: Comparison, seconds: float) -> dict[str, Any]:
    report = {
        "edgeopt_version": edgeopt.__version__,
        "model": str(request.model),
        "target": target.name,
        "backend": emitted.backend,
        "verify": request.verify,
        **pipeline.to_dict(),
        "final_comparison": final.summary(),
        "validation": emitted.validation,
        "latency_ms": emitted.latency_ms,
        "emitter_notes": emitted.notes,
        "compile_seconds": seconds,
    }
    _write_json(folder / "report.json", report)
    return report


def write_manifest(folder: Path, source: Path, input_model: ir.Model, model: ir.Model, target: Any,
                   emitted: Any, final: Comparison, predicted_latency_ms: float | None = None) -> dict[str, Any]:
    """Written last: it hashes every other file in the folder."""
    artifact = emitted.artifact
    files = {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "manifest.json"
    }
    size = sum((folder / name).stat().st_size for name in files)
    manifest = {
        "model_name": model.graph.name or source.stem,
        "source": source.name,
        "version": str(model.model_version or 0),
        "producer": f"edgeopt {edgeopt.__version__}",
        "framework": emitted.backend,
        "file": str(artifact.relative_to(folder)),
        "inputs": [tensor_spec(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [tensor_spec(v) for v in model.graph.outputs],
        "target": target.name,
        "precision": precision_of(model),
        "hardware_requirements": {
            "target": target.name,
            "backends": list(target.backends),
            "weights_mb": round(model_bytes(model) / 2**20, 3),
        },
        "metrics": {
            "nodes_before": len(input_model.graph),
            "nodes_after": len(model.graph),
            "params": parameter_count(model),
            "model_size_mb": round(size / 2**20, 4),
            "latency_ms": emitted.latency_ms,
            "predicted_latency_ms": predicted_latency_ms,  # the target's CostModel, same backend
            "max_abs_error": final.max_abs,
            "max_rel_error": final.max_rel,
            "cosine": final.cosine,
            "validation": emitted.validation,
        },
        "files": files,
    }
    _write_json(folder / "manifest.json", manifest)
    return manifest
