"""Calibration of int8 (QDQ) kernels: what ONNX Runtime runs inside a quantized model, timed as such."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeopt.targets import get_target
from edgeopt.targets.calibration import bench
from edgeopt.targets.calibration.calibrate import Calibrator, Settings, _model_kernels, kernel_owners
from edgeopt.targets.calibration.networks import quantized_networks
from edgeopt.targets.calibration.runners import make_runner


@pytest.fixture(scope="module")
def quantized_cnn() -> tuple[str, onnx.ModelProto, dict[str, np.ndarray]]:
    """One int8 composition network, quantized once for the tests below (about 3 s)."""
    (network,) = quantized_networks(1)
    return network


def test_calibration_quantizes_cnns_as_users_do(quantized_cnn) -> None:
    """The int8 composition networks: every conv between a DequantizeLinear and a QuantizeLinear, BN folded."""
    _name, quantized, feeds = quantized_cnn
    producer = {out: n.op_type for n in quantized.graph.node for out in n.output}
    consumers = {name: n.op_type for n in quantized.graph.node for name in n.input}
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    assert len(convs) >= 5 and "BatchNormalization" not in producer.values()
    assert all(producer[c.input[0]] == producer[c.input[1]] == "DequantizeLinear" for c in convs)
    assert all(consumers[c.output[0]] == "QuantizeLinear" for c in convs)
    kernels, _ = _model_kernels(quantized, "onnxruntime")
    assert sum(k.precision == "int8" and k.kind in ("conv", "depthwise") for k in kernels) == len(convs)
    assert set(feeds) == {i.name for i in quantized.graph.input}


def test_profile_of_a_qdq_cnn_finds_every_quantized_conv(quantized_cnn) -> None:
    # ORT fuses DQ -> Conv -> Q into a QLinearConv named after the Conv plus "_token_<n>".
    _name, quantized, feeds = quantized_cnn
    kernels, _ = _model_kernels(quantized, "onnxruntime")
    runner = make_runner("onnxruntime", "cpu", threads=1, budget_s=0.05, clock="cpu")
    profile = runner.kernel_profile(quantized, feeds, kernel_owners(kernels), len(kernels))
    convs = [i for i, k in enumerate(kernels) if k.kind in ("conv", "depthwise") and k.precision == "int8"]
    assert len(convs) >= 3
    assert all(profile.kernels[i] > 0 for i in convs)
    assert profile.unattributed_s < 0.25 * float(profile.kernels.sum())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_maxpool_is_timed_as_a_quantized_cnn_runs_it(backend: str) -> None:
    """After a quantized conv ORT runs an int8 MaxPool in NHWC; alone, its generic uint8 pool ran 50x slower."""
    calibrator = Calibrator(get_target("host-cpu"), backend, Settings(threads=1, clock="cpu"))
    params = {"op": "MaxPool", "c": 256, "hw": 28, "k": 5, "stride": 1}
    for precision in ("fp32", "int8"):
        calibrator._measure(bench.Spec("pooling", params, precision), seed=0)
    fp32, int8 = calibrator.samples
    assert (fp32.kind, int8.kind, int8.precision) == ("pooling", "pooling", "int8")
    # The sample is the pool alone: not the context conv, not the generic NCHW kernel.
    assert 0 < int8.seconds < 3 * fp32.seconds


def test_int8_conv_benchmark_reads_a_post_activation_input() -> None:
    """Convs mostly read a Relu output: zero point 0, as a calibrated quantizer sets it (not mid-range)."""
    from onnx import numpy_helper

    spec = bench.Spec("conv", {"cin": 32, "cout": 32, "k": 3, "stride": 1, "hw": 14, "epilogue": "relu"}, "int8")
    proto, feeds = bench.build(spec, 0)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    first_q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    assert first_q.input[0] == proto.graph.input[0].name
    assert inits[first_q.input[2]].item() == 0
    assert all(float(v.min()) >= 0 for v in feeds.values())
