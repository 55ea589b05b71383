"""Kernels profiled inside whole networks (ORT's profiler, OpenVINO's PERF_COUNT) and the calibration networks."""

from __future__ import annotations

import numpy as np
import pytest


def test_a_profile_is_scaled_into_the_unprofiled_run_time() -> None:
    from edgeopt.targets.calibration.runners import KernelProfile

    profile = KernelProfile(np.array([1.2e-3, 0.6e-3]), 0.1e-3, 0.1e-3)  # 2 ms profiled
    slower = profile.within(1e-3)  # the profiler doubled the run: every part halves
    assert slower.kernels == pytest.approx([0.6e-3, 0.3e-3]) and slower.reorder_s == pytest.approx(0.05e-3)
    assert profile.within(3e-3).kernels == pytest.approx(profile.kernels)  # never scaled up: the rest is dispatch


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_kernel_profile_times_every_kernel_inside_the_model(backend: str) -> None:
    import onnx_ir as ir

    from edgeopt.targets.calibration.calibrate import _model_kernels, kernel_owners
    from edgeopt.targets.calibration.networks import networks
    from edgeopt.targets.calibration.runners import make_runner

    runner = make_runner(backend, "cpu", threads=1, budget_s=0.05, clock="cpu")
    # A CNN (ORT's NCHWc convs, OpenVINO's convs with folded BatchNormalization: both renamed)
    # and a transformer block stack.
    for _name, proto, feeds in networks(3, seed=0)[1:3]:
        kernels, _ = _model_kernels(proto, backend)
        profile = runner.kernel_profile(proto, feeds, kernel_owners(kernels), len(kernels))
        whole = runner.time(ir.serde.serialize_model(ir.serde.deserialize_model(proto)), feeds)
        inside = float(profile.kernels.sum())
        heavy = [i for i, k in enumerate(kernels) if k.kind in ("conv", "depthwise", "gemm")]
        assert heavy and all(profile.kernels[i] > 0 for i in heavy)  # ORT's renamed nodes were all found
        # The node times fall inside the profiled runs (no double counting) and cover most of
        # them; the unprofiled run is no bound, as profiling slows small nodes. OpenVINO's
        # PERF_COUNT counts whole microseconds and books thread wake-ups (~25 us) on some nodes:
        # over 24 profiles of a 0.4 ms transformer stack its node times added up to 0.9-1.3x
        # their runs' time, 2.3x once; ORT's profiler spans nest inside the run's.
        parts = inside + profile.reorder_s + profile.unattributed_s
        upper = 3.0 if backend == "openvino" else 1.05
        assert 0.5 * profile.run_s < parts < upper * profile.run_s
        assert 0.5 * whole < parts  # no kernel went missing
        assert profile.unattributed_s < 0.25 * inside
    from edgeopt.targets.calibration.runners import OnnxRuntimeCudaRunner, TensorRTRunner

    # Their node sets are not the CPU provider's (a TensorRT engine is one node): totals only.
    assert runner.profiles_kernels and not (OnnxRuntimeCudaRunner.profiles_kernels or TensorRTRunner.profiles_kernels)


