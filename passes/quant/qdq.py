"""Writing a Q/DQ plan into the IR: QuantizeLinear/DequantizeLinear pairs and quantized weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.passes.quant.calibrators import QuantParams, Range, quantize_array, weight_params
from edgeopt.passes.quant.calibrators import activation_params as activation_range_params
from edgeopt.passes.quant.placement import QdqPlan


@dataclass
class QdqCounts:
    activations: int = 0
    weights: int = 0
    biases: int = 0


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, index = name, 0
    while name in graph.initializers:
        index += 1
        name = f"{base}_{index}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _domain(params: QuantParams, opset: int) -> str:
    # 16-bit Q/DQ is standard from opset 21; before that ORT has it in its contrib domain.
    return "com.microsoft" if params.dtype.itemsize > 1 and opset < 21 else ""


def apply_plan(model: ir.Model, plan: QdqPlan, activation_params: Callable[[str], QuantParams],
               reduce_range: bool = False) -> QdqCounts:
    """Insert the plan's Q/DQ pairs; ``activation_params(root tensor)`` gives each scale."""
    graph = model.graph
    opset = model.opset_imports.get("", 17)
    counts = QdqCounts()
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        for value in node.outputs:
            values[value.name] = value
    nodes = {n.name: n for n in graph}
    shared: dict[str, tuple[ir.Value, ir.Value, QuantParams]] = {}
    new_nodes: list[ir.Node] = []

    def scale_values(root: str) -> tuple[ir.Value, ir.Value, QuantParams]:
        if root not in shared:
            params = activation_params(root)
            scale = _initializer(graph, f"{root}_scale", np.asarray(params.scale, np.float32))
            zero = _initializer(graph, f"{root}_zero_point", np.asarray(params.zero_point, params.dtype))
            shared[root] = (scale, zero, params)
        return shared[root]

    for name, root in plan.activations.items():
        value = values.get(name)
        if value is None:
            continue
        scale, zero, params = scale_values(root)
        uses = list(value.uses())
        domain = _domain(params, opset)
        if domain:
            model.opset_imports.setdefault(domain, 1)
        q = ir.Node(domain, "QuantizeLinear", [value, scale, zero], name=f"{name}_QuantizeLinear",
                    outputs=[ir.Value(name=f"{name}_quantized")])
        dq = ir.Node(domain, "DequantizeLinear", [q.outputs[0], scale, zero], name=f"{name}_DequantizeLinear",
                     outputs=[ir.Value(name=f"{name}_dequantized", shape=value.shape, type=value.type)])
        for use in uses:
            use.node.replace_input_with(use.idx, dq.outputs[0])
        new_nodes += [q, dq]
        counts.activations += 1

    weight_cache: dict[str, ir.Value] = {}
    for spec in plan.weights:
        node = nodes[spec.node]
        weight = node.inputs[spec.index]
        if weight is None or weight.const_value is None:
            continue
        if weight.name not in weight_cache:
            array = weight.const_value.numpy().astype(np.float32)
            params = weight_params(array, spec.axis, reduce_range=reduce_range)
            quantized = _initializer(graph, f"{weight.name}_quantized", quantize_array(array, params))
            scale = _initializer(graph, f"{weight.name}_scale", params.scale)
            zero = _initializer(graph, f"{weight.name}_zero_point", params.zero_point.astype(np.int8))
            attrs = [ir.AttrInt64("axis", spec.axis)] if spec.axis is not None and params.scale.ndim == 1 else []
            dq = ir.Node("", "DequantizeLinear", [quantized, scale, zero], attributes=attrs,
                         name=f"{weight.name}_DequantizeLinear",
                         outputs=[ir.Value(name=f"{weight.name}_dequantized", shape=weight.shape, type=weight.type)])
            dq.meta["edgeopt.weight_params"] = params
            new_nodes.append(dq)
            weight_cache[weight.name] = dq.outputs[0]
            counts.weights += 1
        node.replace_input_with(spec.index, weight_cache[weight.name])

    for node_name, index in plan.biases:
        node = nodes[node_name]
        bias, act, wdq = node.inputs[index], node.inputs[0], node.inputs[1]
        act_dq = act.producer() if act is not None else None
        wdq_node = wdq.producer() if wdq is not None else None
        if bias is None or bias.const_value is None or act_dq is None or wdq_node is None \
                or act_dq.op_type != "DequantizeLinear" or "edgeopt.weight_params" not in wdq_node.meta:
            continue
        if act_dq.domain:  # 16-bit activations: leave the bias in float
            continue
        act_scale = float(np.asarray(act_dq.inputs[1].const_value.numpy()))
        weight_scale = wdq_node.meta["edgeopt.weight_params"].scale
        bias_scale = (act_scale * np.asarray(weight_scale, np.float64)).astype(np.float32)
        values_f = bias.const_value.numpy().astype(np.float64)
        if bias_scale.ndim == 0:
            bias_scale = np.full(values_f.shape, bias_scale, np.float32)
        quantized = np.round(values_f / bias_scale).clip(-(2**31), 2**31 - 1).astype(np.int32)
        q_value = _initializer(graph, f"{bias.name}_quantized", quantized)
        s_value = _initializer(graph, f"{bias.name}_scale", bias_scale)
        z_value = _initializer(graph, f"{bias.name}_zero_point", np.zeros_like(quantized))
        dq = ir.Node("", "DequantizeLinear", [q_value, s_value, z_value], attributes=[ir.AttrInt64("axis", 0)],
                     name=f"{bias.name}_{node_name}_DequantizeLinear",
                     outputs=[ir.Value(name=f"{bias.name}_{node_name}_dequantized", shape=bias.shape,
                                       type=bias.type)])
        new_nodes.append(dq)
        node.replace_input_with(index, dq.outputs[0])
        counts.biases += 1

    for node_name, index in plan.constants:
        node = nodes[node_name]
        constant, other = node.inputs[index], node.inputs[1 - index]
        other_dq = other.producer() if other is not None else None
        if constant is None or constant.const_value is None or other_dq is None \
                or other_dq.op_type != "DequantizeLinear" or other_dq.domain:  # 16-bit: the constant stays float
            continue
        dtype = other_dq.inputs[2].const_value.numpy().dtype if other_dq.inputs[2] is not None else np.dtype(np.uint8)
        array = constant.const_value.numpy().astype(np.float32)
        # The range includes 0 so that zero stays exact, as for activations.
        params = activation_range_params(Range(min(float(array.min()), 0.0), max(float(array.max()), 0.0)),
                                         signed=np.issubdtype(dtype, np.signedinteger))
        prefix = f"{constant.name}_{node_name}"
        quantized = _initializer(graph, f"{prefix}_quantized", quantize_array(array, params))
        scale = _initializer(graph, f"{prefix}_scale", params.scale)
        zero = _initializer(graph, f"{prefix}_zero_point", params.zero_point)
        dq = ir.Node("", "DequantizeLinear", [quantized, scale, zero], name=f"{prefix}_DequantizeLinear",
                     outputs=[ir.Value(name=f"{prefix}_dequantized", shape=constant.shape, type=constant.type)])
        new_nodes.append(dq)
        node.replace_input_with(index, dq.outputs[0])
        counts.weights += 1

    for new in new_nodes:
        graph.append(new)
    for new in new_nodes:
        new.meta.pop("edgeopt.weight_params", None)
    if plan.rules.quantize_outputs:
        for layer in plan.layers:
            _fold_activation(graph, nodes[layer])
    graph.sort()
    _drop_unused_initializers(graph)
    return counts


