"""Calibration fits: roofline factors, recurrent terms, and how kernel times compose in a model."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.targets import get_target
from edgeopt.targets.calibration.compose import fit_composition, fit_profiled_composition
from edgeopt.targets.calibration.fit import (
    Predictor,
    fit_factors,
    fit_predictor,
    lines_for,
    one_direction,
    recurrent_terms,
)
from edgeopt.targets.cost.composition import CompositionTerms
from edgeopt.targets.cost.features import KernelSample
from tests.conftest import synthetic_samples


def _row(isolated: float, kernels: int, measured: float, layout: float = 0.0, depthwise: float = 0.0,
         stream: float = 0.0, gemm: float = 0.0) -> tuple[CompositionTerms, float, float]:
    return CompositionTerms(isolated, depthwise, kernels, stream, gemm), measured, layout


def test_factor_fit_recovers_known_efficiencies() -> None:
    target = get_target("jetson-orin-nx")
    samples = synthetic_samples(target, "conv", 0.3, 0.5, 2e-5)
    factors = fit_factors(samples, lines_for(samples, target), "gpu")
    ec, em, overhead = factors["conv/fp32"]
    assert ec == pytest.approx(0.3, rel=0.02) and em == pytest.approx(0.5, rel=0.05)
    assert overhead == pytest.approx(2e-5, rel=0.1)


def test_composition_fit_is_exact_on_linear_data() -> None:
    rows = [_row(s, n, 1e-4 + 0.8 * s + 2e-6 * n, b) for s, n, b in
            ((1e-3, 10, 1e6), (5e-3, 40, 0.0), (2e-2, 15, 8e6), (4e-2, 90, 3e6), (1e-2, 30, 2e7))]
    fitted = fit_composition(rows, 1e-4)
    assert fitted["layout_s_per_byte"] == 0.0  # never fitted (fit._CANDIDATES)
    assert fitted["scale"] == pytest.approx(0.8, rel=1e-3)
    assert fitted["run_overhead_s"] == pytest.approx(1e-4, rel=1e-2)
    assert fitted["per_kernel_s"] == pytest.approx(2e-6, rel=1e-2)
    # No network had depthwise or GEMM kernels or weights beyond its kernels' time: neutral terms.
    assert fitted["depthwise_scale"] == fitted["scale"] == fitted["gemm_scale"] and fitted["weight_stream"] == 0.0


def test_composition_fit_recovers_depthwise_gemm_and_weight_stream_terms() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(20):
        s, d, w, g = rng.uniform(1e-3, 2e-2), rng.uniform(0, 5e-3), rng.uniform(0, 3e-3), rng.uniform(0, 9e-3)
        n = int(rng.integers(10, 90))
        rows.append(_row(s, n, 1e-4 + 1.1 * s + 1e-6 * n + 1.6 * d + 2.0 * w + 1.25 * g, depthwise=d, stream=w,
                         gemm=g))
    fitted = fit_composition(rows, 1e-4)
    assert fitted["scale"] == pytest.approx(1.1, rel=1e-3)
    assert fitted["depthwise_scale"] == pytest.approx(1.6, rel=1e-3)
    assert fitted["gemm_scale"] == pytest.approx(1.25, rel=1e-3)
    assert fitted["weight_stream"] == pytest.approx(2.0, rel=1e-3)
    assert fitted["vector_stream"] == fitted["weight_stream"]  # no vector kernel streamed: tied to the rest


def test_composition_fit_leaves_out_terms_the_networks_do_not_support() -> None:
    # Timings with 5 % noise that only the shared scale and dispatch explain; the layout and
    # depthwise columns vary at random. All seven terms fitted at once would chase the noise.
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(40):
        s, n = rng.uniform(1e-3, 2e-2), int(rng.integers(10, 90))
        d, layout = rng.uniform(0, 0.3) * s, rng.uniform(0, 2e7)
        rows.append(_row(s, n, (1e-4 + 0.9 * (s + d) + 2e-6 * n) * rng.normal(1.0, 0.05), layout, depthwise=d))
    fitted = fit_composition(rows, 1e-4)
    assert fitted["layout_s_per_byte"] == 0.0 and fitted["depthwise_scale"] == fitted["scale"]
    assert fitted["scale"] == pytest.approx(0.9, rel=0.05)


def test_profiled_composition_reads_each_class_scale_off_the_networks() -> None:

    rng = np.random.default_rng(11)
    truth = {"conv": 0.9, "depthwise": 1.05, "vector": 2.5, "elementwise": 1.3}
    rows, profiles = [], []
    for i in range(30):
        iso = {"conv": rng.uniform(1e-3, 2e-2), "depthwise": rng.uniform(0, 4e-3), "vector": rng.uniform(1e-5, 3e-4),
               "elementwise": rng.uniform(2e-4, 1e-3)}
        if i < 3:  # pooling in three networks only: too few to read a scale of its own
            iso["pooling"] = 1e-3
        inside = {c: t * truth.get(c, 1.7) * rng.normal(1.0, 0.03) for c, t in iso.items()}
        n = int(rng.integers(10, 120))
        measured = 1e-4 + sum(inside.values()) + 4e-6 * n
        profiles.append({c: (iso[c], inside[c]) for c in iso})
        rows.append(_row(sum(iso.values()), n, measured))
    fitted = fit_profiled_composition(rows, profiles, 1e-4)
    for cls, scale in truth.items():
        assert fitted[f"{cls}_scale"] == pytest.approx(scale, rel=0.03)
    assert "pooling_scale" not in fitted  # pooling composes with the shared scale
    assert fitted["gemm_scale"] == fitted["scale"] and fitted["weight_stream"] == fitted["vector_stream"] == 0.0
    assert fitted["per_kernel_s"] == pytest.approx(4e-6, rel=0.25)
    from edgeopt.targets.cost.composition import kernel_in_model_s
    from edgeopt.targets.cost.kernels import Kernel

    gemv = Kernel(name="fc", kind="gemm", precision="fp32", weight_bytes=4_000_000, attrs={"m": 1.0})
    assert kernel_in_model_s(gemv, 1e-4, fitted, 16e9) == pytest.approx(fitted["vector_scale"] * 1e-4 +
                                                                       fitted["per_kernel_s"])
    # A 1x1 conv composes as "pointwise"; without a scale of its own it takes the convs'.
    pointwise = Kernel(name="pw", kind="conv", precision="fp32", attrs={"k": 1.0, "hw": 3136.0, "cout": 96.0})
    composition = {"run_overhead_s": 0.0, "scale": 1.0, "per_kernel_s": 0.0, "conv_scale": 0.9}
    assert kernel_in_model_s(pointwise, 1e-4, composition, 16e9) == pytest.approx(0.9e-4)
    assert kernel_in_model_s(pointwise, 1e-4, {**composition, "pointwise_scale": 1.1}, 16e9) == pytest.approx(1.1e-4)


def test_weight_stream_counts_only_what_the_kernel_time_does_not_hide() -> None:
    from edgeopt.targets.cost.composition import kernel_in_model_s, weight_stream_s
    from edgeopt.targets.cost.kernels import Kernel

    gemv = Kernel(name="fc", kind="gemm", precision="fp32", weight_bytes=8_000_000)  # 8 MB at 16 GB/s: 0.5 ms
    assert weight_stream_s(gemv, 1e-4, 16e9) == pytest.approx(4e-4)
    assert weight_stream_s(gemv, 1e-3, 16e9) == 0.0  # a compute-bound kernel hides its weight reads
    relu = Kernel(name="act", kind="elementwise", precision="fp32", weight_bytes=8_000_000)
    assert weight_stream_s(relu, 1e-4, 16e9) == 0.0
    composition = {"run_overhead_s": 0.0, "scale": 1.0, "per_kernel_s": 0.0, "depthwise_scale": 2.0,
                   "weight_stream": 1.5, "gemm_scale": 1.2}
    assert kernel_in_model_s(gemv, 1e-4, composition, 16e9) == pytest.approx(1.2 * 1e-4 + 1.5 * 4e-4)
    conv = Kernel(name="c", kind="conv", precision="fp32")
    assert kernel_in_model_s(conv, 1e-4, composition, 16e9) == pytest.approx(1e-4)  # the shared scale


def test_bidirectional_recurrent_kernels_are_predicted_as_two_directions() -> None:
    target = get_target("host-cpu")
    attrs = {"m": 100.0, "k": 512.0, "n": 256.0, "gates": 4.0, "out_elems": 51200.0}
    bi = KernelSample("recurrent", "fp32", 4e8, 6e5, 4e6, {**attrs, "directions": 2.0}, seconds=4e-3)
    line = lines_for([bi], target)[0]
    one, one_line, directions = one_direction(bi, line)
    assert directions == 2.0 and one.attrs["directions"] == 1.0 and one.attrs["out_elems"] == 25600.0
    assert (one.flops, one.weight_bytes, one.seconds) == (2e8, 2e6, 2e-3)
    assert one_line.compute_s == pytest.approx(line.compute_s / 2) and bi.attrs["directions"] == 2.0  # not mutated
    forward = KernelSample("recurrent", "fp32", 2e8, 3e5, 2e6, {**attrs, "directions": 1.0})
    assert one_direction(forward, line)[2] == 1.0
    # The per-kernel overhead is paid per direction too: exactly twice the one-direction time.
    predictor = Predictor("factors", {"recurrent/fp32": [0.3, 0.5, 2e-5]}, "cpu")
    assert predictor.predict([bi], [line])[0] == pytest.approx(2 * predictor.predict([one], [one_line])[0])



def _recurrent_samples(per_unit: np.ndarray, n: int = 20) -> list[KernelSample]:
    """LSTM / GRU kernels whose time is exactly ``recurrent_terms @ per_unit`` per direction."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        gates, directions = (4.0, 3.0)[i % 2], (1.0, 2.0)[(i // 2) % 2]
        steps, k, n_ = float(rng.choice([10, 50, 200])), float(rng.choice([40, 128, 512])), float(rng.choice([64, 256]))
        attrs = {"m": steps, "steps": steps, "k": k, "n": n_, "gates": gates, "directions": directions}
        flops = 2 * steps * directions * gates * n_ * (k + n_)
        sample = KernelSample("recurrent", "fp32", flops, 4 * steps * k, 4 * directions * gates * n_ * (k + n_), attrs)
        sample.seconds = float(recurrent_terms(sample) @ per_unit) * directions
        out.append(sample)
    return out


