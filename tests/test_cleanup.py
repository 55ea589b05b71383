"""Cleanup passes on tiny graphs: each runs before/after in ONNX Runtime with equal outputs
and the expected structural change; dynamic batch stays dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir import ReferenceExecutor, compare_outputs, load_model
from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline

F = TensorProto.FLOAT


def make(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
         inits: list[np.ndarray | tuple[str, np.ndarray]] = (), opset: int = 17) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(a, n) for n, a in inits]
    graph = helper.make_graph(nodes, "g", inputs, outputs, tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def optimize(proto: onnx.ModelProto, pipeline: str, tmp_path: Path) -> tuple[ir.Model, ir.Model, dict[str, int]]:
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    original, model = load_model(path), load_model(path)
    ctx = PassContext()
    result = PassManager(instantiate(parse_pipeline(pipeline), ctx), [], ctx).run(model)
    counts: dict[str, int] = {}
    for record in result.records:
        for key, value in record.counts.items():
            counts[key] = counts.get(key, 0) + value
    return original, result.model, counts


def assert_same(original: ir.Model, optimized: ir.Model, batches: tuple[int, ...] = (1, 3),
                rtol: float = 1e-5) -> None:
    executor = ReferenceExecutor()
    for batch in batches:
        feeds = executor.generate_inputs(original, {"N": batch, "S": batch + 2}, seed=batch)
        comparison = compare_outputs(executor.run(original, feeds), executor.run(optimized, feeds),
                                     atol=1e-6, rtol=rtol)
        assert comparison.ok, comparison.worst()


def ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def test_fold_constants_folds_small_results_and_refuses_growth(tmp_path: Path) -> None:
    small = np.arange(4, dtype=np.float32)
    nodes = [
        helper.make_node("Add", ["a", "a"], ["a2"]),  # 16 bytes: folds
        helper.make_node("Tile", ["a2", "reps"], ["tiled"]),  # 16 bytes -> 64 KiB: stays computed
        helper.make_node("Mul", ["x", "tiled"], ["y"]),
    ]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 4 * 4096])],
                 [helper.make_tensor_value_info("y", F, ["N", 4 * 4096])],
                 [("a", small), ("reps", np.array([4096], np.int64))])
    original, optimized, counts = optimize(proto, "fold-constants", tmp_path)
    assert ops(optimized) == ["Tile", "Mul"] and counts["nodes_folded"] == 1
    assert_same(original, optimized)
    # With the growth cap lifted the Tile folds too (its 64 KiB result replaces a 16-byte input).
    _, unbounded, _ = optimize(proto, "fold-constants{growth_ratio=10000}", tmp_path)
    assert ops(unbounded) == ["Mul"]


def test_fold_constants_judges_sibling_folds_together(tmp_path: Path) -> None:
    # One weight sliced in two and concatenated back (how exporters reorder LSTM gates): no single
    # Slice frees the weight, but folding all of them leaves the file the same size.
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    nodes = [
        helper.make_node("Slice", ["w", "zero", "four"], ["top"]),
        helper.make_node("Slice", ["w", "four", "eight"], ["bottom"]),
        helper.make_node("Concat", ["bottom", "top"], ["swapped"], axis=0),
        helper.make_node("MatMul", ["x", "swapped"], ["y"]),
    ]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 8])],
                 [helper.make_tensor_value_info("y", F, ["N", 8])],
                 [("w", np.tile(weight, (8, 1))[:8]), ("zero", np.array([0], np.int64)),
                  ("four", np.array([4], np.int64)), ("eight", np.array([8], np.int64))])
    original, optimized, _ = optimize(proto, "fold-constants{always_fold_bytes=0},remove-dead-code", tmp_path)
    assert ops(optimized) == ["MatMul"]
    assert_same(original, optimized)


def _shape_chain_model() -> onnx.ModelProto:
    """x[N,S,8] -> Reshape to [N,S,2,4] via Shape/Gather/Unsqueeze/Concat, then flatten via Shape/Slice."""
    i64 = TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Unsqueeze", ["s", "axes0"], ["s1"]),
        helper.make_node("Concat", ["n1", "s1", "two_four"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["a"]),
        helper.make_node("Shape", ["a"], ["ashape"]),
        helper.make_node("Slice", ["ashape", "zero1", "one1"], ["head"]),
        helper.make_node("Concat", ["head", "minus1"], ["flat"], axis=0),
        helper.make_node("Reshape", ["a", "flat"], ["y"]),
    ]
    inits = [("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64)),
             ("axes0", np.array([0], np.int64)), ("two_four", np.array([2, 4], np.int64)),
             ("zero1", np.array([0], np.int64)), ("one1", np.array([1], np.int64)),
             ("minus1", np.array([-1], np.int64))]
    del i64
    return make(nodes, [helper.make_tensor_value_info("x", F, ["N", "S", 8])],
                [helper.make_tensor_value_info("y", F, ["N", None])], inits)


def test_simplify_shapes_keeps_symbolic_dims_as_zero_or_minus_one(tmp_path: Path) -> None:
    original, optimized, counts = optimize(_shape_chain_model(), "simplify-shapes,remove-dead-code", tmp_path)
    assert counts["reshape_targets"] == 2
    assert ops(optimized) == ["Reshape", "Relu", "Reshape"]
    targets = [node.inputs[1].const_value.numpy().tolist() for node in optimized.graph if node.op_type == "Reshape"]
    assert targets == [[0, 0, 2, 4], [0, -1]]
    assert_same(original, optimized, batches=(1, 3, 5))
    assert [str(d) for d in optimized.graph.inputs[0].shape][:2] == ["N", "S"]


def _reshape_by_dim_of_x(data_shape: list) -> onnx.ModelProto:
    """Reshape ``data`` (a Transpose of the input ``d``) to [dim 1 of x, -1, 8]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["s", "axes0"], ["s1"]),
        helper.make_node("Concat", ["s1", "minus1", "eight"], ["target"], axis=0),
        helper.make_node("Transpose", ["d"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["t", "target"], ["r"]),
        helper.make_node("ReduceSum", ["x", "axes0"], ["xs"], keepdims=0),
        helper.make_node("Unsqueeze", ["xs", "axes1"], ["xs1"]),
        helper.make_node("Add", ["r", "xs1"], ["y"]),
    ]
    return make(nodes, [helper.make_tensor_value_info("x", F, ["N", "S", 8]),
                        helper.make_tensor_value_info("d", F, data_shape)],
                [helper.make_tensor_value_info("y", F, ["S", None, 8])],
                [("one", np.array(1, np.int64)), ("axes0", np.array([0], np.int64)),
                 ("axes1", np.array([1], np.int64)), ("minus1", np.array([-1], np.int64)),
                 ("eight", np.array([8], np.int64))])


