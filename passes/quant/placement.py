"""Where Q/DQ pairs go, by backend: ONNX Runtime, TensorRT and OpenVINO conventions.

A rule set names the ops with INT8 kernels ("layers"), the activations fused
into a layer's epilogue, the ops that run on INT8 data unchanged, and which
tensors around a layer get a QuantizeLinear/DequantizeLinear pair:

* ``onnxruntime``: ORT fuses a node unit ``DQ(inputs) -> op -> Q(output)`` into
  QLinearConv/QLinearMatMul/QGemm/QLinearAdd/QLinearMul/QLinearConcat/
  QLinearSigmoid/QLinearLeakyRelu/QLinear(Global)AveragePool, so a layer's
  inputs *and* its output (after a fused Relu/Clip) are quantized; data-movement
  ops (MaxPool, Reshape, Resize, Slice, Split, ...) between two quantized
  tensors share one scale so ORT drops their Q/DQ. These are the ops
  ``quantize_static``'s QDQ quantizer quantizes too (Softmax aside: QLinearSoftmax
  costs attention accuracy), so "every candidate layer" is its placement; the
  per-layer gain decides which of them really run INT8. Activations are
  asymmetric uint8 (uint16 allowed).
* ``tensorrt``: explicit quantization: Q/DQ only on the inputs of
  Conv/Gemm/MatMul (TensorRT fuses outputs itself); a residual Add whose other
  input comes from a quantized layer gets Q/DQ on the residual input, so the
  Add fuses into that layer's INT8 epilogue; nothing around ops without INT8
  kernels. Activations symmetric int8.
* ``openvino``: NNCF's conventions: FakeQuantize (Q/DQ here) on the activation
  inputs of Conv/MatMul/Gemm and on both inputs of element-wise Add/Mul fed by
  a quantized layer; activations symmetric, unsigned when non-negative.

Weights are per-channel symmetric int8 in every rule set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx_ir as ir


@dataclass(frozen=True)
class RuleSet:
    name: str
    layer_ops: frozenset[str]
    tail_ops: frozenset[str]  # fused into the layer's epilogue (Q goes after them)
    passthrough_ops: frozenset[str]  # run on INT8 data unchanged when both sides share a scale
    quantize_outputs: bool
    residual_add: str  # "layer" (Add is a layer), "residual" (TensorRT), "both-inputs" (OpenVINO)
    activation_symmetric: bool
    activation_signed: bool | None  # None: unsigned when the range is non-negative
    activation_bits: tuple[int, ...] = (8,)
    # Add/Mul with one constant operand are layers too, the constant quantized like an activation
    # (its own range, the activation type): ONNX Runtime then runs QLinearAdd/QLinearMul and the
    # tensor stays 8-bit between layers, as quantize_static places it (BERT's bias Adds).
    constant_operands: bool = False


# Layers whose every input is an activation (element-wise with two activations, or a concatenation).
ALL_INPUT_OPS = frozenset({"Add", "Mul", "Concat"})
# Layers with a weight (per-channel int8) at input 1.
WEIGHT_OPS = frozenset({"Conv", "MatMul", "Gemm"})
_PASSTHROUGH = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice",
                          "Split"})
_ORT_LAYERS = frozenset({"Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "Sigmoid", "LeakyRelu",
                         "GlobalAveragePool", "AveragePool"})

RULE_SETS: dict[str, RuleSet] = {
    "onnxruntime": RuleSet("onnxruntime", _ORT_LAYERS, frozenset({"Relu", "Clip"}), _PASSTHROUGH, True, "layer",
                           False, False, (8, 16), constant_operands=True),
    "tensorrt": RuleSet("tensorrt", frozenset({"Conv", "MatMul", "Gemm"}), frozenset(), frozenset(), False,
                        "residual", True, True),
    "openvino": RuleSet("openvino", frozenset({"Conv", "MatMul", "Gemm"}), frozenset(), frozenset(), False,
                        "both-inputs", True, None),
}


def rule_set(name: str) -> RuleSet:
    if name not in RULE_SETS:
        raise KeyError(name)
    return RULE_SETS[name]


@dataclass(frozen=True)
class WeightSpec:
    node: str
    index: int
    axis: int | None


@dataclass
class QdqPlan:
    """The tensors to quantize (each mapped to the tensor whose scale it shares) and the weights."""

    rules: RuleSet
    layers: list[str] = field(default_factory=list)
    activations: dict[str, str] = field(default_factory=dict)
    weights: list[WeightSpec] = field(default_factory=list)
    biases: list[tuple[str, int]] = field(default_factory=list)  # (node, input index), int32 for Conv/Gemm
    constants: list[tuple[str, int]] = field(default_factory=list)  # (node, input index): activation-typed


def _is_float_activation(value: ir.Value | None) -> bool:
    if value is None or value.const_value is not None:
        return False
    return value.dtype is None or value.dtype.is_floating_point()


def _is_weight(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and value.dtype is not None \
        and value.dtype.is_floating_point()


def weight_axis(node: ir.Node, index: int) -> int | None:
    """Per-channel axis of a layer's weight input (the output-channel axis)."""
    if node.op_type == "Conv" and index == 1:
        return 0
    if node.op_type == "Gemm" and index == 1:
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul" and index == 1:
        shape = node.inputs[1].const_value.shape if node.inputs[1] is not None else None
        return len(shape) - 1 if shape is not None and len(shape) >= 2 else None
    return None