def test_recurrent_kernels_split_into_projection_and_per_step_work() -> None:
    target = get_target("host-cpu")
    # 100 (LSTM) and 40 (GRU) GFLOP/s for the input projection, 25 and 15 for the steps, 2 us a step.
    truth = np.array([1e-11, 2.5e-11, 4e-11, 6.7e-11, 2e-6, 5e-6])
    samples = _recurrent_samples(truth)
    factors = fit_factors(samples, lines_for(samples, target), "cpu")
    assert np.allclose(factors["recurrent/fp32/terms"], truth, rtol=1e-4)
    # A 100-step LSTM reading 512 inputs and one reading 40, same FLOPs per step: the roofline
    # alone gives them one efficiency; the split predicts both exactly.
    predictor = fit_predictor(samples, target, "cpu", "factors", factors)
    lstm = {"m": 100.0, "steps": 100.0, "n": 256.0, "gates": 4.0, "directions": 2.0}
    wide, narrow = (KernelSample("recurrent", "fp32", 2 * 100 * 2 * 4 * 256 * (k + 256), 0.0, 0.0, {**lstm, "k": k})
                    for k in (512.0, 40.0))
    predicted = predictor.predict([wide, narrow], lines_for([wide, narrow], target))
    expected = [2 * float(recurrent_terms(s) @ truth) for s in (wide, narrow)]
    assert predicted == pytest.approx(expected, rel=1e-3)
    # Too few samples to fit six terms: the recurrent class keeps its roofline factors.
    few = fit_factors(samples[:6], lines_for(samples[:6], target), "cpu")
    assert "recurrent/fp32/terms" not in few and "recurrent/fp32" in few

