"""The cost model: roofline numbers, kernel grouping per backend, liveness memory, precision, compile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir import load_model
from edgeopt.ir.errors import TargetError, UserError
from edgeopt.targets import get_target, target_from_dict
from edgeopt.targets.cost import CostModel, group_kernels, peak_activation_bytes
from edgeopt.targets.cost.roofline import DEFAULT_FACTORS, DEFAULT_RUN_OVERHEAD_S

ONE_GFLOPS_TARGET = {
    "name": "toy", "description": "1 GFLOPS, 1 GB/s, 2 W", "vendor": "tests", "kind": "cpu",
    "default_backend": "onnxruntime", "backends": ["onnxruntime", "openvino"], "precisions": ["fp32", "int8"],
    "compute": {"fp32": 0.001, "int8": 0.004}, "memory": {"bandwidth_gbps": 1.0}, "power_w": 2.0,
    "sources": {"compute.fp32": "test", "compute.int8": "test", "memory.bandwidth_gbps": "test", "power_w": "test"},
}


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def _f(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def single_conv() -> ir.Model:
    return _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                  [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], [_w("w", (4, 3, 3, 3)), _w("b", (4,))])


def residual_block() -> ir.Model:
    """x -> Conv-BN-Relu -> Conv-BN -> Add(skip) -> Relu -> HardSwish."""
    bn = [_w(f"{k}{i}", (4,), i) for i in (1, 2) for k in ("s", "o", "m")] + [
        numpy_helper.from_array(np.ones(4, np.float32), f"v{i}") for i in (1, 2)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "s2", "o2", "m2", "v2"], ["b2"], name="bn2"),
        helper.make_node("Add", ["b2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("HardSwish", ["r2"], ["y"], name="hswish"),
    ]
    return _model(nodes, [_f("x", [1, 4, 8, 8])], [_f("y", [1, 4, 8, 8])],
                  [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 4, 3, 3)), *bn])


def test_roofline_numbers_of_one_conv_are_exact() -> None:
    target = target_from_dict(ONE_GFLOPS_TARGET)
    cost = CostModel(target, use_cache=False)
    estimate = cost.estimate(single_conv())
    (item,) = estimate.kernels
    # 2 x 256 outputs x 27 MACs + 256 bias adds; input 3*64*4 B, weights 432 + 16 B, output 4*64*4 B.
    assert item.kernel.flops == 2 * 256 * 27 + 256 == 14080
    assert (item.kernel.activation_bytes, item.kernel.weight_bytes) == (768 + 1024, 448)
    assert item.line.compute_s == pytest.approx(14080 / 1e9)
    assert item.line.memory_s == pytest.approx(2240 / 1e9)
    assert item.line.bound == "compute"
    ec, _em, overhead = DEFAULT_FACTORS["conv"]
    assert item.seconds == pytest.approx(14080 / 1e9 / ec + overhead)
    assert estimate.latency_s == pytest.approx(DEFAULT_RUN_OVERHEAD_S["cpu"] + item.seconds)
    assert estimate.energy_j == pytest.approx(estimate.latency_s * 2.0)
    assert cost.latency(single_conv()) == pytest.approx(estimate.latency_s)
    assert cost.layer_latency(single_conv()) == {"conv": pytest.approx(item.seconds)}


def test_kernel_grouping_per_backend() -> None:
    model = residual_block()
    shapes = {v.name: (1, 4, 8, 8) for n in model.graph for v in n.outputs}
    shapes["x"] = (1, 4, 8, 8)
    ort = group_kernels(model, shapes, "onnxruntime")
    assert [len(k.nodes) for k in ort] == [3, 4, 1]  # FusedConv, Conv+Sum+Relu, HardSwish alone
    assert [k.kind for k in ort] == ["conv", "conv", "elementwise"]
    assert ort[1].ops == "Conv+BatchNormalization+Add+Relu"
    ov = group_kernels(model, shapes, "openvino")
    assert [len(k.nodes) for k in ov] == [3, 5]  # oneDNN post-ops take the HardSwish too
    assert group_kernels(model, shapes, "tensorrt")[1].ops.endswith("HardSwish")


def test_qdq_is_absorbed_into_the_integer_kernel() -> None:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    wq = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq")
    ws = numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(4, np.int8), "wz")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq_out"),
    ]
    model = _model(nodes, [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], [scale, zero, wq, ws, wz])
    cost = CostModel(target_from_dict(ONE_GFLOPS_TARGET), use_cache=False)
    kernels = cost.kernels(model)
    assert [k.ops for k in kernels] == ["QuantizeLinear", "DequantizeLinear+DequantizeLinear+Conv+Relu+QuantizeLinear",
                                        "DequantizeLinear"]
    conv = kernels[1]
    assert conv.precision == "int8" and conv.name == "conv"
    assert conv.weight_bytes == 108 + 16 + 4 + 4 + 1  # int8 weights, per-channel scales/zeros, scalars
    assert conv.activation_bytes == 3 * 64 + 4 * 64  # uint8 in, uint8 out


def test_precision_map_changes_bytes_and_latency() -> None:
    target = target_from_dict(ONE_GFLOPS_TARGET)
    cost = CostModel(target, use_cache=False)
    model = single_conv()
    fp32 = cost.estimate(model)
    int8 = cost.estimate(model, {"conv": "int8"})
    assert int8.kernels[0].kernel.precision == "int8"
    assert int8.weight_bytes == 108 + 16 < fp32.weight_bytes  # bias stays float
    assert int8.latency_s < fp32.latency_s  # 4x the int8 rate on this toy target
    with pytest.raises(UserError, match="precision for node 'conv'"):
        cost.latency(model, {"conv": "int3"})


def test_liveness_peak_is_exact() -> None:
    # x -> a=Relu(x) -> b=Neg(a) -> c=Add(a, b) -> d=Sigmoid(c); 1000 floats each.
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["a"], ["b"], name="neg"),
             helper.make_node("Add", ["a", "b"], ["c"], name="add"),
             helper.make_node("Sigmoid", ["c"], ["d"], name="sig")]
    model = _model(nodes, [_f("x", [1000])], [_f("d", [1000])], [])
    shapes = {name: (1000,) for name in "xabcd"}
    # Step add: a, b and c are live at once (x died after relu, d not yet made).
    assert peak_activation_bytes(model, shapes) == 3 * 4000
    kernels = group_kernels(model, shapes, "openvino")  # one eltwise chain: b and c never materialise
    assert [k.ops for k in kernels] == ["Relu", "Neg+Add+Sigmoid"]
    assert peak_activation_bytes(model, shapes, kernels) == 2 * 4000  # x and a, then a and d


def test_unknown_backend_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no backend 'tflite'"):
        CostModel(get_target("host-cpu"), "tflite", use_cache=False)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp16_costs_what_fp32_does_on_a_cpu_without_fp16_math(backend: str) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = single_conv()
    half = ir.serde.deserialize_model(convert_float_to_float16(ir.serde.serialize_model(model), keep_io_types=True))
    half.graph.sort()
    native_spec = {**ONE_GFLOPS_TARGET, "precisions": ["fp32", "fp16", "int8"],
                   "compute": {**ONE_GFLOPS_TARGET["compute"], "fp16": 0.002},
                   "sources": {**ONE_GFLOPS_TARGET["sources"], "compute.fp16": "test"}}
    plain = CostModel(target_from_dict(ONE_GFLOPS_TARGET), backend, use_cache=False)
    native = CostModel(target_from_dict(native_spec), backend, use_cache=False)

    def conv(cost: CostModel, m: ir.Model, precision: dict[str, str] | None = None):
        return next(k for k in cost.estimate(m, precision).kernels if k.kernel.kind == "conv")

    # The backend casts the graph up and runs its fp32 conv: same precision, bytes and time.
    widened, fp32 = conv(plain, half), conv(plain, model)
    assert plain.fp16_runs_as_fp32 and widened.kernel.precision == "fp32"
    assert widened.kernel.activation_bytes == fp32.kernel.activation_bytes
    assert widened.seconds == pytest.approx(fp32.seconds)
    assert conv(plain, model, {"conv": "fp16"}).seconds == pytest.approx(fp32.seconds)  # asked for, same answer
    # Where the CPU computes in fp16, the fp16 conv keeps its precision and the faster rate.
    assert not native.fp16_runs_as_fp32
    assert conv(native, half).kernel.precision == "fp16"
    assert conv(native, half).seconds < conv(native, model).seconds


def test_host_int8_peak_reflects_the_isa() -> None:
    from edgeopt.targets.cost import effective_peak

    host = get_target("host-cpu")
    # INT8 dot-product instructions (VNNI, Arm's dot product) give 4x the FP32 rate; without them 2x.
    dot_product = bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & set(host.isa))
    assert effective_peak(host, "int8") == pytest.approx((4 if dot_product else 2) * effective_peak(host, "fp32"))
    if not {"avx512_fp16", "asimdhp"} & set(host.isa):  # no native fp16 math: fp16 runs at the fp32 rate
        assert effective_peak(host, "fp16") == pytest.approx(effective_peak(host, "fp32"))


def test_gpu_calibration_is_guarded() -> None:
    import onnxruntime as ort

    from edgeopt.targets.calibration.runners import make_runner

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA runtime is present")
    with pytest.raises(TargetError, match="no CUDAExecutionProvider"):
        make_runner("onnxruntime", "gpu")


def test_compile_puts_predicted_latency_in_manifest(conv_bn_path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeopt.driver import CompileRequest, compile_model

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    result = compile_model(CompileRequest(model=conv_bn_path, out=tmp_path / "out", measure=False))
    predicted = result.manifest["metrics"]["predicted_latency_ms"]
    assert isinstance(predicted, float) and 0 < predicted < 100
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metrics"]["predicted_latency_ms"] == pytest.approx(predicted)


def test_gelu_and_silu_islands_are_one_kernel_each() -> None:
    """MatMul(3-D) -> Add(bias) -> GELU(erf) -> x * Sigmoid(x): ORT runs MatMul, BiasGelu, QuickGelu."""
    c = {name: numpy_helper.from_array(np.array(v, np.float32), name)
         for name, v in (("sqrt2", 1.4142135), ("one", 1.0), ("half", 0.5))}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "bias"], ["h"], name="bias_add"),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="add1"),
        helper.make_node("Mul", ["h", "a"], ["g0"], name="mul"),
        helper.make_node("Mul", ["g0", "half"], ["g"], name="mul_half"),
        helper.make_node("Sigmoid", ["g"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["g", "s"], ["y"], name="silu"),
    ]
    model = _model(nodes, [_f("x", [1, 16, 8])], [_f("y", [1, 16, 8])],
                   [_w("w", (8, 8)), _w("bias", (8,)), *c.values()])
    shapes = {v.name: (1, 16, 8) for n in model.graph for v in n.outputs}
    shapes["x"] = (1, 16, 8)
    ort = group_kernels(model, shapes, "onnxruntime")
    assert [k.ops for k in ort] == ["MatMul", "Add+Div+Erf+Add+Mul+Mul", "Sigmoid+Mul"]
    assert [k.kind for k in ort] == ["gemm", "elementwise", "elementwise"]
    ov = group_kernels(model, shapes, "openvino")  # oneDNN takes the bias into the MatMul
    assert ov[0].ops.startswith("MatMul+Add")


def _openvino_runtime_nodes(path: Path) -> list[tuple[str, list[str]]]:
    """(layerType, originalLayersNames) of every op the OpenVINO CPU plugin runs for ``path``."""
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                       "INFERENCE_PRECISION_HINT": "f32"})
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Parameter", "Result", "Input", "Output", "Const", "Reshape", "Reorder"):
            continue
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        out.append((kind, [n for n in names if n]))
    return out


@pytest.mark.parametrize("name", ["mobilenet_v3", "efficientnet_b0", "vit_tiny"])
def test_openvino_kernels_match_the_cpu_plugins_fusion(name: str, tmp_path: Path) -> None:
    """Our openvino kernels are the ops OpenVINO's CPU plugin runs (its runtime model is the ground truth).

    SE blocks (Reduce, Convolution, Convolution+Sigmoid, HardSigmoid as Math, the scale Mul as
    Eltwise), Swish taken by the conv, GELU by the FullyConnected, attention as one MHA Subgraph.
    """
    from tools.zoo import build

    path = build(name, tmp_path, size="small")
    model = load_model(path)
    kernels = CostModel(get_target("host-cpu"), "openvino", use_cache=False).kernels(model)
    owner = {}
    for index, kernel in enumerate(kernels):
        for node in kernel.nodes:
            owner[node.name] = index
            owner.update({v.name: index for v in node.outputs})
    compute = {"conv", "depthwise", "gemm", "elementwise", "pooling", "softmax", "attention", "recurrent"}
    runtime = _openvino_runtime_nodes(path)
    hits: dict[int, list[str]] = {}
    for kind, names in runtime:
        ours = sorted({owner[n] for n in names if n in owner and kernels[owner[n]].kind in compute})
        assert len(ours) <= 1, f"OpenVINO {kind} runs {[kernels[i].ops for i in ours]} as one kernel"
        for index in ours:
            hits.setdefault(index, []).append(kind)
    for index, kernel in enumerate(kernels):
        if kernel.kind in compute:
            assert len(hits.get(index, [])) == 1, f"{kernel.ops}: OpenVINO runs {hits.get(index)}"
    # LayerNormalization becomes a renamed MVN node: compare counts.
    assert sum(k.kind == "normalization" for k in kernels) == sum(kind == "MVN" for kind, _ in runtime)
    if name == "vit_tiny":
        assert any(k.kind == "attention" for k in kernels)


def test_openvino_post_op_rules() -> None:
    """Conv + Swish + residual Add: the Add after an activation is no post-op; an SE scale Mul is none."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="swish1"),
        helper.make_node("Add", ["a1", "x"], ["r"], name="residual"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Conv", ["p", "w2"], ["c2"], name="gate_conv"),
        helper.make_node("Sigmoid", ["c2"], ["g"], name="gate_sig"),
        helper.make_node("Mul", ["r", "g"], ["se"], name="se_scale"),
        helper.make_node("Conv", ["se", "w3"], ["c3"], name="conv3"),
        helper.make_node("HardSigmoid", ["c3"], ["h"], name="hsig"),
        helper.make_node("Mul", ["h", "c3"], ["y"], name="mul"),
    ]
    model = _model(nodes, [_f("x", [1, 4, 8, 8])], [_f("y", [1, 4, 8, 8])],
                   [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 4, 1, 1)), _w("w3", (4, 4, 1, 1))])
    cost = CostModel(target_from_dict(ONE_GFLOPS_TARGET), "openvino", use_cache=False)
    ov = [k.ops for k in cost.kernels(model)]
    assert ov == ["Conv+Sigmoid+Mul", "Add", "GlobalAveragePool", "Conv+Sigmoid", "Mul", "Conv", "HardSigmoid", "Mul"]
    ort = [k.ops for k in CostModel(target_from_dict(ONE_GFLOPS_TARGET), "onnxruntime", use_cache=False).kernels(model)]
    assert ort[:2] == ["Conv", "Sigmoid+Mul"]  # ORT: no Swish post-op, QuickGelu-style island


@pytest.mark.parametrize(("op", "bidirectional", "gates", "directions"),
                         [("LSTM", True, 4, 2), ("GRU", False, 3, 1)])
def test_recurrent_kernels_carry_gates_and_directions(op: str, bidirectional: bool, gates: int,
                                                      directions: int) -> None:
    # A bidirectional layer runs its directions one after the other: without these figures the
    # predictor cannot tell it from a forward layer of the same shapes (the zoo LSTM read +18 %).
    from edgeopt.targets.calibration import bench

    proto, _ = bench.build(bench.Spec("recurrent", {"op": op, "seq": 20, "input": 40, "hidden": 64,
                                                    "bidirectional": bidirectional}))
    kernels = CostModel(get_target("host-cpu"), "onnxruntime", use_cache=False).kernels(
        ir.serde.deserialize_model(proto))
    (recurrent,) = [k for k in kernels if k.kind == "recurrent"]
    assert (recurrent.attrs["gates"], recurrent.attrs["directions"]) == (gates, directions)
    assert (recurrent.attrs["m"], recurrent.attrs["k"], recurrent.attrs["n"]) == (20, 40, 64)