def test_openvino_runner_times_a_dynamic_model_at_the_feed_shapes(tmp_path) -> None:
    """A dynamic batch dim is fixed to the feeds' before compiling, once per set of feed shapes."""
    pytest.importorskip("openvino")
    import onnx

    from edgeopt.targets.calibration.runners import make_runner
    from tests.conftest import make_conv_bn_model

    path = tmp_path / "dynamic.onnx"
    onnx.save(make_conv_bn_model(batch="N"), str(path))
    runner = make_runner("openvino", "cpu", threads=1, budget_s=0.02, clock="cpu")
    rng = np.random.default_rng(0)
    one, three = ({"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in (1, 3))
    compiled = runner._compile(path, one)
    assert [list(port.get_partial_shape().to_shape()) for port in compiled.inputs] == [[1, 3, 8, 8]]
    assert runner._compile(path).inputs[0].get_partial_shape().is_dynamic  # no feeds: as the file says
    run = runner.prepare(path)
    assert [next(iter(run(f).values())).shape for f in (one, three, one)] == [(1, 4, 8, 8), (3, 4, 8, 8),
                                                                           (1, 4, 8, 8)]
    assert runner.time(path, three) > 0

def test_openvino_profile_finds_a_conv_left_with_its_bias_split_name() -> None:
    """An SE gate's expand conv before a HardSigmoid runs as ``<conv>/WithoutBiases``, and is found."""
    pytest.importorskip("openvino")
    from edgeopt.targets.calibration.bench import _Builder
    from edgeopt.targets.calibration.calibrate import _model_kernels, kernel_owners
    from edgeopt.targets.calibration.networks import _squeeze_excite
    from edgeopt.targets.calibration.runners import make_runner

    b = _Builder("fp32", 0)
    y = _squeeze_excite(b, b.input((1, 96, 28, 28)), 96, "HardSigmoid")
    proto, feeds = b.model([y]), b.feeds
    kernels, _ = _model_kernels(proto, "openvino")
    runner = make_runner("openvino", "cpu", threads=1, budget_s=0.05, clock="cpu")
    profile = runner.kernel_profile(proto, feeds, kernel_owners(kernels), len(kernels))
    convs = [i for i, k in enumerate(kernels) if k.kind == "conv"]
    assert [kernels[i].ops for i in convs] == ["Conv+Relu", "Conv"]
    assert all(profile.kernels[i] > 0 for i in convs)
    assert profile.unattributed_s == 0


def test_openvino_profile_finds_a_conv_whose_batchnorm_fold_left_no_name() -> None:
    """An inverted block's project conv (Conv + BatchNormalization, nothing after) runs as ``Multiply_<n>``."""
    pytest.importorskip("openvino")
    from edgeopt.targets.calibration.bench import _Builder
    from edgeopt.targets.calibration.calibrate import _model_kernels, kernel_owners
    from edgeopt.targets.calibration.networks import _conv
    from edgeopt.targets.calibration.runners import make_runner

    b = _Builder("fp32", 0)
    y = _conv(b, b.input((1, 96, 28, 28)), 96, 96, 3, 2, groups=96, act="HardSwish")
    y = _conv(b, y, 96, 32, 1, 1, act=None)
    y = _conv(b, y, 32, 96, 1, 1, act="Clip")
    proto, feeds = b.model([y]), b.feeds
    kernels, _ = _model_kernels(proto, "openvino")
    runner = make_runner("openvino", "cpu", threads=1, budget_s=0.05, clock="cpu")
    profile = runner.kernel_profile(proto, feeds, kernel_owners(kernels), len(kernels))
    assert [k.ops for k in kernels] == ["Conv+BatchNormalization+HardSwish", "Conv+BatchNormalization",
                                        "Conv+BatchNormalization+Clip"]
    assert all(profile.kernels > 0) and profile.unattributed_s == 0


def test_calibration_networks_run_the_blocks_edge_cnns_use() -> None:
    """Strided and 5x5 depthwise convs, SiLU and HardSwish expand convs, widths that leave a vector part-empty."""
    from edgeopt.targets.calibration.networks import networks

    depthwise: set[tuple[int, int]] = set()
    widths: set[int] = set()
    after_expand: set[str] = set()
    for _name, proto, _feeds in networks(45):
        shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
        consumers = {name: n for n in proto.graph.node for name in n.input}
        for node in proto.graph.node:
            if node.op_type != "Conv":
                continue
            attrs = {a.name: (list(a.ints) or a.i) for a in node.attribute}
            widths.add(shapes[node.input[1]][0])
            if "kernel_shape" not in attrs:  # a squeeze-excite gate's conv on the pooled vector
                continue
            if attrs.get("group", 1) > 1:
                depthwise.add((attrs["kernel_shape"][0], attrs["strides"][0]))
            elif attrs["kernel_shape"] == [1, 1] and shapes[node.input[1]][0] > shapes[node.input[1]][1]:
                after = consumers[consumers[node.output[0]].output[0]]  # past the BatchNormalization
                after_expand.add(after.op_type)
    assert {(3, 1), (3, 2), (5, 1), (5, 2)} <= depthwise
    assert {"Clip", "HardSwish", "Mul"} <= after_expand  # Mul: the SiLU, x * sigmoid(x)
    assert any(w % 16 for w in widths if w >= 40)


def test_calibration_networks_draw_each_from_its_own_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to the CNN generator leaves the transformer stacks as they were (one stream each)."""
    import edgeopt.targets.calibration.networks as nets

    def stacks() -> list[bytes]:
        return [proto.SerializeToString() for name, proto, _ in nets.networks(9) if name.startswith("mlp")]

    before = stacks()
    original = nets.cnn
    monkeypatch.setattr(nets, "cnn", lambda rng: (rng.random(), original(rng))[1])  # one draw more
    assert stacks() == before and len(before) == 3


def test_calibration_networks_hold_csp_blocks() -> None:
    """C2f blocks as YOLOv8 builds them: SiLU 3x3 convs, conv outputs halved (Split or Slices) and Concatenated."""
    from edgeopt.targets.calibration.networks import networks

    halves: set[str] = set()
    concat_of_convs = silu_3x3 = 0
    for _name, proto, _feeds in networks(50):
        producer = {out: n for n in proto.graph.node for out in n.output}
        users: dict[str, list] = {}
        for n in proto.graph.node:
            for name in n.input:
                users.setdefault(name, []).append(n)
        for node in proto.graph.node:
            if node.op_type in ("Split", "Slice") and producer[node.input[0]].op_type == "Mul":
                halves.add(node.op_type)  # the halves of a SiLU conv's output
            if node.op_type == "Concat" and len(node.input) >= 3:
                concat_of_convs += all(producer[i].op_type in ("Mul", "Add", "Split", "Slice") for i in node.input)
            if node.op_type == "Conv":
                kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                normalized = users[node.output[0]][0].output[0]  # past the BatchNormalization
                silu_3x3 += kernel == [3, 3] and group == 1 and "Sigmoid" in {
                    n.op_type for n in users.get(normalized, [])}
    assert halves == {"Split", "Slice"}
    assert concat_of_convs >= 10 and silu_3x3 >= 20


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("op", ["Concat", "Split", "Slice"])
def test_data_benchmarks_time_the_op_between_convs(backend: str, op: str) -> None:
    """A Concat of graph inputs ran in place on OpenVINO (0 us, so no sample); between convs it is timed alone."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    from edgeopt.targets.calibration import bench
    from edgeopt.targets.calibration.calibrate import Calibrator, Settings
    from edgeopt.targets.catalog import get_target

    spec = bench.Spec("data", {"op": op, "c": 64, "hw": 40, "vocab": 1000, "parts": 3})
    proto, _ = bench.build(spec)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count(op) == 1 and "Conv" in ops and not {i.name for i in proto.graph.input} & {
        i for n in proto.graph.node if n.op_type == op for i in n.input}
    calibrator = Calibrator(get_target("host-cpu"), backend, Settings(quick=True, clock="cpu"))
    calibrator._measure(spec, 0)
    assert calibrator.failed == 0 and len(calibrator.samples) == 1
    sample = calibrator.samples[0]
    # The data op's own time: more than nothing, less than moving its bytes at 1 GB/s.
    moved = sample.activation_bytes
    assert sample.kind == "data" and 1e-6 < sample.seconds < moved / 1e9, (sample.seconds, moved)