def test_composition_fit_takes_a_bounded_dispatch_credit() -> None:
    # Networks of many tiny kernels run faster than their lone-kernel times add up to.
    rows = [_row(s, n, 5e-5 + 1.0 * s - 3e-6 * n) for s, n in
            ((1e-3, 60), (4e-3, 80), (2e-2, 20), (5e-2, 40), (8e-3, 120))]
    fitted = fit_composition(rows, 5e-5)
    assert fitted["scale"] == pytest.approx(1.0, rel=1e-3)
    assert fitted["per_kernel_s"] == pytest.approx(-3e-6, rel=1e-2)
    rows = [_row(s, n, 5e-5 + s - 50e-6 * n) for s, n in ((1e-2, 60), (4e-2, 80), (2e-2, 20))]
    assert fit_composition(rows, 5e-5)["per_kernel_s"] >= -5e-6  # never an unbounded credit


def _conv_sample(cin: int, cout: int, k: int, hw: int, silu: bool) -> KernelSample:
    out = cout * hw * hw
    attrs = {"out_elems": float(out), "k": float(k * k), "stride": 1.0, "cin": float(cin), "cout": float(cout),
             "hw": float(hw * hw), "group": 1.0, "transcendental": float(out if silu else 0)}
    return KernelSample("conv", "fp32", 2.0 * cin * cout * k * k * hw * hw, 4.0 * (cin + cout) * hw * hw,
                        4.0 * cin * cout * k * k, attrs)


def test_features_weigh_an_epilogue_against_the_kernels_own_work() -> None:
    """Same SiLU element count, a narrow 1x1 conv and a wide 3x3 one: only their share of the work tells them apart.

    The calibration's SiLU convs on large maps were narrow 1x1s (memory-bound, 15-19 GFLOP/s on
    OpenVINO); with the transcendental count alone GradientBoosting priced YOLOv8n's 64-channel
    3x3 SiLU convs on 80x80 maps like them, at 1.33-1.43x their measured time.
    """
    from edgeopt.targets.cost.features import FEATURE_NAMES, feature_vector

    narrow, wide, relu = _conv_sample(24, 64, 1, 80, True), _conv_sample(64, 64, 3, 80, True), \
        _conv_sample(64, 64, 3, 80, False)
    a, b, c = (feature_vector(s, 1e-3, 1e-3) for s in (narrow, wide, relu))
    assert len(a) == len(FEATURE_NAMES)
    count, share = FEATURE_NAMES.index("transcendental"), FEATURE_NAMES.index("transcendental_share")
    assert a[count] == b[count] > c[count] == 0.0  # the count alone is the same
    assert a[share] > b[share] > c[share] == 0.0
