"""The pass manager and its instruments: deltas, verify + rollback, IR checks, reproducers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.ir import PassFailedError, ReferenceExecutor, load_model
from edgeopt.passes import (
    DeltaInstrument,
    IRCheckInstrument,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    ReproducerInstrument,
    VerifyInstrument,
    get_pass,
)


class NegateWeights(Pass):
    """Deliberately wrong: flips the sign of the Conv weights."""

    name = "negate-weights"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        weight = model.graph.initializers["w"]
        weight.const_value = ir.Tensor(-weight.const_value.numpy(), name="w")
        return PassResult(model, True)


class Explode(Pass):
    """Raises halfway through, after mutating the model."""

    name = "explode"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        model.graph.remove(next(iter(model.graph)), safe=False)
        raise RuntimeError("boom at node conv")


class BreakOrder(Pass):
    """Moves the last node to the front: still runs nowhere, breaks topological order."""

    name = "break-order"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = list(model.graph)
        model.graph.remove(nodes[-1])
        model.graph.insert_before(nodes[0], nodes[-1])
        return PassResult(model, True)


class NeedsNewOpset(Pass):
    name = "needs-new-opset"
    min_opset = 99

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        raise AssertionError("must not run")


def _run(model_path: Path, passes: list[Pass], *instruments) -> tuple:
    model = load_model(model_path)
    result = PassManager(passes, [DeltaInstrument(), *instruments]).run(model)
    return model, result


def test_verify_rolls_back_a_wrong_pass_and_names_it(conv_bn_path: Path) -> None:
    ctx = PassContext()
    passes = [get_pass("cleanup")(ctx=ctx), NegateWeights(ctx=ctx), get_pass("fuse-conv-bn")(ctx=ctx)]
    original = load_model(conv_bn_path)
    _, result = _run(conv_bn_path, passes, VerifyInstrument())
    statuses = {r.name: r.status for r in result.records}
    assert statuses == {"cleanup": "applied", "negate-weights": "rolled back", "fuse-conv-bn": "applied"}
    bad = result.records[1]
    assert "outputs differ from the input model" in bad.reason and bad.verify["ok"] is False
    # The final model is the correct one: the rollback restored the weights.
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(original, bindings={"N": 2})
    np.testing.assert_allclose(executor.run(result.model, feeds)["y"], executor.run(original, feeds)["y"],
                               rtol=1e-4, atol=1e-5)


def test_deltas_count_nodes_and_params(conv_bn_path: Path) -> None:
    ctx = PassContext()
    _, result = _run(conv_bn_path, [get_pass("cleanup")(ctx=ctx), get_pass("fuse-conv-bn")(ctx=ctx)])
    cleanup, fuse = result.records
    assert (cleanup.before.nodes, cleanup.after.nodes) == (6, 3)  # Identity, Dropout, dead Mul gone
    # The folder turns inference Dropout into Identity; both Identities then go.
    assert cleanup.counts["identity_removed"] == 2 and cleanup.counts["nodes_removed"] == 1
    assert (fuse.before.nodes, fuse.after.nodes) == (3, 2) and fuse.counts == {"batchnorms_fused": 1}
    assert fuse.after.params == 4 * 27 + 4 and fuse.seconds > 0
    assert result.pipeline == "cleanup,fuse-conv-bn"


def test_a_raising_pass_writes_a_reproducer(conv_bn_path: Path, tmp_path: Path) -> None:
    ctx = PassContext()
    with pytest.raises(PassFailedError) as error:
        _run(conv_bn_path, [get_pass("cleanup")(ctx=ctx), Explode(ctx=ctx)],
             ReproducerInstrument(tmp_path / "repro"))
    message = str(error.value)
    assert message.startswith("pass 'explode' failed: RuntimeError: boom at node conv")
    folder = Path(error.value.reproducer)
    assert folder == tmp_path / "repro" / "explode-0"
    assert (folder / "pipeline.txt").read_text().strip() == "cleanup,explode"
    assert "boom at node conv" in (folder / "error.txt").read_text()
    # The saved model is the one *before* the failing pass (after cleanup), intact.
    saved = load_model(folder / "model.onnx")
    assert [n.op_type for n in saved.graph] == ["Conv", "BatchNormalization", "Relu"]


def test_ir_check_rolls_back_a_pass_that_breaks_topological_order(conv_bn_path: Path) -> None:
    _, result = _run(conv_bn_path, [BreakOrder()], IRCheckInstrument())
    record = result.records[0]
    assert record.status == "rolled back" and "broke topological order" in record.reason
    assert next(n.name for n in result.model.graph) == "conv"


def test_pass_outside_its_opset_range_is_skipped(conv_bn_path: Path) -> None:
    _, result = _run(conv_bn_path, [NeedsNewOpset()])
    assert result.records[0].status == "skipped" and "needs opset >= 99" in result.records[0].reason
