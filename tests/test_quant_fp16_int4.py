"""FP16 conversion with its keep-FP32 list, and block INT4 weight-only in both ONNX forms, run in ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir.reference import ReferenceExecutor
from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline
from edgeopt.passes.quant.calibrators import sqnr_db


def attention_like() -> ir.Model:
    """x -> MatMul -> Softmax -> MatMul -> LayerNorm -> Gemm(transB) -> y, with Exp on a side branch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32) * 0.1, "w1"),
        numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32) * 0.1, "w2"),
        numpy_helper.from_array(np.ones(128, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(128, np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal((96, 128)).astype(np.float32) * 0.1, "w3"),
        numpy_helper.from_array(rng.standard_normal(96).astype(np.float32) * 0.1, "b3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w2"], ["o"], name="mm2"),
        helper.make_node("LayerNormalization", ["o", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("Gemm", ["n", "w3", "b3"], ["y"], name="gemm", transB=1),
        helper.make_node("Exp", ["h"], ["e"], name="exp"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])]
    graph = helper.make_graph(nodes, "attention_like", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 96]),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 64])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: ir.Model, pipeline: str):
    ctx = PassContext()
    result = PassManager(instantiate(parse_pipeline(pipeline), ctx), [], ctx).run(model)
    return result.model, result.records[-1]


def _relative_error(reference: np.ndarray, result: np.ndarray) -> float:
    return float(np.abs(reference - result).max() / np.abs(reference).max())


def test_fp16_keeps_sensitive_ops_and_io_in_fp32() -> None:
    model = attention_like()
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(model)
    reference = executor.run(model, feeds)
    converted, record = _run(model, "convert-fp16")
    assert record.status == "applied"
    nodes = {n.name: n for n in converted.graph}
    for kept in ("softmax", "ln", "exp"):  # computed in FP32: every float input is FP32
        assert all(v.dtype == ir.DataType.FLOAT for v in nodes[kept].inputs if v is not None), kept
    for name in ("mm1", "mm2", "gemm"):
        assert nodes[name].inputs[1].dtype == ir.DataType.FLOAT16, name
    assert [v.dtype for v in converted.graph.inputs] == [ir.DataType.FLOAT]
    assert [v.dtype for v in converted.graph.outputs] == [ir.DataType.FLOAT, ir.DataType.FLOAT]
    result = executor.run(converted, feeds)
    for name in reference:
        assert _relative_error(reference[name], result[name]) < 1e-2, name


def test_fp16_keep_nodes_option() -> None:
    converted, _ = _run(attention_like(), "convert-fp16{keep_nodes=[mm1],keep_io_types=true}")
    mm1 = next(n for n in converted.graph if n.name == "mm1")
    assert mm1.inputs[1].dtype == ir.DataType.FLOAT


def test_fp16_result_is_topologically_sorted_for_later_passes() -> None:
    # ORT's converter appends the graph-input Casts after their users; a pass after convert-fp16
    # crashed in the pass manager's snapshot clone ("outer-scope value graph_input_cast_0").
    model = attention_like()
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(model)
    reference = executor.run(model, feeds)
    ctx = PassContext()
    result = PassManager(instantiate(parse_pipeline("convert-fp16,cleanup"), ctx), [], ctx).run(model)
    assert result.records[0].status == "applied"
    seen = {v.name for v in result.model.graph.inputs} | set(result.model.graph.initializers)
    for node in result.model.graph:
        assert all(v is None or v.name in seen for v in node.inputs), node.name
        seen.update(v.name for v in node.outputs)
    out = executor.run(result.model, feeds)
    assert _relative_error(reference["y"], out["y"]) < 1e-2


@pytest.mark.parametrize(("fmt", "op"), [("matmulnbits", "MatMulNBits"), ("qdq", "DequantizeLinear")])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_block_weights_run_in_ort_with_bounded_error(fmt: str, op: str, symmetric: bool) -> None:
    model = attention_like()
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(model)
    reference = executor.run(model, feeds)
    quantized, record = _run(model, f"quantize-int4-weights{{format={fmt},block_size=32,symmetric={symmetric},"
                                    "min_elements=0}")
    assert record.counts == {"int4_weights": 3}  # both MatMuls and the Gemm (rewritten as MatMul + Add)
    ops = Counter(n.op_type for n in quantized.graph)
    assert ops[op] == 3 and ops["Gemm"] == 0
    if fmt == "qdq":
        assert quantized.opset_imports[""] == 21
        for node in (n for n in quantized.graph if n.op_type == "DequantizeLinear"):
            assert node.attributes.get_int("block_size") == 32
            int4 = ir.DataType.INT4 if symmetric else ir.DataType.UINT4
            assert node.inputs[0].dtype == int4
    else:
        assert quantized.opset_imports.get("com.microsoft") == 1
    result = executor.run(quantized, feeds)
    # 4-bit weights in 32-element blocks add ~20 dB of noise per layer; y is three layers deep.
    assert sqnr_db(reference["e"], result["e"]) > 17
    assert sqnr_db(reference["y"], result["y"]) > 13