def test_simplify_shapes_follows_dims_through_ops(tmp_path: Path) -> None:
    # dim 1 of x is "S", which the Transpose moves to dim 0 of the data: 0 stands for it.
    original, optimized, counts = optimize(_reshape_by_dim_of_x(["N", "S", 8]), "simplify-shapes", tmp_path)
    assert counts.get("reshape_targets") == 1
    reshape = next(node for node in optimized.graph if node.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, -1, 8]
    assert_same(original, optimized)


def test_simplify_shapes_leaves_reshapes_it_cannot_prove(tmp_path: Path) -> None:
    # The data's dims are unnamed and unrelated to x: S next to a -1 cannot be expressed.
    proto = _reshape_by_dim_of_x([None, None, 8])
    original, optimized, counts = optimize(proto, "simplify-shapes", tmp_path)
    assert "reshape_targets" not in counts and "Shape" in ops(optimized)
    executor = ReferenceExecutor()
    for n, s in ((1, 3), (3, 2)):
        feeds = {"x": np.ones((n, s, 8), np.float32), "d": np.ones((s, n, 8), np.float32)}
        assert compare_outputs(executor.run(original, feeds), executor.run(optimized, feeds)).ok


def test_eliminate_noops_removes_only_true_noops(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Cast", ["b"], ["c"], to=F),
        helper.make_node("Transpose", ["c"], ["d"], perm=[0, 1]),
        helper.make_node("Add", ["d", "zero"], ["e"]),
        helper.make_node("Mul", ["one", "e"], ["f"]),
        helper.make_node("Expand", ["f", "shape_1_4"], ["g"]),
        helper.make_node("Slice", ["g", "starts", "ends"], ["h"]),
        helper.make_node("Add", ["h", "zeros_broadcasting"], ["y"]),  # [1,1,1] zeros: adds a dim -> kept
    ]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])],
                 [helper.make_tensor_value_info("y", F, [1, "N", 4])],
                 [("zero", np.zeros(1, np.float32)), ("one", np.ones((1, 1), np.float32)),
                  ("shape_1_4", np.array([1, 4], np.int64)), ("starts", np.array([0], np.int64)),
                  ("ends", np.array([2**63 - 1], np.int64)),
                  ("zeros_broadcasting", np.zeros((1, 1, 1), np.float32))])
    original, optimized, counts = optimize(proto, "eliminate-noops", tmp_path)
    assert ops(optimized) == ["Add"]
    assert counts["identity_removed"] == 1 and counts["expand_removed"] == 1 and counts["slice_removed"] == 1
    assert_same(original, optimized)


def test_eliminate_noops_keeps_graph_output_names(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])],
                 [helper.make_tensor_value_info("y", F, ["N", 4])])
    original, optimized, _ = optimize(proto, "eliminate-noops", tmp_path)
    assert ops(optimized) == ["Relu"] and optimized.graph.outputs[0].name == "y"
    assert_same(original, optimized)


