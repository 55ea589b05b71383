"""eliminate-noops: Identity, inference Dropout, and Cast/Reshape/Transpose that change nothing."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass


def _constant_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


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
        training = _constant_array(node.inputs[2]) if len(node.inputs) > 2 else np.array(False)
        return training is not None and not bool(training)
    if op == "Cast":
        to = node.attributes.get_int("to")
        return source.dtype is not None and to is not None and int(source.dtype) == to
    if op == "Transpose":
        perm = node.attributes.get_ints("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Reshape":
        target = _constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
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
    return False


@register_pass("eliminate-noops")
class EliminateNoops(Pass):
    """Remove Identity, inference-mode Dropout, and Cast/Reshape/Transpose that change nothing."""

    requires_analyses = ("shapes",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        removed: dict[str, int] = {}
        graph = model.graph
        for node in list(graph):
            if not _is_noop(node):
                continue
            source, result = node.inputs[0], node.outputs[0]
            assert source is not None
            if result.is_graph_output():
                if source.is_graph_input() or source.is_graph_output() or source.is_initializer():
                    continue  # the graph's interface names must survive
                # Keep the output's name: the producer of `source` now writes it.
                result_name = result.name
                ir.convenience.replace_all_uses_with(result, source)
                graph.outputs[graph.outputs.index(result)] = source
                graph.remove(node, safe=True)
                source.name = result_name
            else:
                ir.convenience.replace_all_uses_with(result, source)
                graph.remove(node, safe=True)
            removed[node.op_type] = removed.get(node.op_type, 0) + 1
        counts = {f"{op.lower()}_removed": n for op, n in removed.items()}
        return PassResult(model, bool(removed), counts=counts)
