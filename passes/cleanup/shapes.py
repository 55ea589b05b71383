"""simplify-shapes: shape computations (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) made constant.

Exporters spell every Reshape target as a computation on ``Shape(x)`` even
when only the batch dim is unknown. This pass evaluates those int64 vectors
symbolically: each element is a known integer, "dim ``a`` of tensor ``v``"
(with the symbolic name shape inference gave it), or unknown. Then

- a vector whose elements are all known becomes an initializer;
- a Reshape target whose elements are known except for dims that equal the
  data's own dim at the same position becomes a constant with 0 there (Reshape
  copies that dim at run time), and at most one remaining unknown becomes -1
  (Reshape infers it from the element count).

So the model stays valid for every value of the symbolic dims. Written by hand
because onnxscript's folder tracks shape values only through Shape/Gather/Concat
(not Unsqueeze/Slice/Squeeze/arithmetic) and its Reshape materializer needs the
output shape fully inferred, which fails whenever two dims are symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.cleanup.dim_classes import DimClasses
from edgeopt.passes.registry import register_pass

_MAX_ELEMENTS = 64  # shape vectors are short; anything longer is data, not a shape


@dataclass(frozen=True, eq=False)
class DimOf:
    """Element ``axis`` of ``Shape(value)``; ``name`` is the symbolic name shape inference gave it."""

    value: ir.Value
    axis: int
    name: str | None


Element = int | DimOf | None  # None: unknown


@dataclass
class Vector:
    elements: list[Element]
    scalar: bool = False

    @property
    def known(self) -> bool:
        return all(isinstance(e, int) for e in self.elements)


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        tensor = value.const_value
    else:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
            return None
        attr = producer.attributes.get("value")
        if attr is None or attr.type != ir.AttributeType.TENSOR:
            return None
        tensor = attr.as_tensor()
    if tensor.size > _MAX_ELEMENTS:
        return None
    return tensor.numpy()


def _ints(value: ir.Value | None) -> list[int] | None:
    array = _const_array(value)
    if array is None or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(v) for v in array.reshape(-1)]


def _dim_name(dim: object) -> str | None:
    return dim.value if isinstance(dim, ir.SymbolicDim) else None


def _same_dim(element: Element, data: ir.Value, index: int, classes: DimClasses) -> bool:
    """Whether ``element`` is provably dim ``index`` of ``data`` at run time."""
    if not isinstance(element, DimOf) or data.shape is None or index >= len(data.shape):
        return False
    if element.value is data and element.axis == index:
        return True
    name = _dim_name(data.shape[index])
    if name is not None and element.name == name:
        return True
    return classes.same(element.value, element.axis, data, index)


class _Evaluator:
    """Symbolic values of the small integer tensors a graph computes shapes with."""

    def __init__(self) -> None:
        self.vectors: dict[ir.Value, Vector] = {}

    def get(self, value: ir.Value | None) -> Vector | None:
        if value is None:
            return None
        if value in self.vectors:
            return self.vectors[value]
        array = _const_array(value)
        if array is None or array.ndim > 1 or not np.issubdtype(array.dtype, np.integer):
            return None
        return Vector([int(v) for v in array.reshape(-1)], scalar=array.ndim == 0)

    def visit(self, node: ir.Node) -> None:
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            return
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None:
            return
        result = handler(node)
        if result is not None and len(result.elements) <= _MAX_ELEMENTS:
            self.vectors[node.outputs[0]] = result

    def _op_Shape(self, node: ir.Node) -> Vector | None:
        source = node.inputs[0]
        if source is None or source.shape is None:
            return None
        rank = len(source.shape)
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        axes = range(rank)[slice(start, end)]
        return Vector([d if isinstance(d := source.shape[a], int) else DimOf(source, a, _dim_name(d))
                       for a in axes])

    def _op_Gather(self, node: ir.Node) -> Vector | None:
        data, indices = self.get(node.inputs[0]), _const_array(node.inputs[1])
        if data is None or data.scalar or indices is None or indices.ndim > 1 or node.attributes.get_int("axis", 0):
            return None
        size = len(data.elements)
        picked = []
        for index in indices.reshape(-1).tolist():
            if not -size <= index < size:
                return None
            picked.append(data.elements[index])
        return Vector(picked, scalar=indices.ndim == 0)

    def _op_Unsqueeze(self, node: ir.Node) -> Vector | None:
        data = self.get(node.inputs[0])
        axes = _ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes")
        if data is None or not data.scalar or axes is None or list(axes) not in ([0], [-1]):
            return None
        return Vector(list(data.elements))

    def _op_Squeeze(self, node: ir.Node) -> Vector | None:
        data = self.get(node.inputs[0])
        if data is None or data.scalar or len(data.elements) != 1:
            return None
        return Vector(list(data.elements), scalar=True)

    def _op_Concat(self, node: ir.Node) -> Vector | None:
        parts = [self.get(v) for v in node.inputs]
        if node.attributes.get_int("axis", 0) not in (0, -1) or any(p is None or p.scalar for p in parts):
            return None
        return Vector([e for p in parts for e in p.elements])  # type: ignore[union-attr]

    def _op_Slice(self, node: ir.Node) -> Vector | None:
        data = self.get(node.inputs[0])
        inputs = [*node.inputs, None, None, None][:5]
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if inputs[3] is not None else [0]
        steps = _ints(inputs[4]) if inputs[4] is not None else [1]
        if data is None or data.scalar or None in (starts, ends, axes, steps) or len(starts) != 1:
            return None
        if axes[0] not in (0, -1) or steps[0] == 0:
            return None
        # Python slicing clamps like ONNX Slice does (ends past the size, INT64_MAX).
        return Vector(data.elements[slice(starts[0], ends[0], steps[0])])

    def _op_Cast(self, node: ir.Node) -> Vector | None:
        to = node.attributes.get_int("to")
        if to not in (int(ir.DataType.INT64), int(ir.DataType.INT32)):
            return None
        return self.get(node.inputs[0])

    def _op_Identity(self, node: ir.Node) -> Vector | None:
        return self.get(node.inputs[0])

    def _arithmetic(self, node: ir.Node, fn) -> Vector | None:
        a, b = self.get(node.inputs[0]), self.get(node.inputs[1])
        if a is None or b is None:
            return None
        la, lb = len(a.elements), len(b.elements)
        if la != lb and 1 not in (la, lb):
            return None
        size = max(la, lb)
        out: list[Element] = []
        for i in range(size):
            x, y = a.elements[i if la > 1 else 0], b.elements[i if lb > 1 else 0]
            out.append(fn(x, y) if isinstance(x, int) and isinstance(y, int) else None)
        return Vector(out, scalar=a.scalar and b.scalar)

    def _op_Add(self, node: ir.Node) -> Vector | None:
        return self._arithmetic(node, lambda x, y: x + y)

    def _op_Sub(self, node: ir.Node) -> Vector | None:
        return self._arithmetic(node, lambda x, y: x - y)

    def _op_Mul(self, node: ir.Node) -> Vector | None:
        return self._arithmetic(node, lambda x, y: x * y)

    def _op_Div(self, node: ir.Node) -> Vector | None:
        # Integer Div truncates toward zero in ONNX Runtime; only exact divisions are folded.
        return self._arithmetic(node, lambda x, y: x // y if y and x % y == 0 else None)


def _reshape_target(node: ir.Node, vector: Vector, classes: DimClasses) -> list[int] | None:
    """A constant Reshape target equivalent to ``vector`` for every value of the symbolic dims."""
    data = node.inputs[0]
    if data is None or vector.scalar or node.attributes.get_int("allowzero", 0):
        return None
    target: list[int | None] = []
    for index, element in enumerate(vector.elements):
        if isinstance(element, int):
            target.append(element)
        elif _same_dim(element, data, index, classes):
            target.append(0)
        else:
            target.append(None)
    if sum(1 for t in target if t is None or t == -1) > 1:
        return None
    return [-1 if t is None else t for t in target]


@register_pass("simplify-shapes")
class SimplifyShapes(Pass):
    """Turn Shape/Gather/Concat chains into constants; Reshape targets keep symbolic dims as 0 or -1."""

    requires_analyses = ("shapes",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        evaluator = _Evaluator()
        classes: DimClasses | None = None  # built on first need: most graphs have no dynamic Reshape
        taken = {v.name for v in graph.initializers.values()} | {v.name for v in graph.inputs}
        taken |= {o.name for n in graph for o in n.outputs}

        def fresh(base: str) -> str:
            name, index = base, 0
            while name in taken:
                index += 1
                name = f"{base}_{index}"
            taken.add(name)
            return name

        folded = reshapes = 0
        for node in list(graph):
            evaluator.visit(node)
            if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
                shape = node.inputs[1]
                vector = evaluator.get(shape)
                if shape is None or vector is None or _const_array(shape) is not None:
                    continue
                if classes is None:
                    classes = DimClasses(graph)
                target = _reshape_target(node, vector, classes)
                if target is not None:
                    constant = ir.Value(name=fresh(f"{node.name or 'reshape'}_target"),
                                        const_value=ir.tensor(np.array(target, dtype=np.int64)),
                                        shape=ir.Shape([len(target)]), type=ir.TensorType(ir.DataType.INT64))
                    graph.register_initializer(constant)
                    node.replace_input_with(1, constant)
                    reshapes += 1
        for value, vector in evaluator.vectors.items():
            if not vector.known or value.const_value is not None or not value.uses() or value.is_graph_output():
                continue
            dtype = value.dtype if value.dtype in (ir.DataType.INT64, ir.DataType.INT32) else None
            if dtype is None:
                continue
            array = np.array(vector.elements, dtype=dtype.numpy())
            if vector.scalar:
                array = array.reshape(())
            constant = ir.Value(name=fresh(f"{value.name}_folded"), const_value=ir.tensor(array),
                                shape=ir.Shape(array.shape), type=ir.TensorType(dtype))
            graph.register_initializer(constant)
            ir.convenience.replace_all_uses_with(value, constant)
            folded += 1
        counts = {k: v for k, v in {"reshape_targets": reshapes, "shape_values_folded": folded}.items() if v}
        return PassResult(model, bool(counts), counts=counts)
