"""The roofline bound of one kernel and the default efficiency factors per kernel class.

A kernel can finish no sooner than its FLOPs at the device's peak rate for its
precision, nor sooner than its bytes at the memory bandwidth (Williams et al.,
"Roofline", CACM 2009). Real kernels reach a fraction of either bound; that
fraction depends on the kind of kernel (a depthwise conv is memory-bound and
vectorises badly, a large GEMM gets close to peak), which is what ``calibrate``
measures. The defaults below are what an uncalibrated target starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.targets.catalog import Target

# Precisions a target without a figure for ``precision`` falls back to, in order. FP16 never
# takes the bf16 rate: a CPU with AVX-512 BF16 but no AVX-512 FP16 runs FP16 models in FP32
# (ONNX Runtime: ResNet-50 FP16 20.3 ms, FP32 20.4 ms on such an AMD EPYC).
_FALLBACK = {"int4": ("int4", "int8", "fp16", "fp32"), "int8": ("int8", "fp16", "fp32"),
             "fp16": ("fp16", "fp32"), "fp32": ("fp32", "tf32", "fp16")}

# (compute efficiency, memory efficiency, per-kernel overhead in seconds). Rough figures from
# ORT/oneDNN/TensorRT profiles: GEMM-like kernels reach about half of peak, depthwise and
# elementwise kernels are bound by memory at about half the DRAM bandwidth.
DEFAULT_FACTORS: dict[str, tuple[float, float, float]] = {
    "conv": (0.45, 0.6, 5e-6), "depthwise": (0.12, 0.5, 5e-6), "gemm": (0.5, 0.6, 5e-6),
    "elementwise": (0.5, 0.5, 3e-6), "pooling": (0.3, 0.5, 3e-6), "normalization": (0.3, 0.4, 4e-6),
    "softmax": (0.2, 0.4, 4e-6), "data": (1.0, 0.3, 3e-6), "recurrent": (0.15, 0.5, 20e-6),
    "shape": (1.0, 1.0, 1.5e-6), "free": (1.0, 1.0, 0.5e-6), "attention": (0.25, 0.4, 8e-6),
}
GPU_OVERHEAD_SCALE = 2.0  # a GPU kernel launch costs more than a CPU dispatch
DEFAULT_RUN_OVERHEAD_S = {"cpu": 30e-6, "gpu": 60e-6}


@dataclass(frozen=True)
class Roofline:
    compute_s: float  # FLOPs / peak
    memory_s: float  # bytes / bandwidth
    peak: float  # operations per second used
    bandwidth: float  # bytes per second used

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)


def effective_peak(target: Target, precision: str, unit: str | None = None) -> float:
    """Peak ops/s for ``precision``: the target's own figure, else the nearest it has.

    A CPU without native FP16 math (no avx512_fp16 / asimdhp) has no fp16 figure, so
    fp16 kernels run at the fp32 rate there; the catalog's host detection already
    gives INT8 only 2x FP32 without VNNI, so INT8 does not look free on such a CPU.
    """
    for candidate in _FALLBACK.get(precision, (precision, "fp32")):
        peak = target.peak(candidate, unit=unit)
        if peak:
            return peak
    peaks = [target.peak(p) for p in target.compute]
    return max((p for p in peaks if p), default=1e11)


def effective_bandwidth(target: Target) -> float:
    return target.bandwidth or 10e9


def roofline(flops: float, nbytes: float, peak: float, bandwidth: float) -> Roofline:
    return Roofline(flops / peak if peak > 0 else 0.0, nbytes / bandwidth if bandwidth > 0 else 0.0,
                    peak, bandwidth)


def default_factors(kind: str, device_kind: str) -> tuple[float, float, float]:
    compute, memory, overhead = DEFAULT_FACTORS[kind]
    return compute, memory, overhead * (GPU_OVERHEAD_SCALE if device_kind == "gpu" else 1.0)


def factor_time(line: Roofline, compute_eff: float, memory_eff: float, overhead: float) -> float:
    """Roofline with efficiencies: max(FLOPs/(peak*ec), bytes/(bw*em)) + overhead."""
    return max(line.compute_s / max(compute_eff, 1e-6), line.memory_s / max(memory_eff, 1e-6)) + overhead
