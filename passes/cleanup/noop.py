"""eliminate-noops: Identity, inference Dropout, and Cast/Reshape/Transpose/Expand/Slice/Add/Mul that change nothing.

Hand-written rather than onnxscript's no-op rules: those match ``x + 0`` and
``x * 1`` by value alone, and a constant of higher rank than ``x`` broadcasts
the result to another shape; here every case checks that the output has the
input's shape.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass
from edgeopt.passes.values import constant_array


def _is_noop(node: ir.Node) -> bool:
    """Whether ``node``'s single data output always equals its first input."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return False
    source = node.inputs[0]
    op = node.op_type
    if op == "Identity":
        return True
    if op == "Dropout":
        # Inference: Dropout is identity unless training_mode is a true constant
        # or its mask output is used.
        if len(node.outputs) > 1 and node.outputs[1].uses():
            return False
        training = constant_array(node.inputs[2]) if len(node.inputs) > 2 else np.array(False)
        return training is not None and not bool(training)
    if op == "Cast":
        to = node.attributes.get_int("to")
        return source.dtype is not None and to is not None and int(source.dtype) == to
    if op == "Transpose":
        perm = node.attributes.get_ints("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Reshape":
        target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        shape = source.shape
        if target is None or shape is None or node.attributes.get_int("allowzero", 0):
            return False
        dims = list(shape)
        wanted = [int(d) for d in target.reshape(-1)]
        if len(wanted) != len(dims):
            return False
        # 0 copies the input dim; equal static dims match; one symbolic dim may
        # match a single -1 when every other dim is equal.
        unresolved = 0
        for want, have in zip(wanted, dims, strict=True):
            if want == 0 or (isinstance(have, int) and want == have):
                continue
            if want == -1:
                unresolved += 1
                continue
            return False
        return unresolved <= 1
    if op == "Expand":
        target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        return target is not None and _broadcast_keeps(source, [int(d) for d in target.reshape(-1)])
    if op == "Slice":
        return _slice_is_full(node)
    if op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
        neutral = 0 if op in ("Add", "Sub") else 1
        other = constant_array(node.inputs[1])
        if other is None and op in ("Add", "Mul"):
            source, other = node.inputs[1], constant_array(node.inputs[0])
            if source is None:
                return False
        if other is None or other.size == 0 or not np.all(other == neutral):
            return False
        return source.dtype is not None and source.dtype.numpy() == other.dtype and \
            _broadcast_keeps(source, list(other.shape))
    return False


def _noop_source(node: ir.Node) -> ir.Value:
    """The input a no-op node passes through (the non-constant operand of Add/Mul)."""
    if node.op_type in ("Add", "Mul") and constant_array(node.inputs[1]) is None:
        return node.inputs[1]  # type: ignore[return-value]
    return node.inputs[0]  # type: ignore[return-value]


def _broadcast_keeps(source: ir.Value, other_shape: list[int]) -> bool:
    """Whether broadcasting ``source`` with a tensor of ``other_shape`` leaves ``source``'s shape as it is."""
    shape = source.shape
    if shape is None or len(other_shape) > len(shape):
        return False
    for want, have in zip(reversed(other_shape), reversed(list(shape)), strict=False):
        if want != 1 and not (isinstance(have, int) and have == want):
            return False
    return True


def _slice_is_full(node: ir.Node) -> bool:
    """A Slice whose constant starts are 0, steps 1 and ends reach past each sliced static dim."""
    source = node.inputs[0]
    inputs = [*node.inputs, None, None, None][:5]
    starts, ends = constant_array(inputs[1]), constant_array(inputs[2])
    if source is None or source.shape is None or starts is None or ends is None:
        return False
    rank = len(source.shape)
    axes = constant_array(inputs[3]) if inputs[3] is not None else np.arange(len(starts))
    steps = constant_array(inputs[4]) if inputs[4] is not None else np.ones(len(starts), np.int64)
    if axes is None or steps is None:
        return False
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist(), strict=True):
        dim = source.shape[int(axis) % rank] if -rank <= int(axis) < rank else None
        if step != 1 or start != 0:
            return False
        if end < 2**62 and not (isinstance(dim, int) and end >= dim):
            return False
    return True


@register_pass("eliminate-noops")
class EliminateNoops(Pass):
    """Remove Identity, inference Dropout, and Cast/Reshape/Transpose/Expand/Slice/Add 0/Mul 1 that change nothing."""

    requires_analyses = ("shapes",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        removed: dict[str, int] = {}
        graph = model.graph
        for node in list(graph):
            if not _is_noop(node):
                continue
            source, result = _noop_source(node), node.outputs[0]
            assert source is not None
            if result.dtype is not None and source.dtype is not None and result.dtype != source.dtype:
                continue
            if result.is_graph_output():
                if source.is_graph_input() or source.is_graph_output() or source.is_initializer():
                    continue  # the graph's interface names must survive
                # Keep the output's name: the producer of `source` now writes it.
                result_name = result.name
                for index, output in enumerate(graph.outputs):
                    if output is result:
                        graph.outputs[index] = source
                ir.convenience.replace_all_uses_with(result, source)
                graph.remove(node, safe=True)
                source.name = result_name
            else:
                ir.convenience.replace_all_uses_with(result, source)
                graph.remove(node, safe=True)
            removed[node.op_type] = removed.get(node.op_type, 0) + 1
        counts = {f"{op.lower()}_removed": n for op, n in removed.items()}
        return PassResult(model, bool(removed), counts=counts)