def _fold_activation(graph: ir.Graph, layer: ir.Node) -> None:
    """Drop a Relu/Clip between a layer and its output Q when the Q's range already clamps the same way.

    ORT fuses ``DQ -> Conv -> Q`` into QLinearConv only when nothing sits between
    Conv and Q; a uint8 Q with zero point 0 clamps at 0 like Relu (and Clip when
    its bounds hold the quantized range), so the activation is redundant.
    """
    uses = list(layer.outputs[0].uses())
    if len(uses) != 1 or layer.outputs[0].is_graph_output():
        return
    act = uses[0].node
    if act.op_type not in ("Relu", "Clip"):
        return
    act_uses = list(act.outputs[0].uses())
    if len(act_uses) != 1 or act_uses[0].node.op_type != "QuantizeLinear" or act.outputs[0].is_graph_output():
        return
    q = act_uses[0].node
    scale, zero = q.inputs[1].const_value, q.inputs[2].const_value if len(q.inputs) > 2 else None
    if scale is None or zero is None:
        return
    zero_point = int(np.asarray(zero.numpy()).ravel()[0])
    info = np.iinfo(zero.dtype.numpy())
    if zero_point != info.min:
        return
    if act.op_type == "Clip":
        bounds = [v.const_value for v in act.inputs[1:3] if v is not None]
        if len(bounds) != 2 or any(b is None for b in bounds):
            return
        low, high = (float(np.asarray(b.numpy())) for b in bounds)
        top = float(np.asarray(scale.numpy())) * (info.max - info.min)
        if low != 0.0 or high < top:
            return
    q.replace_input_with(0, layer.outputs[0])
    graph.remove(act, safe=True)


def _drop_unused_initializers(graph: ir.Graph) -> None:
    outputs = {v.name for v in graph.outputs}
    for name, value in list(graph.initializers.items()):
        if not list(value.uses()) and name not in outputs and not value.is_graph_input():
            del graph.initializers[name]
