"""What one kernel costs statically: FLOPs, bytes crossing its boundary, weights, shape features.

Bytes count only values that enter or leave the kernel (intermediates of a fused
kernel stay in registers or cache); a precision override rescales activations and
weights to the bytes the backend would move at that precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx_ir as ir

from edgeopt.ir.costs import node_flops
from edgeopt.targets.cost.kernels import (
    _CONV,
    _GEMM,
    _QDQ,
    _RECURRENT,
    Kernel,
    _consumers,
    _is_const,
    _numel,
)

_TRANSCENDENTAL = {"Sigmoid", "Tanh", "Exp", "Log", "Erf", "Gelu", "Softplus", "Mish", "Elu", "Selu", "Pow",
                   "Softmax", "LogSoftmax"}
_ACT_SIZE = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 4}  # int4 is weight-only: activations stay float
_WEIGHT_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _graph_precision(kernel: Kernel) -> str:
    ops = {n.op_type for n in kernel.nodes}
    integer = ops & {"DequantizeLinear", "QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                     "MatMulInteger"}
    if integer and (kernel.kind in ("conv", "depthwise", "gemm") or "QuantizeLinear" in ops or ops <= _QDQ):
        return "int8"
    if "MatMulNBits" in ops:
        return "int4"
    for value in kernel.nodes[-1].outputs:
        if value.dtype == ir.DataType.FLOAT16:
            return "fp16"
    return "fp32"


def measure_kernel(kernel: Kernel, shapes: Mapping[str, tuple[int, ...]], constants: set[str],
                   precision: Mapping[str, str], fp16_as_fp32: bool = False) -> None:
    """FLOPs, bytes crossing the kernel boundary, weights, and shape features."""
    inside = {id(v) for n in kernel.nodes for v in n.outputs}
    anchor = next((n for n in kernel.nodes if n.op_type not in _QDQ), kernel.nodes[0])
    kernel.name = anchor.name or kernel.name
    requested = precision.get(anchor.name or "") or next(
        (precision[n.name] for n in kernel.nodes if n.name in precision), None)
    kernel.precision = requested or _graph_precision(kernel)
    if fp16_as_fp32 and kernel.precision == "fp16":
        requested = kernel.precision = "fp32"  # priced as the fp32 kernel the backend runs instead
    override = requested is not None
    act = _ACT_SIZE[kernel.precision]
    kernel.flops = sum(node_flops(n, shapes) for n in kernel.nodes if n.op_type not in _QDQ) or sum(
        node_flops(n, shapes) for n in kernel.nodes)
    seen: set[int] = set()
    for node in kernel.nodes:
        for index, value in enumerate(node.inputs):
            if value is None or id(value) in seen or id(value) in inside:
                continue
            seen.add(id(value))
            if _is_const(value, constants):
                # A constant the backend folds when it loads the model (no const_value here: torch's
                # LSTM export reorders the gates with Slice/Concat of the initializers) is read like one.
                if value.const_value is not None:
                    elements, nbytes = _numel(tuple(value.const_value.shape.numpy())), value.const_value.nbytes
                else:
                    elements, nbytes = _numel(shapes.get(value.name or "")), _value_bytes(value, shapes, None)
                # Biases stay 32-bit (int32 in QLinearConv); only the weight tensor shrinks.
                weight = node.op_type in _CONV | _GEMM | _RECURRENT and index < 2 and elements > 1
                if override and weight and kernel.kind in ("conv", "depthwise", "gemm", "recurrent"):
                    kernel.weight_bytes += math.ceil(elements * _WEIGHT_BITS[kernel.precision] / 8)
                else:
                    kernel.weight_bytes += nbytes
                continue
            kernel.activation_bytes += _value_bytes(value, shapes, act if override else None)
    for node in kernel.nodes:
        for value in node.outputs:
            users = _consumers(value)
            if any(id(u) not in {id(n) for n in kernel.nodes} for u in users) or not users:
                kernel.activation_bytes += _value_bytes(value, shapes, act if override else None)
    if kernel.kind in ("free", "shape"):
        kernel.flops = 0
        kernel.activation_bytes = 0 if kernel.kind == "free" else kernel.activation_bytes
    kernel.attrs = _features(anchor, kernel, shapes)


def _value_bytes(value: ir.Value, shapes: Mapping[str, tuple[int, ...]], itemsize: int | None) -> int:
    elements = _numel(shapes.get(value.name or ""))
    if itemsize is None:
        itemsize = max(1, math.ceil(value.dtype.itemsize)) if value.dtype is not None else 4
    return elements * itemsize


def _features(anchor: ir.Node, kernel: Kernel, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Shape figures that decide a kernel's efficiency beyond its FLOPs and bytes."""
    out = shapes.get(anchor.outputs[0].name or "", ()) if anchor.outputs else ()
    first = anchor.inputs[0] if anchor.inputs else None
    inp = shapes.get(first.name or "", ()) if first is not None else ()
    attrs: dict[str, float] = {"out_elems": float(_numel(out) if out else 0),
                               "nodes": float(len(kernel.nodes))}
    # Exp-based activations (Sigmoid, Swish, GELU, ...) cost far more per element than their
    # FLOP count says; a conv with a Swish post-op is measurably slower than one with Relu.
    attrs["transcendental"] = float(sum(_numel(shapes.get(v.name or "")) for n in kernel.nodes
                                        if n.op_type in _TRANSCENDENTAL for v in n.outputs[:1]))
    if kernel.kind in ("conv", "depthwise"):
        kshape = anchor.attributes.get_ints("kernel_shape", None)
        weight = anchor.inputs[1] if len(anchor.inputs) > 1 else None
        if kshape is None and weight is not None and weight.shape is not None:
            kshape = [d for d in weight.shape[2:] if isinstance(d, int)]
        strides = anchor.attributes.get_ints("strides", [1])
        attrs.update(k=float(math.prod(kshape or [1])), stride=float(max(strides or [1])),
                     cin=float(inp[1] if len(inp) > 1 else 0), cout=float(out[1] if len(out) > 1 else 0),
                     hw=float(_numel(out[2:]) if len(out) > 2 else 1),
                     group=float(anchor.attributes.get_int("group", 1)))
    elif kernel.kind == "attention":
        # Score MatMul q[b, h, s, d] x kT[b, h, d, s_kv]: sequence lengths and head size.
        score = next(n for n in kernel.nodes if n.op_type == "MatMul")
        q = shapes.get(score.inputs[0].name or "", ()) if score.inputs[0] is not None else ()
        scores = shapes.get(score.outputs[0].name or "", ())
        if len(q) >= 2 and scores:
            attrs.update(m=float(q[-2]), k=float(q[-1]), n=float(scores[-1]), in_elems=float(_numel(q)))
    elif kernel.kind == "recurrent" and len(inp) == 3 and out:
        # X [seq, batch, input] -> Y [seq, directions, batch, hidden]: a GEMM chain over time steps.
        # Directions run one after the other and each step's hidden-state GEMV re-reads the
        # recurrent weights; GRU's 3 gates and LSTM's 4 differ in work per step.
        attrs.update(m=float(inp[0] * inp[1]), steps=float(inp[0]), k=float(inp[2]), n=float(out[-1]),
                     in_elems=float(_numel(inp)),
                     last=float(inp[-1]), gates=float(_GATES.get(anchor.op_type, 1)),
                     directions=float(out[1] if len(out) == 4 else 1))
    elif kernel.kind == "gemm" and out:
        a_dims = inp or (1,)
        reduce = a_dims[-1] if anchor.op_type != "Gemm" or not anchor.attributes.get_int("transA", 0) else a_dims[0]
        attrs.update(m=float(_numel(out[:-1]) if len(out) > 1 else 1), n=float(out[-1]), k=float(reduce))
    elif inp:
        attrs.update(in_elems=float(_numel(inp)), last=float(inp[-1]))
    return attrs
