"""CostModel: per-kernel and per-model latency, memory, weights and energy on one target.

Implements the ``CostQuery`` protocol of ``edgeopt.passes.base`` so passes can ask
``ctx.cost.latency(model, {"conv3": "int8"})`` without importing this layer.
Latency = run overhead + sum over the backend's kernels of the kernel time, where a
kernel's time is its roofline bound divided by per-class efficiencies plus a dispatch
overhead (defaults in ``roofline.py``), corrected by the target's calibration when one
was measured (``edgeopt calibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgeopt.ir.costs import concrete_shapes
from edgeopt.ir.errors import UserError
from edgeopt.ir.shapes import infer_shapes
from edgeopt.targets.catalog import Target
from edgeopt.targets.cost.composition import kernel_in_model_s
from edgeopt.targets.cost.features import KernelSample
from edgeopt.targets.cost.kernels import PRECISIONS, Kernel, group_kernels, layout_boundary_bytes
from edgeopt.targets.cost.memory import peak_activation_bytes, weight_bytes
from edgeopt.targets.cost.roofline import (
    DEFAULT_RUN_OVERHEAD_S,
    Roofline,
    default_factors,
    effective_bandwidth,
    effective_peak,
    factor_time,
    roofline,
)


@dataclass
class KernelEstimate:
    kernel: Kernel
    line: Roofline
    seconds: float  # predicted time of this kernel inside the model (composition applied)


@dataclass
class Estimate:
    target: str
    backend: str
    kernels: list[KernelEstimate] = field(default_factory=list)
    run_overhead_s: float = 0.0  # per inference, plus layout conversions between kernels
    peak_activation_bytes: int = 0
    weight_bytes: int = 0
    power_w: float | None = None
    calibration: str | None = None  # the calibration file used, if any

    @property
    def latency_s(self) -> float:
        return self.run_overhead_s + sum(k.seconds for k in self.kernels)

    @property
    def flops(self) -> int:
        return sum(k.kernel.flops for k in self.kernels)

    @property
    def energy_j(self) -> float | None:
        """Time x the power envelope (the device's top power): an upper bound per inference."""
        return None if self.power_w is None else self.latency_s * self.power_w

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "backend": self.backend, "latency_ms": self.latency_s * 1e3,
                "peak_activation_mb": self.peak_activation_bytes / 2**20,
                "weights_mb": self.weight_bytes / 2**20, "energy_mj": None if self.energy_j is None
                else self.energy_j * 1e3, "gflops": self.flops / 1e9, "calibration": self.calibration,
                "kernels": [{"name": k.kernel.name, "ops": k.kernel.ops, "kind": k.kernel.kind,
                             "precision": k.kernel.precision, "flops": k.kernel.flops, "bytes": k.kernel.bytes,
                             "bound": k.line.bound, "ms": k.seconds * 1e3} for k in self.kernels]}


