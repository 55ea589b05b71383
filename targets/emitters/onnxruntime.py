"""ONNX Runtime emitter: the optimized .onnx, validated and timed with ORT on this CPU."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.ir.model_io import save_model
from edgeopt.ir.reference import compare_outputs
from edgeopt.targets.emitters.base import EmitResult, Emitter, register_emitter
from edgeopt.targets.emitters.common import op_name


@cache
def _cpu_kernels() -> frozenset[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as capi

    return frozenset((kernel.domain, kernel.op_name) for kernel in capi.get_all_opkernel_def()
                     if kernel.provider == "CPUExecutionProvider")


def _has_function(op_type: str) -> bool:
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type)
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_latency_ms(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                       warmup: int = 3, repeats: int = 20, budget_s: float = 5.0) -> float:
    """Median wall time of one run, after warm-up, bounded by a time budget."""
    for _ in range(warmup):
        session.run(None, dict(feeds))
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        began = time.perf_counter()
        session.run(None, dict(feeds))
        times.append((time.perf_counter() - began) * 1000)
    return float(np.median(times))


@register_emitter("onnxruntime")
class OnnxRuntimeEmitter(Emitter):
    """ONNX model for ONNX Runtime (any execution provider)."""

    description = "ONNX model for ONNX Runtime"

    def unsupported_ops(self, model: ir.Model) -> list[str]:
        # An op needs a CPU kernel or an ONNX function body ORT can inline; custom-domain ops
        # without a registered kernel (no custom-op library is loaded here) are refused.
        kernels = _cpu_kernels()
        local = {(domain, name) for domain, name, *_ in model.functions}  # ORT inlines model-local functions
        missing = set()
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            domain = "" if node.domain == "ai.onnx" else node.domain
            if (node.op_type == "Constant" and not domain) or (domain, node.op_type) in kernels | local:
                continue
            if not domain and _has_function(node.op_type):
                continue
            missing.add(op_name(node))
        return sorted(missing)

    def emit(self, model: ir.Model, folder: Path, options: Mapping[str, Any]) -> EmitResult:
        path = folder / "model.onnx"
        files = save_model(model, path)
        return EmitResult("onnxruntime", path, files=files)

    def validate(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], *, threads: int | None = None,
                 measure: bool = True) -> None:
        session = _session(result.artifact, threads)
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, dict(inputs)), strict=True))
        result.validation = compare_outputs(reference, outputs, atol=1e-4, rtol=1e-3).summary()
        if measure:
            result.latency_ms = measure_latency_ms(session, inputs)
