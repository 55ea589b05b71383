"""Calibrators on known distributions, and the streaming histogram's bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.passes.quant.calibrators import (
    StreamingHistogram,
    activation_params,
    compute_range,
    dequantize_array,
    quantize_array,
    sqnr_db,
    weight_params,
)


def _hist(data: np.ndarray, chunks: int = 10, bins: int = 8192) -> StreamingHistogram:
    hist = StreamingHistogram(bins)
    for part in np.array_split(data, chunks):
        hist.update(part)
    return hist


def test_minmax_gives_exact_asymmetric_and_symmetric_scales() -> None:
    data = np.linspace(-1.0, 3.0, 10_001, dtype=np.float32)
    r = compute_range(_hist(data), "minmax")
    assert (r.low, r.high) == (-1.0, 3.0)
    params = activation_params(r, bits=8, symmetric=False)
    assert params.dtype == np.uint8
    assert float(params.scale) == pytest.approx(4.0 / 255, rel=1e-6)
    assert int(params.zero_point) == 64  # round(0 - (-1) / (4/255)) = round(63.75)
    sym = activation_params(compute_range(_hist(data), "minmax", symmetric=True), symmetric=True, signed=True)
    assert sym.dtype == np.int8 and int(sym.zero_point) == 0
    assert float(sym.scale) == pytest.approx(3.0 / 127, rel=1e-6)
    relu = activation_params(compute_range(_hist(np.abs(data)), "minmax"))
    assert int(relu.zero_point) == 0 and float(relu.scale) == pytest.approx(3.0 / 255, rel=1e-6)


def test_int16_activation_range() -> None:
    params = activation_params(compute_range(_hist(np.linspace(0, 2, 101)), "minmax"), bits=16)
    assert params.dtype == np.uint16 and float(params.scale) == pytest.approx(2.0 / 65535, rel=1e-6)


def test_percentile_entropy_and_mse_clip_outliers_of_a_normal() -> None:
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.standard_normal(400_000), [60.0, -55.0, 80.0]]).astype(np.float32)
    hist = _hist(data)
    assert compute_range(hist, "minmax").high == pytest.approx(80.0)
    percentile = compute_range(hist, "percentile", symmetric=True, percentile=99.99)
    assert 3.5 < percentile.high < 4.5  # |N(0,1)| 99.99th percentile is 3.89
    entropy = compute_range(hist, "entropy", symmetric=True)
    assert 2.0 < entropy.high < 10.0, entropy
    mse = compute_range(hist, "mse", symmetric=True)
    assert 2.0 < mse.high < 80.0, mse
    # The clipped ranges quantize the bulk of the data better than min-max does.
    bulk = data[:10_000]
    errors = {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        params = activation_params(compute_range(hist, method, symmetric=True), symmetric=True, signed=True)
        errors[method] = sqnr_db(bulk, dequantize_array(quantize_array(bulk, params), params))
    assert min(errors["percentile"], errors["entropy"]) > errors["minmax"] + 10
    # MSE minimises the error over all the data, outliers included.
    total = {}
    for method in ("minmax", "mse"):
        params = activation_params(compute_range(hist, method, symmetric=True), symmetric=True, signed=True)
        total[method] = float(np.sum((data - dequantize_array(quantize_array(data, params), params)) ** 2))
    assert total["mse"] < total["minmax"]


def test_histogram_merges_exactly_and_stays_fixed_size() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal(1000) * scale for scale in (0.1, 1, 5, 40)]  # the range keeps growing
    hist = StreamingHistogram(256)
    for chunk in chunks:
        hist.update(chunk)
        assert hist.counts.size == 256
    data = np.concatenate(chunks).astype(np.float32)
    expected, _ = np.histogram(data, bins=256, range=(-hist.radius, hist.radius))
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.seen == data.size and hist.min == data.min() and hist.max == data.max()


def test_histogram_memory_does_not_grow_with_samples() -> None:
    small, large = StreamingHistogram(), StreamingHistogram()
    rng = np.random.default_rng(2)
    small.update(rng.standard_normal(100))
    for _ in range(200):
        large.update(rng.standard_normal(5000))
    assert small.nbytes == large.nbytes == 8192 * 8


def test_per_channel_and_per_tensor_weights() -> None:
    weight = np.stack([np.full((3, 3), 0.5), np.full((3, 3), -2.0)]).astype(np.float32)
    per_channel = weight_params(weight, axis=0)
    np.testing.assert_allclose(per_channel.scale, [0.5 / 127, 2.0 / 127], rtol=1e-6)
    per_tensor = weight_params(weight, axis=None)
    assert float(per_tensor.scale) == pytest.approx(2.0 / 127)
    reduced = weight_params(weight, axis=0, reduce_range=True)
    np.testing.assert_allclose(reduced.scale, [0.5 / 63, 2.0 / 63], rtol=1e-6)
    asym = weight_params(np.array([[0.0, 1.0], [-1.0, 3.0]], np.float32), axis=0, symmetric=False)
    restored = dequantize_array(quantize_array(np.array([[0.0, 1.0], [-1.0, 3.0]], np.float32), asym), asym)
    np.testing.assert_allclose(restored, [[0.0, 1.0], [-1.0, 3.0]], atol=0.02)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        compute_range(_hist(np.ones(10)), "kl")