class CostModel:
    """Latency, memory and energy of ONNX models on ``target`` served by ``backend``.

    ``calibration`` is a Calibration, a path to a calibration file, or None to use the
    one ``edgeopt calibrate`` saved for this target and backend (if any, and if
    ``use_cache``). ``bindings`` fixes symbolic dims (e.g. ``{"sequence": 128}``).
    """

    def __init__(self, target: Target, backend: str | None = None, calibration: Any = None, *,
                 use_cache: bool = True, bindings: Mapping[str, int] | None = None) -> None:
        from edgeopt.targets.calibration.store import Calibration, find_calibration, load_calibration

        self.target = target
        self.backend = backend or target.default_backend
        if self.backend not in target.backends:
            raise UserError(f"target '{target.name}' has no backend '{self.backend}' "
                            f"(it offers: {', '.join(target.backends)})")
        if isinstance(calibration, (str, Path)):
            calibration = load_calibration(Path(calibration), target)
        elif calibration is None and use_cache:
            calibration = find_calibration(target, self.backend)
        self.calibration: Calibration | None = calibration
        self.bindings = dict(bindings or {})
        self._fitted: Any = None  # the calibration's predictor, loaded or fitted when latency is first asked

    @property
    def _predictor(self) -> Any:
        if self._fitted is None and self.calibration is not None:
            self._fitted = self.calibration.predictor(self.target)
        return self._fitted

    @property
    def device_kind(self) -> str:
        return "gpu" if self.target.kind == "gpu" or self.backend == "tensorrt" else "cpu"

    # --- the CostQuery protocol ---------------------------------------------------------------

    def latency(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> float:
        """Predicted seconds for one inference of ``model`` (nodes in ``precision`` run at that precision)."""
        return self.estimate(model, precision).latency_s

    def layer_latency(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> dict[str, float]:
        """Seconds per node: a kernel's time goes to its anchor node, fused nodes get 0."""
        result: dict[str, float] = {}
        for item in self.estimate(model, precision).kernels:
            for name in item.kernel.node_names:
                result.setdefault(name, 0.0)
            result[item.kernel.name] = result.get(item.kernel.name, 0.0) + item.seconds
        return result

    # --- everything else ---------------------------------------------------------------------

    def shapes(self, model: ir.Model) -> dict[str, tuple[int, ...]]:
        return concrete_shapes(model, infer_shapes(model), self.bindings)

    def kernels(self, model: ir.Model, precision: Mapping[str, str] | None = None,
                shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Kernel]:
        _check_precisions(precision)
        return group_kernels(model, shapes if shapes is not None else self.shapes(model), self.backend, precision,
                             self.fp16_runs_as_fp32)

    @property
    def fp16_runs_as_fp32(self) -> bool:
        """Whether this backend computes fp16 nodes in fp32 here, so they cost what fp32 ones do.

        ONNX Runtime's and OpenVINO's CPU providers, on a CPU without native fp16 math (no
        fp16 figure in the target), cast an fp16 graph up and run their fp32 kernels: a ResNet-18
        converted to fp16 ran 40.65 ms against 40.80 ms in fp32 on ONNX Runtime (39.31 / 39.46 on
        OpenVINO), and ONNX Runtime's lone fp16 convs, priced as fp16, put it 23 % over.
        """
        return (self.device_kind == "cpu" and self.backend in ("onnxruntime", "openvino")
                and self.target.peak("fp16") is None)

    def kernel_seconds(self, kernels: list[Kernel]) -> list[tuple[Roofline, float]]:
        """(roofline, isolated kernel seconds) per kernel, before composition."""
        lines = [self.line(kernel.kind, kernel.precision, kernel.flops, kernel.bytes) for kernel in kernels]
        if self._predictor is not None:
            times = self._predictor.predict([KernelSample.of(k) for k in kernels], lines)
        else:
            times = [factor_time(line, *default_factors(k.kind, self.device_kind)) for k, line in
                     zip(kernels, lines, strict=True)]
        return list(zip(lines, times, strict=True))

    def line(self, kind: str, precision: str, flops: float, nbytes: float) -> Roofline:
        del kind
        return roofline(flops, nbytes, effective_peak(self.target, precision), effective_bandwidth(self.target))

    def estimate(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> Estimate:
        shapes = self.shapes(model)
        kernels = self.kernels(model, precision, shapes)
        timed = self.kernel_seconds(kernels)
        bandwidth = effective_bandwidth(self.target)
        if self.calibration is not None:
            comp = self.calibration.composition
        else:  # uncalibrated: isolated times add up as they are
            comp = {"run_overhead_s": DEFAULT_RUN_OVERHEAD_S[self.device_kind], "scale": 1.0, "per_kernel_s": 0.0,
                    "layout_s_per_byte": 2.0 / bandwidth}  # read + write at DRAM speed
        run = comp["run_overhead_s"] + comp["layout_s_per_byte"] * layout_boundary_bytes(
            kernels, shapes, self.backend)
        items = [KernelEstimate(k, line, kernel_in_model_s(k, t, comp, bandwidth))
                 for k, (line, t) in zip(kernels, timed, strict=True)]
        return Estimate(self.target.name, self.backend, items, run,
                        peak_activation_bytes(model, shapes, kernels), weight_bytes(model, kernels),
                        self.target.power_w,
                        str(self.calibration.path) if self.calibration is not None else None)

    def peak_memory(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> int:
        return self.estimate(model, precision).peak_activation_bytes

    def energy(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> float | None:
        return self.estimate(model, precision).energy_j


def _check_precisions(precision: Mapping[str, str] | None) -> None:
    for node, value in (precision or {}).items():
        if value not in PRECISIONS:
            raise UserError(f"precision for node '{node}': unknown precision '{value}' "
                            f"(known: {', '.join(PRECISIONS)})")
