"""Q/DQ placement per rule set on a small Conv/Relu/Add/MatMul graph, and the result in ONNX Runtime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir.reference import ReferenceExecutor, compare_outputs
from edgeopt.passes.quant.calibrators import activation_params
from edgeopt.passes.quant.placement import RULE_SETS, candidate_layers, plan_qdq
from edgeopt.passes.quant.qdq import apply_plan
from edgeopt.passes.quant.statistics import collect_statistics


def ort_fused_ops(model: ir.Model, folder: Path) -> Counter[str]:
    """The op histogram of ``model`` after ONNX Runtime's graph optimizations (QDQ groups become QLinear ops)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(folder / "optimized.onnx")).graph.node)


def residual_model() -> ir.Model:
    """x -> Conv1 -> Relu (r1) -> Conv2 (c2); Add(c2, r1) -> Flatten -> MatMul -> y."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal((512, 10)).astype(np.float32) * 0.05, "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Flatten", ["a"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


EXPECTED = {
    # ORT: inputs and outputs of every layer (Add included); Flatten's output shares the Add's scale.
    "onnxruntime": {"x": "x", "r1": "r1", "c2": "c2", "a": "a", "f": "a"},
    # TensorRT: only inputs of Conv/MatMul; the residual input of the Add (r1) is one of them already.
    "tensorrt": {"x": "x", "r1": "r1", "f": "f"},
    # OpenVINO: inputs of Conv/MatMul plus both inputs of an Add fed by a quantized layer.
    "openvino": {"x": "x", "r1": "r1", "c2": "c2", "f": "f"},
}


@pytest.mark.parametrize("rules", sorted(EXPECTED))
def test_placement_quantizes_the_expected_tensors(rules: str) -> None:
    model = residual_model()
    rule_set = RULE_SETS[rules]
    layers = [n.name for n in candidate_layers(model, rule_set)]
    assert set(layers) == ({"conv1", "conv2", "add", "matmul"} if rules == "onnxruntime"
                           else {"conv1", "conv2", "matmul"})
    plan = plan_qdq(model, rule_set, layers)
    assert plan.activations == EXPECTED[rules]
    assert sorted((w.node, w.axis) for w in plan.weights) == [("conv1", 0), ("conv2", 0), ("matmul", 1)]
    assert plan.biases == [("conv1", 2)]


@pytest.mark.parametrize("rules", sorted(EXPECTED))
def test_quantized_model_runs_close_to_float(rules: str, tmp_path: Path) -> None:
    model = residual_model()
    rule_set = RULE_SETS[rules]
    executor = ReferenceExecutor()
    samples = [executor.generate_inputs(model, seed=i) for i in range(8)]
    plan = plan_qdq(model, rule_set, [n.name for n in candidate_layers(model, rule_set)])
    stats = collect_statistics(model, set(plan.activations.values()), samples)
    quantized = model.clone()

    def params(name: str):
        r = stats.range(name, "minmax", rule_set.activation_symmetric)
        return activation_params(r, 8, rule_set.activation_symmetric, rule_set.activation_signed)

    counts = apply_plan(quantized, plan, params)
    assert counts.activations == len(EXPECTED[rules]) and counts.weights == 3 and counts.biases == 1
    ops = Counter(n.op_type for n in quantized.graph)
    assert ops["QuantizeLinear"] == len(EXPECTED[rules])
    # ORT: the Relu before a zero-point-0 uint8 Q is redundant and removed so QLinearConv can fuse.
    assert ops["Relu"] == (0 if rules == "onnxruntime" else 1)
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    reference, result = executor.run(model, samples[0]), executor.run(quantized, samples[0])
    assert compare_outputs(reference, result).cosine > 0.995
    if rules == "onnxruntime":
        fused = ort_fused_ops(quantized, tmp_path)
        assert fused["QLinearConv"] == 2 and fused["QLinearAdd"] == 1, fused


def test_int16_activations_use_the_contrib_domain_before_opset_21() -> None:
    model = residual_model()
    rule_set = RULE_SETS["onnxruntime"]
    executor = ReferenceExecutor()
    samples = [executor.generate_inputs(model, seed=i) for i in range(4)]
    plan = plan_qdq(model, rule_set, ["conv1"])
    stats = collect_statistics(model, set(plan.activations.values()), samples)
    apply_plan(model, plan, lambda name: activation_params(stats.range(name, "minmax"), bits=16))
    q_nodes = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert q_nodes and all(n.domain == "com.microsoft" for n in q_nodes)
    result = executor.run(model, samples[0])
    assert np.isfinite(result["y"]).all()


def silu_concat_model() -> ir.Model:
    """x -> Conv1 (c1) -> SiLU as Sigmoid*Mul (m) -> Conv2 (c2); Concat(m, c2) -> GlobalAveragePool -> MatMul."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32) * 0.3, "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["c1", "s"], ["m"], name="mul"),
        helper.make_node("Conv", ["m", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["m", "c2"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def quantize_minmax_uint8(model: ir.Model, plan) -> tuple[ir.Model, ReferenceExecutor, list]:
    """A copy of ``model`` with ``plan`` applied: uint8 asymmetric activations from min/max over 8 generated inputs."""
    executor = ReferenceExecutor()
    samples = [executor.generate_inputs(model, seed=i) for i in range(8)]
    stats = collect_statistics(model, set(plan.activations.values()), samples)
    quantized = model.clone()
    apply_plan(quantized, plan, lambda name: activation_params(stats.range(name, "minmax"), 8, False, False))
    return quantized, executor, samples


def test_onnxruntime_rules_place_qdq_where_quantize_static_does(tmp_path: Path) -> None:
    """SiLU, Concat and GlobalAveragePool are INT8 layers under the ORT rules, and ORT fuses each into a QLinear op."""
    model = silu_concat_model()
    rules = RULE_SETS["onnxruntime"]
    layers = [n.name for n in candidate_layers(model, rules)]
    assert layers == ["conv1", "sigmoid", "mul", "conv2", "concat", "pool", "matmul"]
    assert [n.name for n in candidate_layers(model, RULE_SETS["tensorrt"])] == ["conv1", "conv2", "matmul"]
    plan = plan_qdq(model, rules, layers)
    # Every layer input and output; Flatten's output shares the pool's scale (ORT drops Q/DQ around it).
    assert plan.activations == {"x": "x", "c1": "c1", "s": "s", "m": "m", "c2": "c2", "cat": "cat", "g": "g",
                                "f": "g"}
    assert sorted(w.node for w in plan.weights) == ["conv1", "conv2", "matmul"]
    quantized, executor, samples = quantize_minmax_uint8(model, plan)
    assert compare_outputs(executor.run(model, samples[0]), executor.run(quantized, samples[0])).cosine > 0.995
    fused = ort_fused_ops(quantized, tmp_path)
    for op in ("QLinearConv", "QLinearSigmoid", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool"):
        assert fused[op] >= 1, (op, fused)
    assert fused["QuantizeLinear"] == 1 and fused["DequantizeLinear"] <= 1, fused  # only at the model's borders


def linear_bias_model() -> ir.Model:
    """x -> MatMul(w) -> Add(bias) -> Mul(0.5) -> MatMul(w2): a transformer's Linear layers as exported."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32) * 0.2, "w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "bias"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
             helper.make_node("Add", ["bias", "h"], ["hb"], name="bias_add"),
             helper.make_node("Mul", ["hb", "half"], ["hs"], name="scale"),
             helper.make_node("MatMul", ["hs", "w2"], ["y"], name="matmul2")]
    graph = helper.make_graph(nodes, "linear_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_onnxruntime_rules_quantize_constant_operands_like_quantize_static(tmp_path: Path) -> None:
    """A bias Add / constant Mul is an INT8 layer whose constant is activation-typed: ORT runs QLinearAdd/QLinearMul."""
    model = linear_bias_model()
    rules = RULE_SETS["onnxruntime"]
    layers = [n.name for n in candidate_layers(model, rules)]
    assert layers == ["matmul", "bias_add", "scale", "matmul2"]
    assert [n.name for n in candidate_layers(model, RULE_SETS["tensorrt"])] == ["matmul", "matmul2"]
    plan = plan_qdq(model, rules, layers)
    assert sorted(plan.constants) == [("bias_add", 0), ("scale", 1)]
    quantized, executor, samples = quantize_minmax_uint8(model, plan)
    dq_types = {n.name: n.inputs[0].const_value.numpy().dtype for n in quantized.graph
                if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None}
    assert dq_types["bias_bias_add_DequantizeLinear"] == dq_types["half_scale_DequantizeLinear"] == np.uint8
    assert compare_outputs(executor.run(model, samples[0]), executor.run(quantized, samples[0])).cosine > 0.995
    fused = ort_fused_ops(quantized, tmp_path)
    # The data stays 8-bit from the input's Q to the last MatMul, which writes the float graph output.
    assert fused == Counter({"QuantizeLinear": 1, "QLinearMatMul": 1, "QLinearAdd": 1, "QLinearMul": 1,
                             "MatMulIntegerToFloat": 1}), fused