def test_drop_zero_rnn_states_and_lift_constants(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hidden = 5
    nodes = [
        helper.make_node("Constant", [], ["state_shape_tail"], value=numpy_helper.from_array(
            np.array([hidden], np.int64))),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "one"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Concat", ["dirs", "batch1", "state_shape_tail"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"]),
        helper.make_node("LSTM", ["x", "W", "R", "", "", "h0", "h0"], ["y"], hidden_size=hidden),
    ]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["S", "N", 3])],
                 [helper.make_tensor_value_info("y", F, ["S", 1, "N", hidden])],
                 [("W", rng.standard_normal((1, 4 * hidden, 3)).astype(np.float32)),
                  ("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
                  ("one", np.array(1, np.int64)), ("axes0", np.array([0], np.int64)),
                  ("dirs", np.array([1], np.int64))])
    original, optimized, counts = optimize(proto, "cleanup", tmp_path)
    assert ops(optimized) == ["LSTM"]
    assert counts["initial_states_dropped"] == 2 and counts["constants_lifted"] == 1
    assert_same(original, optimized)


def test_cleanup_reaches_a_fixed_point_within_its_bound(tmp_path: Path) -> None:
    original, optimized, _ = optimize(_shape_chain_model(), "cleanup", tmp_path)
    assert ops(optimized) == ["Reshape", "Relu", "Reshape"]
    assert_same(original, optimized)
    path = tmp_path / "again.onnx"
    ir.save(optimized, path)
    _, again, counts = optimize(onnx.load(str(path)), "cleanup", tmp_path)
    assert counts == {} and ops(again) == ops(optimized)


@pytest.mark.parametrize("bad", ["cleanup{max_iterations=x}", "fold-constants{growth_ratio=abc}"])
def test_bad_options_are_one_line_errors(bad: str) -> None:
    from edgeopt.ir import PipelineError

    with pytest.raises(PipelineError) as error:
        instantiate(parse_pipeline(bad), PassContext())
    assert "\n" not in str(error.value)


def test_castlike_keeps_saturate_zero(tmp_path: Path) -> None:
    # onnxscript's folder turns CastLike into a Cast without attributes; saturate=0 must survive
    # (found by the onnx node test castlike_no_saturate_FLOAT_to_FLOAT8E5M2).
    from onnx.reference import ReferenceEvaluator

    nodes = [helper.make_node("CastLike", ["x", "like"], ["y"], saturate=0)]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, [3]),
                         helper.make_tensor_value_info("like", TensorProto.FLOAT8E5M2, [0])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2, [3])], opset=19)
    _, optimized, _ = optimize(proto, "cleanup", tmp_path)
    feeds = {"x": np.array([1e6, -1e6, 1.5], np.float32), "like": numpy_helper.to_array(
        helper.make_tensor("like", TensorProto.FLOAT8E5M2, [0], []))}
    expected = ReferenceEvaluator(proto).run(None, feeds)[0].astype(np.float32)
    got = ReferenceEvaluator(ir.serde.serialize_model(optimized)).run(None, feeds)[0].astype(np.float32)
    assert np.isinf(expected[:2]).all()  # not saturated to the float8 max
    np.testing.assert_array_equal(got, expected)


def test_shape_analysis_keeps_sequence_types(tmp_path: Path) -> None:
    # An untyped SequenceConstruct output once came back from shape inference typed as a tensor, and ORT
    # refused the model (found by the onnx node test if_opt).
    nodes = [helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
             helper.make_node("SequenceAt", ["s", "zero"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 3])],
                 [helper.make_tensor_value_info("y", F, ["N", 3])], [("zero", np.array(0, np.int64))])
    # simplify-shapes runs the shape analysis and cannot remove the sequence (cleanup's folder would).
    original, optimized, _ = optimize(proto, "simplify-shapes", tmp_path)
    sequence = next(node for node in optimized.graph if node.op_type == "SequenceConstruct").outputs[0]
    assert isinstance(sequence.type, ir.SequenceType)
    assert_same(original, optimized)


def test_fold_constants_survives_a_partial_evaluator_failure(tmp_path: Path) -> None:
    # onnxscript's SplitToSequence evaluator raises on a scalar split that is a graph input (onnx node
    # test split_to_sequence_1); the node must stay computed, not fail the pipeline.
    nodes = [helper.make_node("SplitToSequence", ["x", "split"], ["s"], axis=1),
             helper.make_node("SequenceAt", ["s", "zero"], ["y"])]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 6]),
                         helper.make_tensor_value_info("split", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("y", F, ["N", None])], [("zero", np.array(0, np.int64))])
    _, optimized, _ = optimize(proto, "cleanup", tmp_path)
    assert "SplitToSequence" in ops(optimized)
    import onnxruntime as ort

    session = ort.InferenceSession(ir.serde.serialize_model(optimized).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = session.run(None, {"x": x, "split": np.array(4, np.int64)})
    np.testing.assert_array_equal(y, x[:, :4])
