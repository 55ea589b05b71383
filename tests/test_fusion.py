"""Fusion rules on tiny graphs (before/after in ONNX Runtime, expected structure), opset bounds,
the rule registry as a plugin sees it, and the zoo through the default pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from onnxscript.rewriter import RewriteRuleClassBase

from edgeopt.ir import PipelineError, load_model
from edgeopt.passes import PassContext, instantiate, parse_pipeline
from edgeopt.passes.fusion.registry import fusion_rule, registered_fusions, unregister_fusion
from tests.conftest import assert_zoo_outputs_match
from tests.test_cleanup import F, assert_same, make, ops, optimize

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def conv_model(tail: list[onnx.NodeProto], inits: list[tuple[str, np.ndarray]], out: str = "y",
               out_shape: tuple = ("N", 4, 6, 6)) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), *tail]
    return make(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                [helper.make_tensor_value_info(out, F, list(out_shape))],
                [("w", rand(4, 3, 3, 3)), ("b", rand(4)), *inits])


def test_conv_bn_through_fuse_and_fuse_conv_bn(tmp_path: Path) -> None:
    from tests.conftest import make_conv_bn_model

    for pipeline, key in (("fuse", "conv-bn"), ("fuse-conv-bn", "batchnorms_fused")):
        original, optimized, counts = optimize(make_conv_bn_model(), pipeline, tmp_path)
        assert "BatchNormalization" not in ops(optimized) and counts[key] == 1
        assert_same(original, optimized)


def test_conv_mul_add_per_channel_fold_into_the_conv(tmp_path: Path) -> None:
    tail = [helper.make_node("Mul", ["scale", "c"], ["m"]), helper.make_node("Add", ["m", "shift"], ["y"])]
    proto = conv_model(tail, [("scale", rand(1, 4, 1, 1)), ("shift", rand(4, 1, 1))])
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == ["Conv"] and counts == {"conv-mul": 1, "conv-add": 1}
    assert_same(original, optimized)


def test_conv_mul_over_a_spatial_axis_is_not_folded(tmp_path: Path) -> None:
    proto = conv_model([helper.make_node("Mul", ["c", "scale"], ["y"])], [("scale", rand(1, 1, 1, 6))])
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == ["Conv", "Mul"] and counts == {}
    assert_same(original, optimized)


def test_matmul_add_becomes_gemm_only_in_2d(tmp_path: Path) -> None:
    def model(rank: int) -> onnx.ModelProto:
        dims = ["N", 5] if rank == 2 else ["N", 2, 5]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
        return make(nodes, [helper.make_tensor_value_info("x", F, dims)],
                    [helper.make_tensor_value_info("y", F, [*dims[:-1], 3])], [("w", rand(5, 3)), ("b", rand(3))])

    original, optimized, counts = optimize(model(2), "fuse", tmp_path)
    assert ops(optimized) == ["Gemm"] and counts == {"matmul-add-gemm": 1}
    assert_same(original, optimized)
    original, optimized, counts = optimize(model(3), "fuse", tmp_path)
    assert ops(optimized) == ["MatMul", "Add"] and counts == {}


def test_batchnorm_after_matmul_folds_into_gemm(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("BatchNormalization", ["m", "g", "beta", "mu", "var"], ["y"], epsilon=1e-3)]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 5])],
                 [helper.make_tensor_value_info("y", F, ["N", 3])],
                 [("w", rand(5, 3)), ("g", rand(3)), ("beta", rand(3)), ("mu", rand(3)),
                  ("var", RNG.uniform(0.5, 2, 3).astype(np.float32))])
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == ["Gemm"] and counts == {"matmul-bn": 1}
    assert_same(original, optimized)


@pytest.mark.parametrize(("pool", "fill", "rule"), [("Conv", 0.0, "pad-conv"),
                                                    ("AveragePool", 0.0, "pad-average-pool"),
                                                    ("MaxPool", -np.inf, "pad-max-pool")])
def test_pad_folds_into_conv_and_pools(tmp_path: Path, pool: str, fill: float, rule: str) -> None:
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    second = helper.make_node(pool, ["p", "w"] if pool == "Conv" else ["p"], ["y"],
                              **({} if pool == "Conv" else {"kernel_shape": [3, 3]}))
    nodes = [helper.make_node("Pad", ["x", "pads", "fill"], ["p"]), second]
    inits = [("pads", pads), ("fill", np.array(fill, np.float32))]
    if pool == "Conv":
        inits.append(("w", rand(2, 3, 3, 3)))
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                 [helper.make_tensor_value_info("y", F, ["N", 2 if pool == "Conv" else 3, 7, 7])], inits)
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == [pool] and counts == {rule: 1}
    assert_same(original, optimized)


def test_max_pool_after_zero_pad_is_left_alone(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("MaxPool", ["p"], ["y"],
                                                                              kernel_shape=[2, 2])]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                 [helper.make_tensor_value_info("y", F, ["N", 3, 7, 7])],
                 [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    _, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == ["Pad", "MaxPool"] and counts == {}


def test_transpose_and_reshape_chains_collapse(tmp_path: Path) -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t2", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    proto = make(nodes, [helper.make_tensor_value_info("x", F, [2, 3, 4])],
                 [helper.make_tensor_value_info("y", F, [6, 4])],
                 [("s1", np.array([24], np.int64)), ("s2", np.array([6, 4], np.int64))])
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    assert ops(optimized) == ["Transpose", "Reshape"]
    assert counts == {"transpose-transpose": 1, "reshape-reshape": 1}
    assert_same(original, optimized, batches=(1,))


def _activation_model(kind: str, opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", 8])
    y = helper.make_tensor_value_info("y", F, ["N", 8])
    scalars = {"three": 3.0, "zero": 0.0, "six": 6.0, "half": 0.5, "one": 1.0, "sqrt2": float(np.sqrt(2))}
    inits = [(k, np.array(v, np.float32)) for k, v in scalars.items()]
    if kind == "hardswish":
        nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    elif kind == "gelu":
        nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                 helper.make_node("Mul", ["m", "half"], ["y"])]
    elif kind == "silu":
        nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    else:  # layer norm over the last axis, spelled out as the opset-18 exporters do
        inits += [("axes", np.array([-1], np.int64)), ("eps", np.array(1e-5, np.float32)),
                  ("two", np.array(2.0, np.float32)), ("gamma", rand(8)), ("beta", rand(8))]
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1),
                 helper.make_node("Sub", ["x", "mu"], ["d"]), helper.make_node("Pow", ["d", "two"], ["d2"]),
                 helper.make_node("ReduceMean", ["d2", "axes"], ["v"], keepdims=1),
                 helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                 helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["s"]),
                 helper.make_node("Add", ["s", "beta"], ["y"])]
    return make(nodes, [x], [y], inits, opset=opset)


@pytest.mark.parametrize(("kind", "opset", "fused", "rule"), [
    ("hardswish", 17, ["HardSwish"], "hardswish"),
    ("gelu", 20, ["Gelu"], "gelu"),
    ("gelu", 17, None, None),  # no Gelu op before opset 20: the rule is filtered out
    ("silu", 24, ["Swish"], "silu"),
    ("silu", 17, None, None),
    ("layernorm", 18, ["LayerNormalization"], "layer-norm"),
])
def test_activation_and_normalization_fusions_follow_the_opset(tmp_path: Path, kind: str, opset: int,
                                                               fused: list[str] | None, rule: str | None) -> None:
    proto = _activation_model(kind, opset)
    original, optimized, counts = optimize(proto, "fuse", tmp_path)
    if fused is None:
        assert counts == {} and ops(optimized) == [n.op_type for n in proto.graph.node]
        return
    assert ops(optimized) == fused and rule in counts
    try:
        assert_same(original, optimized)
    except Exception as error:  # ORT without a kernel for the newest op: check with onnx's reference
        if "NOT_IMPLEMENTED" not in str(error) and "not implemented" not in str(error).lower():
            raise
        import onnx_ir as ir
        from onnx.reference import ReferenceEvaluator

        feeds = {"x": rand(3, 8)}
        ref = ReferenceEvaluator(ir.serde.serialize_model(original)).run(None, feeds)[0]
        got = ReferenceEvaluator(ir.serde.serialize_model(optimized)).run(None, feeds)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_fusion_registry_is_open_to_plugins(tmp_path: Path) -> None:
    """A plugin adds a fusion by writing a pattern; fuse picks it up within its opset range."""

    @fusion_rule("test-double-neg", priority=5, min_opset=13, max_opset=18)
    class DoubleNeg(RewriteRuleClassBase):
        """Neg(Neg(x)) -> x."""

        def pattern(self, op, x):
            return op.Neg(op.Neg(x))

        def rewrite(self, op, x):
            return op.Identity(x)

    try:
        names = [rule.name for rule in registered_fusions(17)]
        assert names[0] == "test-double-neg"  # lowest priority first
        assert "test-double-neg" not in [rule.name for rule in registered_fusions(19)]
        nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                 helper.make_node("Relu", ["b"], ["y"])]
        proto = make(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])],
                     [helper.make_tensor_value_info("y", F, ["N", 4])])
        original, optimized, counts = optimize(proto, "fuse{only=[test-double-neg]},cleanup", tmp_path)
        assert counts["test-double-neg"] == 1 and ops(optimized) == ["Relu"]
        assert_same(original, optimized)
        _, untouched, counts = optimize(proto, "fuse{disable=[test-double-neg]}", tmp_path)
        assert ops(untouched) == ["Neg", "Neg", "Relu"]
    finally:
        unregister_fusion("test-double-neg")


def test_unknown_rule_names_are_one_line_errors(tmp_path: Path) -> None:
    from tests.conftest import make_conv_bn_model

    path = tmp_path / "m.onnx"
    onnx.save(make_conv_bn_model(), str(path))
    passes = instantiate(parse_pipeline("fuse{only=[conv-bnn]}"), PassContext())
    with pytest.raises(PipelineError, match=r"unknown fusion rule.*conv-bnn"):
        passes[0].run(load_model(path), PassContext())


# --- the zoo through the default pipeline -------------------------------------------------------

zoo = pytest.importorskip("tools.zoo")
ZOO_NAMES = sorted(zoo.ZOO)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-fusion")


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_small_through_default_pipeline(name: str, zoo_dir: Path, tmp_path: Path) -> None:
    import onnxslim

    from edgeopt.driver import DEFAULT_PIPELINE

    path = zoo.build(name, zoo_dir, size="small")
    original, optimized, _ = optimize(onnx.load(str(path)), DEFAULT_PIPELINE, tmp_path)
    assert_zoo_outputs_match(name, original, optimized)
    assert "BatchNormalization" not in ops(optimized)
    # Dynamic batch stays dynamic: the inputs' symbolic dims stay symbolic, and so does every output dim
    # named after one of them (other symbolic output dims may be exporter names for static sizes).
    input_dims = {str(dim) for value in original.graph.inputs for dim in value.shape if not isinstance(dim, int)}
    assert input_dims, "the zoo model has no dynamic input dim"
    for before, after in [*zip(original.graph.inputs, optimized.graph.inputs, strict=True),
                          *zip(original.graph.outputs, optimized.graph.outputs, strict=True)]:
        assert before.shape is not None and after.shape is not None and len(before.shape) == len(after.shape)
        dynamic = [i for i, dim in enumerate(before.shape) if not isinstance(dim, int) and str(dim) in input_dims]
        assert dynamic and all(not isinstance(after.shape[i], int) for i in dynamic), (before.name, after.shape)
    slim = onnxslim.slim(onnx.load(str(path)))
    assert len(optimized.graph) <= len(slim.graph.node)
