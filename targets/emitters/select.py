"""``--backend auto``: TVM only where it measures faster than ONNX Runtime on the same model.

A TVM build is worth shipping only when its (tuned) kernels beat ONNX Runtime; untuned Relax
builds run several times slower on CPUs. The choice is made by measurement, so only targets
this machine can run (``host-cpu``) are measured; for any other target edgeopt has no TVM
latency model yet, so ``auto`` keeps the target's default backend and says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.targets.emitters.base import get_emitter


def choose_backend(target: Any, model: ir.Model, inputs: Mapping[str, np.ndarray],
                   reference: Mapping[str, np.ndarray], overrides: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(backend, notes): "tvm" if it validates and is faster than onnxruntime here, else the default."""
    default = target.default_backend
    if "tvm" not in target.backends or "onnxruntime" not in target.backends:
        return default, [f"auto: target '{target.name}' lacks tvm or onnxruntime; kept {default}"]
    if target.detect != "host":
        return default, [f"auto: '{target.name}' cannot be measured here and there is no TVM latency"
                         f" prediction; kept {default}"]
    latency: dict[str, float] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-auto-") as scratch:
        for backend in ("onnxruntime", "tvm"):
            emitter = get_emitter(backend)
            options = {**target.backend_options.get(backend, {}), **(overrides if backend == "tvm" else {})}
            folder = Path(scratch) / backend
            folder.mkdir()
            try:
                emitter.check(model)
                result = emitter.emit(model, folder, _known(emitter, options))
                emitter.validate(result, inputs, reference, measure=True)
            except UserError as error:
                notes.append(f"auto: {backend} failed ({error})")
                continue
            if result.validation and result.validation.get("ok") and result.latency_ms is not None:
                latency[backend] = result.latency_ms
            else:
                notes.append(f"auto: {backend} did not validate")
    measured = ", ".join(f"{name} {ms:.2f} ms" for name, ms in latency.items())
    if "tvm" in latency and latency["tvm"] < latency.get("onnxruntime", float("inf")):
        return "tvm", [*notes, f"auto: picked tvm ({measured})"]
    fallback = "onnxruntime" if "onnxruntime" in latency else default
    return fallback, [*notes, f"auto: picked {fallback} ({measured or 'nothing measured'})"]


def _known(emitter: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options the emitter declares (ONNX Runtime's target options are not emitter options)."""
    fields = getattr(emitter.Options, "__dataclass_fields__", {})
    return {key: value for key, value in options.items() if key.replace("-", "_") in fields} if fields else {}
