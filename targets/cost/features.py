"""The numbers a calibrated predictor sees for one kernel (shared by calibration and CostModel)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeopt.targets.cost.kernels import CLASSES, PRECISIONS, Kernel


@dataclass
class KernelSample:
    """A kernel reduced to plain data: what calibration files store and predictors read."""

    kind: str
    precision: str
    flops: float
    activation_bytes: float
    weight_bytes: float
    attrs: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None  # measured kernel time (calibration samples only)
    label: str = ""

    @classmethod
    def of(cls, kernel: Kernel) -> KernelSample:
        return cls(kernel.kind, kernel.precision, float(kernel.flops), float(kernel.activation_bytes),
                   float(kernel.weight_bytes), dict(kernel.attrs), None, kernel.ops)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "precision": self.precision, "flops": self.flops,
                "activation_bytes": self.activation_bytes, "weight_bytes": self.weight_bytes,
                "attrs": self.attrs, "seconds": self.seconds, "label": self.label}

    @classmethod
    def from_dict(cls, data: dict) -> KernelSample:
        return cls(str(data["kind"]), str(data["precision"]), float(data["flops"]),
                   float(data["activation_bytes"]), float(data["weight_bytes"]),
                   {str(k): float(v) for k, v in dict(data.get("attrs", {})).items()},
                   None if data.get("seconds") is None else float(data["seconds"]),
                   str(data.get("label", "")))


_ATTRS = ("out_elems", "k", "stride", "cin", "cout", "hw", "m", "n", "in_elems", "last", "transcendental", "gates",
          "directions")
# What each entry of feature_vector is, in order (for reading a fitted regressor's importances).
FEATURE_NAMES = ("flops", "activation_bytes", "weight_bytes", "compute_over_memory", "compute_us", "memory_us",
                 "depthwise", "transcendental_share", *_ATTRS, *(f"is_{c}" for c in CLASSES),
                 *(f"is_{p}" for p in PRECISIONS))


def feature_vector(sample: KernelSample, compute_s: float, memory_s: float) -> np.ndarray:
    """Log-scaled roofline and shape features plus one-hot class and precision."""
    a = sample.attrs

    def lg(x: float) -> float:
        return math.log1p(max(x, 0.0))

    depthwise = 1.0 if a.get("group", 1) > 1 and a.get("group", 1) == a.get("cin", 0) else 0.0
    # An epilogue's transcendentals against the kernel's own work as well as in absolute count:
    # with the count alone, GradientBoosting read the slow SiLU 1x1 convs of narrow inputs
    # (memory-bound, 15-19 GFLOP/s) onto every SiLU conv with a large map, and put OpenVINO's
    # 64x64 3x3 SiLU convs on 80x80 maps (YOLOv8n's neck) at 1.33-1.43x their measured time
    # (a SiLU post-op costs them 6 % over ReLU).
    transcendental_share = lg(1e3 * a.get("transcendental", 0.0) / max(sample.flops, 1.0))
    values = [lg(sample.flops), lg(sample.activation_bytes), lg(sample.weight_bytes),
              math.log((compute_s + 1e-12) / (memory_s + 1e-12)), lg(compute_s * 1e6), lg(memory_s * 1e6),
              depthwise, transcendental_share, *(lg(a.get(key, 0.0)) for key in _ATTRS)]
    values += [1.0 if sample.kind == c else 0.0 for c in CLASSES]
    values += [1.0 if sample.precision == p else 0.0 for p in PRECISIONS]
    return np.asarray(values, dtype=np.float64)
