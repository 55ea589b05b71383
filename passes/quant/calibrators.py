"""Calibrators: streaming histograms and the range each method picks from them.

Written here rather than taken from onnxruntime.quantization because ORT's
HistogramCalibrater keeps every batch's activations in a list before it
builds histograms (ORT #10503: > 256 GB for BERT with percentile), and its
collector's bin count grows with the observed range. Ours keeps a fixed
number of bins per tensor: when new data falls outside the range, the range
doubles and adjacent bins merge pairwise (exact, no interpolation), the way
TensorRT and PyTorch's HistogramObserver bound their memory. Memory is
``bins * 8`` bytes per tensor (64 KiB by default), whatever the number of samples.

Methods: ``minmax`` (exact running min/max), ``percentile``, ``entropy``
(TensorRT's KL-divergence threshold search) and ``mse`` (the clipping range
minimising expected quantization error over the histogram).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")


class StreamingHistogram:
    """A fixed-size histogram over [-R, R] whose R grows by powers of two."""

    def __init__(self, bins: int = 8192) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.radius = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.seen = 0

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes

    def _grow_to(self, magnitude: float) -> None:
        if self.radius == 0.0:
            # First data: a power of two just above the magnitude, so later merges stay exact.
            self.radius = float(2.0 ** np.ceil(np.log2(max(magnitude, 1e-12))))
            return
        while self.radius < magnitude:
            # New range is twice as wide: old bins fold pairwise into the middle half.
            half = self.counts.reshape(-1, 2).sum(axis=1)
            grown = np.zeros_like(self.counts)
            quarter = self.bins // 4
            grown[quarter:quarter + half.size] = half
            self.counts = grown
            self.radius *= 2.0

    def update(self, values: np.ndarray) -> None:
        data = np.asarray(values, dtype=np.float32).ravel()
        data = data[np.isfinite(data)]
        if data.size == 0:
            return
        low, high = float(data.min()), float(data.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self._grow_to(max(abs(low), abs(high)))
        counts, _ = np.histogram(data, bins=self.bins, range=(-self.radius, self.radius))
        self.counts += counts
        self.seen += data.size

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        edges = self.edges
        return (edges[:-1] + edges[1:]) / 2

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| over [0, R] with bins/2 bins, and the bin width."""
        mid = self.bins // 2
        folded = self.counts[mid:] + self.counts[:mid][::-1]
        return folded, self.radius / mid


@dataclass(frozen=True)
class Range:
    low: float
    high: float


def _percentile_bound(hist: StreamingHistogram, fraction: float) -> float:
    folded, width = hist.abs_histogram()
    total = folded.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(folded), fraction * total))
    return min((index + 1) * width, max(abs(hist.min), abs(hist.max)))


def _entropy_bound(hist: StreamingHistogram, quantized_bins: int = 128, stride: int = 4) -> float:
    """TensorRT's calibration: the |x| threshold whose clipped, 128-level copy is closest in KL."""
    folded, width = hist.abs_histogram()
    folded = folded.astype(np.float64)
    last = int(np.nonzero(folded)[0][-1]) + 1 if folded.any() else 0
    if last <= quantized_bins:
        return last * width
    best, best_kl = last, np.inf
    for end in range(quantized_bins, last + 1, stride):
        reference = folded[:end].copy()
        reference[-1] += folded[end:].sum()  # outliers clip onto the last level
        merge = end / quantized_bins
        # Each reference bin belongs to one of the quantized levels.
        level = np.minimum((np.arange(end) / merge).astype(np.int64), quantized_bins - 1)
        level_sum = np.bincount(level, weights=folded[:end], minlength=quantized_bins)
        level_nonzero = np.bincount(level, weights=(folded[:end] > 0), minlength=quantized_bins)
        expanded = np.where(folded[:end] > 0, level_sum[level] / np.maximum(level_nonzero[level], 1), 0.0)
        p = reference / reference.sum()
        q_total = expanded.sum()
        if q_total == 0:
            continue
        q = expanded / q_total
        mask = p > 0
        # Where p > 0 but q == 0 the divergence is infinite: smooth q like TensorRT does.
        q = np.where(mask & (q == 0), 1e-4 / end, q)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best, best_kl = end, kl
    return best * width