def layer_tail(node: ir.Node, rules: RuleSet) -> ir.Node:
    """The last node of the layer's fused epilogue (the node itself when nothing fuses)."""
    current = node
    while rules.tail_ops:
        output = current.outputs[0]
        uses = list(output.uses())
        if len(uses) != 1 or output.is_graph_output():
            break
        consumer = uses[0].node
        if consumer.op_type not in rules.tail_ops or uses[0].idx != 0:
            break
        current = consumer
    return current


def candidate_layers(model: ir.Model, rules: RuleSet) -> list[ir.Node]:
    """Nodes the rule set can run in INT8: a layer op with float activations (and const weights for Conv)."""
    layers = []
    for node in model.graph:
        if node.op_type not in rules.layer_ops or not node.name:
            continue
        if node.op_type == "Conv" and not _is_weight(node.inputs[1]):
            continue
        if node.op_type in ALL_INPUT_OPS:
            if len(node.inputs) < 2 or not (all(_is_float_activation(v) for v in node.inputs)
                                             or (rules.constant_operands and constant_operand(node) is not None)):
                continue
        elif not _is_float_activation(node.inputs[0]):
            continue
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            continue
        layers.append(node)
    return layers


def constant_operand(node: ir.Node) -> int | None:
    """The index of the constant operand of an Add/Mul whose other operand is a float activation."""
    if node.op_type not in ("Add", "Mul") or len(node.inputs) != 2:
        return None
    kinds = [_is_float_activation(v) for v in node.inputs]
    weights = [_is_weight(v) for v in node.inputs]
    if kinds == [True, False] and weights[1]:
        return 1
    if kinds == [False, True] and weights[0]:
        return 0
    return None


def activation_inputs(node: ir.Node) -> list[ir.Value]:
    if node.op_type in ALL_INPUT_OPS:
        return [v for v in node.inputs if _is_float_activation(v)]
    indices = (0, 1) if node.op_type in ("MatMul", "Gemm") else (0,)
    return [node.inputs[i] for i in indices if i < len(node.inputs) and _is_float_activation(node.inputs[i])]


def _producer_layer(value: ir.Value, tails: dict[str, ir.Node]) -> bool:
    return value.name in tails


def plan_qdq(model: ir.Model, rules: RuleSet, layers: Iterable[str]) -> QdqPlan:
    """Which tensors and weights get Q/DQ when ``layers`` (node names) run in INT8."""
    chosen = set(layers)
    nodes = {n.name: n for n in model.graph if n.name in chosen}
    plan = QdqPlan(rules, layers=[n for n in chosen if n in nodes])
    tails = {layer_tail(node, rules).outputs[0].name: node for node in nodes.values()}
    quantized: set[str] = set()
    for node in nodes.values():
        quantized.update(v.name for v in activation_inputs(node))
        for index, value in enumerate(node.inputs):
            if index == 1 and _is_weight(value) and node.op_type in WEIGHT_OPS:
                plan.weights.append(WeightSpec(node.name, index, weight_axis(node, index)))
            if index == 2 and _is_weight(value) and node.op_type in ("Conv", "Gemm"):
                plan.biases.append((node.name, index))
        constant = constant_operand(node) if rules.constant_operands else None
        if constant is not None:
            plan.constants.append((node.name, constant))
        if rules.quantize_outputs:
            output = layer_tail(node, rules).outputs[0]
            if not output.is_graph_output():
                quantized.add(output.name)
    if rules.residual_add != "layer":
        for node in model.graph:
            if node.op_type not in (("Add",) if rules.residual_add == "residual" else ("Add", "Mul")):
                continue
            inputs = [v for v in node.inputs if _is_float_activation(v)]
            if len(inputs) != 2:
                continue
            from_layer = [_producer_layer(v, tails) for v in inputs]
            if rules.residual_add == "residual" and sum(from_layer) == 1:
                quantized.update(v.name for v, fed in zip(inputs, from_layer, strict=True) if not fed)
            elif rules.residual_add == "both-inputs" and any(from_layer):
                quantized.update(v.name for v in inputs)
    values = {v.name: v for n in model.graph for v in n.outputs}
    plan.activations = {name: _share_root(values, name, quantized, rules) for name in sorted(quantized)}
    return plan


def _share_root(values: dict[str, ir.Value], name: str, quantized: set[str], rules: RuleSet) -> str:
    """Follow data-movement ops back to the quantized tensor whose scale this one must reuse."""
    current = name
    while current in values:
        producer = values[current].producer()
        if producer is None or producer.op_type not in rules.passthrough_ops:
            break
        source = producer.inputs[0]
        if source is None or source.name not in quantized:
            break
        current = source.name
    return current
