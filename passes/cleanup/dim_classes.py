"""Which symbolic dims of a graph are provably equal at run time (union-find over (value, axis)).

ONNX shape inference names dims it can relate ("batch" flows through Conv),
but ops it cannot fully infer (Resize with scales, Reshape from computed
shapes) hand out fresh ``unk__N`` names, after which the batch of a detection
head no longer "equals" the batch of the input. This walks the graph once and
joins dims the op semantics make equal: unary ops keep every dim, Concat keeps
the non-concatenated ones, Transpose permutes them, pooling and convolution
keep the batch, MatMul keeps the leading ones. Broadcasting ops only join a dim
with an operand whose dim there is not 1, and only when the other operands
have a static 1 (or no such axis): a symbolic dim could be 1 at run time.
Used by simplify-shapes to decide that a Reshape target element is "the data's
own dim" (so 0 can stand for it). Hand-written because no library exposes
dim equalities: onnx's inference only keeps names, ORT's symbolic inference
works on protobuf and rewrites the model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

# Ops whose output has exactly the first input's shape.
_SAME_SHAPE = frozenset({
    "Relu", "Sigmoid", "Tanh", "Clip", "Cast", "CastLike", "Identity", "Neg", "Exp", "Log", "Erf", "Sqrt", "Abs",
    "Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization", "Dropout",
    "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Gelu", "Swish", "Softplus", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Not", "Mish", "PRelu", "CumSum", "LpNormalization", "GroupNormalization",
})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater",
                        "And", "Or", "Mod", "LessOrEqual", "GreaterOrEqual", "Sum", "Mean"})
_KEEPS_BATCH = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                          "GlobalMaxPool", "LpPool", "Resize", "Upsample", "SpaceToDepth", "DepthToSpace"})


def _const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None or value.const_value.size > 64:
        return None
    array = value.const_value.numpy()
    return [int(v) for v in array.reshape(-1)] if np.issubdtype(array.dtype, np.integer) else None


class DimClasses:
    """Union-find over (value, axis) pairs; ``same(a, i, b, j)`` says whether two dims are provably equal."""

    def __init__(self, graph: ir.Graph) -> None:
        self._parent: dict[object, object] = {}
        for value in (*graph.inputs, *(o for node in graph for o in node.outputs)):
            self._name_dims(value)
        for node in graph:
            if node.domain in ("", "ai.onnx"):
                self._visit(node)

    def _find(self, key: object) -> object:
        parent = self._parent.setdefault(key, key)
        if parent is key or parent == key:
            return key
        root = self._find(parent)
        self._parent[key] = root
        return root

    def _union(self, a: object, b: object) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[ra] = rb

    @staticmethod
    def _key(value: ir.Value, axis: int) -> tuple[int, int]:
        return (id(value), axis)

    def _name_dims(self, value: ir.Value) -> None:
        if value.shape is None:
            return
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                self._union(self._key(value, axis), ("name", dim.value))

    def same(self, a: ir.Value, axis_a: int, b: ir.Value, axis_b: int) -> bool:
        if a is b and axis_a == axis_b:
            return True
        return self._find(self._key(a, axis_a)) == self._find(self._key(b, axis_b))

    def _join(self, out: ir.Value, out_axis: int, src: ir.Value | None, src_axis: int) -> None:
        if src is None or out.shape is None or src.shape is None:
            return
        if 0 <= out_axis < len(out.shape) and 0 <= src_axis < len(src.shape):
            self._union(self._key(out, out_axis), self._key(src, src_axis))

    def _visit(self, node: ir.Node) -> None:
        op, inputs = node.op_type, node.inputs
        if not node.outputs or not inputs or inputs[0] is None:
            return
        out, first = node.outputs[0], inputs[0]
        rank = len(out.shape) if out.shape is not None else None
        if rank is None:
            return
        if op in _SAME_SHAPE:
            for axis in range(rank):
                self._join(out, axis, first, axis)
        elif op in _BROADCAST:
            self._broadcast(out, [v for v in inputs if v is not None])
        elif op in _KEEPS_BATCH:
            self._join(out, 0, first, 0)
            if op in ("Resize", "Upsample", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                      "LpPool"):
                self._join(out, 1, first, 1)
        elif op == "Concat":
            axis = node.attributes.get_int("axis", 0) % rank
            for value in inputs:
                for other in range(rank):
                    if other != axis:
                        self._join(out, other, value, other)
        elif op in ("Split", "Slice"):
            if op == "Split":
                sliced = {node.attributes.get_int("axis", 0) % rank}
            else:
                has_axes = len(inputs) > 3 and inputs[3] is not None
                starts = _const_ints(inputs[1]) if len(inputs) > 1 else None
                axes = _const_ints(inputs[3]) if has_axes else (list(range(len(starts))) if starts else None)
                if not axes:
                    return
                sliced = {a % rank for a in axes}
            for result in node.outputs:
                for axis in range(rank):
                    if axis not in sliced:
                        self._join(result, axis, first, axis)
        elif op == "Transpose":
            perm = node.attributes.get_ints("perm") or list(reversed(range(rank)))
            for axis, source in enumerate(perm):
                self._join(out, axis, first, source)
        elif op == "Reshape":
            target = _const_ints(inputs[1]) if len(inputs) > 1 else None
            if target is not None and not node.attributes.get_int("allowzero", 0):
                for axis, want in enumerate(target):
                    if want == 0:
                        self._join(out, axis, first, axis)
        elif op in ("MatMul", "Gemm"):
            self._matmul(node, out, rank)
        elif op == "Flatten" and node.attributes.get_int("axis", 1) == 1:
            self._join(out, 0, first, 0)

    def _broadcast(self, out: ir.Value, operands: list[ir.Value]) -> None:
        if any(v.shape is None for v in operands):
            return
        rank = len(out.shape)  # type: ignore[arg-type]
        for axis in range(rank):
            carriers = []
            for value in operands:
                index = axis - (rank - len(value.shape))  # type: ignore[arg-type]
                if index < 0 or value.shape[index] == 1:  # type: ignore[index]
                    continue
                carriers.append((value, index))
            if len(carriers) == 1 or (carriers and all(self.same(carriers[0][0], carriers[0][1], v, i)
                                                       for v, i in carriers[1:])):
                for value, index in carriers:
                    self._join(out, axis, value, index)

    def _matmul(self, node: ir.Node, out: ir.Value, rank: int) -> None:
        a, b = node.inputs[0], node.inputs[1]
        if a is None or b is None or a.shape is None or b.shape is None:
            return
        if node.op_type == "Gemm":
            self._join(out, 0, a, 1 if node.attributes.get_int("transA", 0) else 0)
            self._join(out, 1, b, 0 if node.attributes.get_int("transB", 0) else 1)
            return
        if len(a.shape) >= 2:
            self._join(out, rank - 2, a, len(a.shape) - 2)
        if len(b.shape) >= 2:
            self._join(out, rank - 1, b, len(b.shape) - 1)
        if len(b.shape) == 2:  # batch dims all come from a
            for axis in range(len(a.shape) - 2):
                self._join(out, axis, a, axis)