def _mse_range(hist: StreamingHistogram, levels: int, symmetric: bool, steps: int = 100) -> Range:
    """The clipping range (a shrink of min/max) with the least expected squared error."""
    centers, counts = hist.centers, hist.counts.astype(np.float64)
    keep = counts > 0
    centers, counts = centers[keep], counts[keep]
    low, high = (min(hist.min, 0.0), max(hist.max, 0.0))
    if symmetric:
        bound = max(abs(low), abs(high))
        low, high = -bound, bound
    best, best_err = Range(low, high), np.inf
    for alpha in np.linspace(1.0 / steps, 1.0, steps):
        lo, hi = low * alpha, high * alpha
        if hi - lo <= 0:
            continue
        scale = (hi - lo) / (levels - 1)
        clipped = np.clip(centers, lo, hi)
        rounded = np.round((clipped - lo) / scale) * scale + lo
        err = float(np.sum(counts * (centers - rounded) ** 2))
        if err < best_err:
            best, best_err = Range(lo, hi), err
    return best


def compute_range(hist: StreamingHistogram, method: str, symmetric: bool = False, bits: int = 8,
                  percentile: float = 99.999) -> Range:
    """The float range [low, high] to map onto the integer grid (always contains 0)."""
    if hist.seen == 0:
        return Range(0.0, 0.0)
    low, high = min(hist.min, 0.0), max(hist.max, 0.0)
    if method == "minmax":
        bound = None
    elif method == "percentile":
        bound = _percentile_bound(hist, percentile / 100.0)
    elif method == "entropy":
        bound = _entropy_bound(hist)
    elif method == "mse":
        return _mse_range(hist, 2**bits, symmetric)
    else:
        raise ValueError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
    if bound is not None:
        low, high = max(low, -bound), min(high, bound)
    if symmetric:
        bound = max(abs(low), abs(high))
        return Range(-bound, bound)
    return Range(low, high)


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point (arrays for per-channel), with the integer type they map to."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: np.dtype
    axis: int | None = None


def _integer_limits(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def activation_params(r: Range, bits: int = 8, symmetric: bool = False, signed: bool | None = None) -> QuantParams:
    """Scale/zero point of an activation range; unsigned unless the rule set wants signed."""
    if signed is None:
        signed = symmetric and r.low < 0
    qmin, qmax = _integer_limits(bits, signed)
    dtype = np.dtype(f"{'int' if signed else 'uint'}{bits}")
    if symmetric:
        bound = max(abs(r.low), abs(r.high))
        # Signed symmetric maps [-bound, bound] onto [-qmax, qmax] (TensorRT's and ORT's restricted range).
        scale = bound / qmax if signed else bound / ((qmax - qmin) / 2)
        scale = scale if bound > 0 else 1.0
        zero = 0 if signed else (qmax + qmin + 1) // 2
        if not signed and r.low >= 0:
            scale, zero = (r.high / qmax if r.high > 0 else 1.0), 0
    else:
        span = r.high - r.low
        scale = span / (qmax - qmin) if span > 0 else 1.0
        zero = int(np.clip(round(qmin - r.low / scale), qmin, qmax))
    return QuantParams(np.array(scale, np.float32), np.array(zero, dtype), dtype)


def weight_params(weight: np.ndarray, axis: int | None = 0, bits: int = 8, symmetric: bool = True,
                  reduce_range: bool = False) -> QuantParams:
    """Min-max weight quantization, per channel along ``axis`` or per tensor (``axis=None``).

    ``reduce_range`` uses 7 bits: on AVX2 without VNNI the u8*s8 kernels add pairs
    in int16 (vpmaddubsw) and saturate with full 8-bit weights.
    """
    effective = bits - 1 if reduce_range else bits
    qmin, qmax = _integer_limits(effective, True)
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis) if axis is not None else None
    if symmetric:
        bound = np.max(np.abs(weight), axis=reduce_axes)
        scale = np.where(bound > 0, bound / qmax, 1.0).astype(np.float32)
        zero = np.zeros_like(scale, dtype=np.int8)
    else:
        low = np.minimum(np.min(weight, axis=reduce_axes), 0)
        high = np.maximum(np.max(weight, axis=reduce_axes), 0)
        scale = np.where(high > low, (high - low) / (qmax - qmin), 1.0).astype(np.float32)
        zero = np.clip(np.round(qmin - low / scale), qmin, qmax).astype(np.int8)
    return QuantParams(np.asarray(scale), np.asarray(zero), np.dtype(np.int8), axis)


def quantize_array(values: np.ndarray, params: QuantParams) -> np.ndarray:
    info = np.iinfo(params.dtype)
    scale, zero = params.scale, params.zero_point.astype(np.int64)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[params.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.clip(np.round(values / scale) + zero, info.min, info.max).astype(params.dtype)


def dequantize_array(values: np.ndarray, params: QuantParams) -> np.ndarray:
    scale, zero = params.scale, params.zero_point.astype(np.float32)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[params.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)


def sqnr_db(reference: np.ndarray, approximate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approximate, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")
