"""Multi-node patterns backends run as one kernel: GELU / SiLU islands and attention blocks.

Written here because no library reports a backend's fusion without compiling the model;
each pattern was checked against the runtime graph the backend builds (OpenVINO CPU:
``compiled_model.get_runtime_model()``, whose ops carry ``layerType`` and the
``originalLayersNames`` they absorbed; ONNX Runtime: its optimized model and profile).
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir


def _consumers(value: ir.Value) -> list[ir.Node]:
    return [user for user, _ in value.uses()]


def _only_user(value: ir.Value) -> ir.Node | None:
    users = _consumers(value)
    return users[0] if len(users) == 1 else None


def _is_const(value: ir.Value | None, constants: set[str]) -> bool:
    return value is None or value.const_value is not None or (value.name or "") in constants


def islands(nodes: list[ir.Node], constants: set[str]) -> dict[int, list[ir.Node]]:
    """Elementwise patterns backends run as one kernel, keyed by their first node.

    GELU as exported from torch (Div -> Erf -> Add -> Mul(x, .) -> Mul(0.5)), with the bias
    Add in front when nothing else reads it (ORT's GeluFusion / BiasGelu), and SiLU
    (x * Sigmoid(x), ORT's QuickGelu, OpenVINO's Swish).
    """
    order = {id(n): i for i, n in enumerate(nodes)}
    found: dict[int, list[ir.Node]] = {}
    for node in nodes:
        if node.op_type == "Sigmoid" and node.inputs[0] is not None:
            mul = _only_user(node.outputs[0])
            if mul is not None and mul.op_type == "Mul" and node.inputs[0] in mul.inputs:
                found[id(node)] = [node, mul]
        if node.op_type != "Erf" or node.inputs[0] is None:
            continue
        scale = node.inputs[0].producer()
        add = _only_user(node.outputs[0])
        mul = _only_user(add.outputs[0]) if add is not None and add.op_type == "Add" else None
        if scale is None or scale.op_type not in ("Div", "Mul") or mul is None or mul.op_type != "Mul":
            continue
        x = scale.inputs[0]
        if x is None or x not in mul.inputs:
            continue
        members = [scale, node, add, mul]
        half = _only_user(mul.outputs[0])
        if half is not None and half.op_type == "Mul" and any(_is_const(v, constants) for v in half.inputs):
            members.append(half)
        bias = x.producer()
        if bias is not None and bias.op_type == "Add" and any(_is_const(v, constants) for v in bias.inputs) \
                and all(u in members for u in _consumers(x)):
            members.insert(0, bias)
        members.sort(key=lambda n: order.get(id(n), 0))
        found[id(members[0])] = members
    return found


def _rank(value: ir.Value | None, shapes: Mapping[str, tuple[int, ...]]) -> int:
    return len(shapes.get(value.name or "", ())) if value is not None else 0


def attention_blocks(nodes: list[ir.Node], constants: set[str], shapes: Mapping[str, tuple[int, ...]]
                     ) -> dict[int, list[ir.Node]]:
    """Scaled-dot-product attention blocks, keyed by their first node.

    Transpose(q)? -> MatMul(q, kT) -> [Mul|Div by a constant] -> [Add mask] -> Softmax ->
    MatMul(., Transpose(v)?) -> Transpose? : OpenVINO's CPU plugin runs this as one MHA
    "Subgraph" kernel (the s x s score matrix never reaches memory). Checked on ViT and BERT
    exports: the Transposes of q, v and of the output join the block, K's Transpose (to
    [b, h, d, s]) and the Q/K/V projections stay separate kernels.
    """
    order = {id(n): i for i, n in enumerate(nodes)}
    found: dict[int, list[ir.Node]] = {}
    for softmax in nodes:
        if softmax.op_type != "Softmax" or softmax.inputs[0] is None:
            continue
        members: list[ir.Node] = [softmax]
        producer = softmax.inputs[0].producer()
        # Optional mask Add and constant scale between the score MatMul and the Softmax.
        while producer is not None and producer.op_type in ("Add", "Mul", "Div") and \
                _only_user(producer.outputs[0]) is members[0]:
            members.insert(0, producer)
            data = [v for v in producer.inputs if v is not None and not _is_const(v, constants)]
            if producer.op_type in ("Mul", "Div") and len(data) != 1:
                break
            # Follow the score path: the input made by the MatMul or its scale, not the mask.
            nxt = [v.producer() for v in data if v.producer() is not None and
                   v.producer().op_type in ("MatMul", "Mul", "Div")]
            producer = nxt[0] if nxt else None
        if producer is None or producer.op_type != "MatMul" or _only_user(producer.outputs[0]) is not members[0]:
            continue
        score = producer
        if any(_is_const(v, constants) for v in score.inputs) or _rank(score.inputs[0], shapes) != 4:
            continue
        context = _only_user(softmax.outputs[0])
        if context is None or context.op_type != "MatMul" or context.inputs[0] is not softmax.outputs[0] or \
                _is_const(context.inputs[1], constants):
            continue
        members = [score, *members, context]
        for value in (score.inputs[0], context.inputs[1]):
            transpose = value.producer() if value is not None else None
            if transpose is not None and transpose.op_type == "Transpose" and _only_user(value) is not None:
                members.append(transpose)
        tail = _only_user(context.outputs[0])
        if tail is not None and tail.op_type == "Transpose":
            members.append(tail)
        members.sort(key=lambda n: order.get(id(n), 0))
        found[id(members[0])] = members
    return found
