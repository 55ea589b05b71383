"""FLOPs, parameters and bytes per node: the static cost of a graph.

FLOPs count a multiply-add as two operations (the convention vendor peak
figures use). Bytes are what a node must move if nothing stays in cache: its
activation inputs, weights and outputs. Symbolic dims are bound to 1 unless a
binding is given, so the default figures are per sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgeopt.ir.analysis import AnalysisManager, register_analysis
from edgeopt.ir.shapes import TensorInfo, bind_shape

# Approximate FLOPs per output element for ops whose cost is a small constant
# multiple of their size (transcendentals and normalisations cost more than an add).
_ELEMENTWISE_FLOPS = {
    "Relu": 1, "LeakyRelu": 2, "Clip": 2, "Add": 1, "Sub": 1, "Mul": 1, "Div": 1,
    "Sigmoid": 4, "HardSigmoid": 3, "HardSwish": 4, "Tanh": 4, "Exp": 4, "Log": 4,
    "Erf": 6, "Gelu": 8, "Sqrt": 2, "Pow": 4, "Neg": 1, "Abs": 1, "Max": 1, "Min": 1,
    "Where": 1, "Mish": 8, "Softplus": 4, "Elu": 4, "Selu": 4, "PRelu": 2, "Silu": 5,
    "Reciprocal": 1, "Cast": 1, "QuantizeLinear": 3, "DequantizeLinear": 2,
}
_NORMALIZATION_FLOPS = {
    "BatchNormalization": 2, "InstanceNormalization": 6, "LayerNormalization": 8,
    "GroupNormalization": 8, "Softmax": 5, "LogSoftmax": 6, "LpNormalization": 3,
    "RMSNormalization": 6,
}


@dataclass(frozen=True)
class NodeCost:
    flops: int
    params: int  # elements of constant (initializer) inputs
    weight_bytes: int
    activation_bytes: int  # non-constant inputs plus outputs

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


@dataclass
class GraphCost:
    per_node: dict[ir.Node, NodeCost] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return sum(cost.flops for cost in self.per_node.values())

    @property
    def bytes(self) -> int:
        return sum(cost.bytes for cost in self.per_node.values())


def _numel(dims: tuple[int, ...] | None) -> int:
    return math.prod(dims) if dims is not None else 0


def _itemsize(dtype: ir.DataType | None) -> int:
    if dtype is None:
        return 4
    # Sub-byte types (int4) report a fractional size; round up per element.
    return max(1, math.ceil(dtype.itemsize))


def _value_dims(value: ir.Value | None, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    return shapes.get(value.name or "")


def node_flops(node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """FLOPs of one node from concrete input/output shapes (0 for data movement)."""
    op = node.op_type
    out = _value_dims(node.outputs[0], shapes) if node.outputs else None
    out_numel = _numel(out)
    inputs = [_value_dims(v, shapes) for v in node.inputs]
    if op in ("Conv", "ConvInteger", "QLinearConv") and out is not None:
        weight = inputs[3] if op == "QLinearConv" else inputs[1]
        if weight is None:
            return 0
        # weight: [Cout, Cin/group, k...]; each output element is a dot product over Cin/group * k.
        flops = 2 * out_numel * _numel(weight[1:])
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None and op == "Conv"
        return flops + (out_numel if has_bias else 0)
    if op == "ConvTranspose" and inputs[0] is not None and inputs[1] is not None:
        # weight: [Cin, Cout/group, k...]: every input element scatters into Cout/group * k outputs.
        return 2 * _numel(inputs[0]) * _numel(inputs[1][1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul"):
        a = inputs[0]
        if a is None or out is None or not a:
            return 0
        return 2 * out_numel * a[-1]
    if op == "Gemm" and inputs[0] is not None and out is not None:
        trans_a = node.attributes.get_int("transA", 0)
        k = inputs[0][0] if trans_a else inputs[0][-1]
        return 2 * out_numel * k + (out_numel if len(node.inputs) > 2 else 0)
    if op in ("LSTM", "GRU", "RNN") and inputs[0] is not None and inputs[1] is not None:
        seq, batch = inputs[0][0], inputs[0][1]
        gates_hidden, input_size = inputs[1][-2], inputs[1][-1]
        hidden = node.attributes.get_int("hidden_size", gates_hidden)
        directions = inputs[1][0]
        # Input and recurrent matmuls per step, per direction.
        return 2 * seq * batch * directions * gates_hidden * (input_size + hidden)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = node.attributes.get_ints("kernel_shape", [1])
        return out_numel * math.prod(kernel)
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
              "ReduceMin", "ReduceL2", "ReduceProd", "ReduceSumSquare"):
        return _numel(inputs[0])
    if op in _NORMALIZATION_FLOPS:
        return _NORMALIZATION_FLOPS[op] * out_numel
    if op in _ELEMENTWISE_FLOPS:
        return _ELEMENTWISE_FLOPS[op] * out_numel
    return 0


def node_cost(node: ir.Node, shapes: Mapping[str, tuple[int, ...]],
              dtypes: Mapping[str, ir.DataType | None]) -> NodeCost:
    params = weight_bytes = activation_bytes = 0
    for value in node.inputs:
        if value is None:
            continue
        if value.const_value is not None:
            tensor = value.const_value
            params += _numel(tuple(tensor.shape.numpy()))
            weight_bytes += tensor.nbytes
        else:
            activation_bytes += _numel(shapes.get(value.name or "")) * _itemsize(dtypes.get(value.name or ""))
    for value in node.outputs:
        activation_bytes += _numel(shapes.get(value.name or "")) * _itemsize(dtypes.get(value.name or ""))
    return NodeCost(node_flops(node, shapes), params, weight_bytes, activation_bytes)


def concrete_shapes(
    model: ir.Model,
    table: Mapping[str, TensorInfo],
    bindings: Mapping[str, int] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Integer shapes of every value: inferred where known, else measured by one reference run."""
    shapes: dict[str, tuple[int, ...]] = {}
    unknown: list[str] = []
    input_symbols = {
        str(dim.value)
        for value in model.graph.inputs if value.shape is not None
        for dim in value.shape if not isinstance(dim, int)
    }
    for name, info in table.items():
        # A symbol that does not come from a graph input (unk__3, a computed dim)
        # cannot be bound from the inputs: measure it instead.
        derived = info.shape is not None and any(
            not isinstance(d, int) and str(d.value) not in input_symbols for d in info.shape
        )
        dims = bind_shape(info.shape, bindings)
        if dims is None or derived:
            unknown.append(name)
        else:
            shapes[name] = dims
    if unknown and all(v.shape is not None for v in model.graph.inputs):
        from edgeopt.ir.reference import ReferenceExecutor  # cycle: reference uses shapes

        executor = ReferenceExecutor()
        try:
            inputs = executor.generate_inputs(model, bindings=bindings)
            measured = executor.run(model, inputs, extra_outputs=unknown)
        except Exception:  # costs of a model ORT cannot run stay partial, not fatal
            return shapes
        for name, array in measured.items():
            shapes[name] = tuple(np.shape(array))
    return shapes


def graph_cost(model: ir.Model, table: Mapping[str, TensorInfo],
               bindings: Mapping[str, int] | None = None) -> GraphCost:
    shapes = concrete_shapes(model, table, bindings)
    dtypes = {name: info.dtype for name, info in table.items()}
    return GraphCost({node: node_cost(node, shapes, dtypes) for node in model.graph})


@register_analysis("costs")
def _costs_analysis(model: ir.Model, manager: AnalysisManager) -> GraphCost:
    return graph_cost(model, manager.get(model, "shapes"))


def parameter_count(model: ir.Model) -> int:
    """Elements in all initializers (and Constant nodes) of the main graph."""
    total = sum(
        math.prod(value.const_value.shape.numpy())
        for value in model.graph.initializers.values()
        if value.const_value is not None
    )
    for node in model.graph:
        attr = node.attributes.get("value") if node.op_type == "Constant" else None
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            total += math.prod(attr.as_tensor().shape.numpy())
    return int(total)
