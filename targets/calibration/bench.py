"""Kernel micro-benchmarks: single-kernel ONNX models built with onnx.helper.

Each family's configurations are drawn in sampling.py (the nn-Meter recipe: sample the
configuration space of each kernel type, then more densely where the predictor is worst,
``neighbor``); ``build`` turns one into a tiny model whose main kernel is the one measured.
Composition networks (small
random CNNs and MLP/attention stacks, never the zoo models) calibrate how kernel
times add up inside a whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.targets.calibration.sampling import _UNARY, FAMILIES, MAX_ELEMENTS, MAX_FLOPS, Spec, neighbor, sample

__all__ = ["FAMILIES", "MAX_ELEMENTS", "MAX_FLOPS", "Spec", "build", "neighbor", "sample"]

OPSET = 17


class _Builder:
    """Accumulates nodes/initializers; `weight` quantizes to a QDQ pair in int8 mode."""

    def __init__(self, precision: str, seed: int) -> None:
        self.precision = precision
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.count = 0
        self.float_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        self.np_float = np.float16 if precision == "fp16" else np.float32

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, shape: tuple[int, ...], dtype: str = "float", high: int = 2, nonnegative: bool = False) -> str:
        """A graph input; ``nonnegative`` for a post-activation tensor (int8: zero point 0)."""
        name = self.name("in")
        if dtype == "int64":
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
            self.feeds[name] = self.rng.integers(0, high, shape).astype(np.int64)
            return name
        self.inputs.append(helper.make_tensor_value_info(name, self.float_type, shape))
        values = self.rng.standard_normal(shape)
        self.feeds[name] = (np.abs(values) if nonnegative else values).astype(self.np_float)
        return self.act(name, nonnegative=nonnegative)

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        if array.dtype.kind == "f":
            array = array.astype(self.np_float)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> list[str] | str:
        outs = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs[0] if outputs == 1 else outs

    def act(self, value: str, nonnegative: bool = False) -> str:
        """In int8 mode an activation is quantized (Q -> DQ), as QDQ models carry it.

        After a Relu/Clip the range starts at 0 and so does the zero point, as a calibrated
        quantizer sets it: ONNX Runtime then drops the activation into the Q and fuses
        DQ -> Conv -> Q into QLinearConv. With a mid-range zero point the Relu must stay, the
        Conv is not followed by a Q and runs in float32 on weights dequantized every run,
        which is not the int8 kernel real QDQ models get.
        """
        if self.precision != "int8":
            return value
        zero_point = 0 if nonnegative else 128
        scale, zero = self.const(np.array(0.05, np.float32), "s"), self.const_int(np.array(zero_point, np.uint8))
        q = self.node("QuantizeLinear", [value, scale, zero])
        return self.node("DequantizeLinear", [q, scale, zero])

    def const_int(self, array: np.ndarray) -> str:
        name = self.name("z")
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, shape: tuple[int, ...], axis: int = 0) -> str:
        w = (self.rng.standard_normal(shape) * (1.0 / math.sqrt(max(1, math.prod(shape[1:]))))).astype(np.float32)
        if self.precision != "int8":
            return self.const(w, "w")
        channels = shape[axis]
        # Symmetric per-channel int8 weights, as onnxruntime.quantization writes them.
        moved = np.moveaxis(w, axis, 0).reshape(channels, -1)
        scale = np.maximum(np.abs(moved).max(1), 1e-8) / 127.0
        shaped = scale.reshape([channels if i == axis else 1 for i in range(w.ndim)])
        q = self.const_int(np.clip(np.round(w / shaped), -127, 127).astype(np.int8))
        s = self.const(scale.astype(np.float32), "s")
        z = self.const_int(np.zeros(channels, np.int8))
        return self.node("DequantizeLinear", [q, s, z], axis=axis)

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, self.float_type, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "bench", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeopt")
        model.ir_version = 8
        return model


def _epilogue(b: _Builder, y: str, epilogue: str, shape: tuple[int, ...]) -> str:
    if epilogue in ("add", "add_relu"):
        y = b.node("Add", [y, b.input(shape)])
    if epilogue in ("relu", "add_relu"):
        y = b.node("Relu", [y])
    elif epilogue == "clip":
        y = b.node("Clip", [y, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    elif epilogue == "sigmoid":  # an SE gate's last conv
        y = b.node("Sigmoid", [y])
    elif epilogue == "hardswish":
        y = b.node("HardSwish", [y])
    elif epilogue == "swish":  # SiLU as torch exports it: x * Sigmoid(x)
        y = b.node("Mul", [y, b.node("Sigmoid", [y])])
    elif epilogue == "gelu":
        y = _gelu(b, y)
    return y


def _gelu(b: _Builder, x: str) -> str:
    """GELU as torch exports it (erf form)."""
    d = b.node("Div", [x, b.const(np.array(math.sqrt(2), np.float32))])
    a = b.node("Add", [b.node("Erf", [d]), b.const(np.array(1.0, np.float32))])
    return b.node("Mul", [b.node("Mul", [x, a]), b.const(np.array(0.5, np.float32))])


def _conv(b: _Builder, p: dict[str, Any]) -> list[str]:
    cin, cout, k, s, hw, groups = p["cin"], p["cout"], p["k"], p["stride"], p["hw"], p.get("groups", 1)
    # A CNN's convs mostly read a Relu/Clip output: in int8 its zero point is 0. OpenVINO's AMX
    # conv ran 64x56x56 3x3 at 0.19 ms with a mid-range input zero point, 0.13 ms with 0.
    x = b.input((1, cin, hw, hw), nonnegative=True)
    w = b.weight((cout, cin // groups, k, k))
    y = b.node("Conv", [x, w, b.const(np.zeros(cout, np.float32), "b")], kernel_shape=[k, k],
               strides=[s, s], pads=[k // 2] * 4, group=groups)
    out = (1, cout, (hw + s - 1) // s, (hw + s - 1) // s)
    epilogue = p.get("epilogue", "none")
    if b.precision == "int8" and epilogue not in ("none", "relu"):
        # Quantizers leave only Relu inside QLinearConv (a residual Add becomes its own QLinearAdd).
        epilogue = "relu"
    return [b.act(_epilogue(b, y, epilogue, out), nonnegative=epilogue in ("relu", "add_relu", "clip"))]


def _gemm(b: _Builder, p: dict[str, Any]) -> list[str]:
    m, k, n = p["m"], p["k"], p["n"]
    if p.get("batched"):
        heads = p["heads"]
        a, c = b.input((1, heads, m, k)), b.input((1, heads, k, n))
        return [b.act(b.node("MatMul", [a, c]))]
    x = b.input((1, m, k))
    y = b.node("MatMul", [x, b.weight((k, n), axis=1)])
    if b.precision == "int8":
        return [b.act(y)]  # MatMul -> Q is what becomes QLinearMatMul; quantizers put the bias Add after it
    if p.get("bias", True):
        y = b.node("Add", [y, b.const(np.zeros(n, np.float32), "b")])
    y = _epilogue(b, y, str(p.get("epilogue", "none")), ())
    return [b.act(y, nonnegative=p.get("epilogue") == "relu")]


def _elementwise(b: _Builder, p: dict[str, Any]) -> list[str]:
    shape = tuple(p["shape"])
    op = p["op"]
    x = b.input(shape)
    if op == "gelu":
        y = _gelu(b, x)
    elif op == "Clip":
        y = b.node("Clip", [x, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    elif op in _UNARY:
        y = b.node(op, [x])
    elif op == "scale":  # squeeze-excitation: [1,C,H,W] * [1,C,1,1]
        y = b.node("Mul", [x, b.input((shape[0], shape[1], 1, 1))])
    elif op == "const":
        y = b.node("Div", [x, b.const(np.array(3.0, np.float32))])
    else:
        y = b.node(op, [x, b.input(shape)])
    return [b.act(y)]


def _pooling(b: _Builder, p: dict[str, Any]) -> list[str]:
    x = b.input((1, p["c"], p["hw"], p["hw"]))
    if p["op"] == "GlobalAveragePool":
        return [b.act(b.node("GlobalAveragePool", [x]))]
    k, s = p["k"], p["stride"]
    nonnegative = False
    if b.precision == "int8" and p["op"] == "MaxPool":
        # In a QDQ CNN a MaxPool follows a conv: ONNX Runtime runs the conv as an NHWC QLinearConv
        # and the pool as NhwcMaxPool on its uint8 output (0.18 ms for 256x28x28, k=5). Alone it
        # ran ORT's generic NCHW uint8 MaxPool instead, 50x slower (10 ms), and the calibration
        # predicted an int8 ResNet-18's two pools at 2.7 ms against 0.09 ms profiled. The conv is
        # context, and a depthwise 1x1 one to keep it cheap; calibrate.py times the pool alone.
        c = p["c"]
        conv = b.node("Conv", [x, b.weight((c, 1, 1, 1)), b.const(np.zeros(c, np.float32), "b")], group=c)
        x, nonnegative = b.act(b.node("Relu", [conv]), nonnegative=True), True
    y = b.node(p["op"], [x], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
    return [b.act(y, nonnegative=nonnegative)]


def _normalization(b: _Builder, p: dict[str, Any]) -> list[str]:
    s, d = p["s"], p["d"]
    x = b.input((1, s, d))
    if p["op"] == "LayerNormalization":
        y = b.node("LayerNormalization", [x, b.const(np.ones(d, np.float32)), b.const(np.zeros(d, np.float32))],
                   axis=-1, epsilon=1e-5)
    else:
        y = b.node("ReduceMean", [x], axes=[-1], keepdims=1)
    return [b.act(y)]


def _softmax(b: _Builder, p: dict[str, Any]) -> list[str]:
    x = b.input((1, p["heads"], p["s"], p["s"]))
    return [b.act(b.node("Softmax", [x], axis=-1))]


def _data(b: _Builder, p: dict[str, Any]) -> list[str]:
    op, c, hw = p["op"], p["c"], p["hw"]
    if op == "Transpose":
        x = b.input((1, hw, 4, c))
        return [b.act(b.node("Transpose", [x], perm=[0, 2, 1, 3]))]
    if op == "Gather":
        table = b.const((b.rng.standard_normal((p["vocab"], c)) * 0.1).astype(np.float32), "emb")
        ids = b.input((1, hw), "int64", p["vocab"])
        return [b.act(b.node("Gather", [table, ids]))]
    x = b.input((1, c, hw, hw))
    if op in ("Concat", "Split", "Slice"):
        # In a CNN these join and part conv outputs (C2f / CSP blocks). Fed from graph inputs,
        # OpenVINO wrote a Concat's inputs straight into its output (0 us profiled) while
        # YOLOv8n's Concats of conv outputs ran 0.02-0.6 ms; a cheap 1x1 depthwise conv per input
        # gives the layouts a model gives them, and calibrate.py times the data op alone inside.
        def produced(value: str, channels: int = c) -> str:
            w = b.weight((channels, 1, 1, 1))
            conv = b.node("Conv", [value, w, b.const(np.zeros(channels, np.float32), "b")], group=channels)
            return b.act(b.node("Relu", [conv]), nonnegative=True)

        x = produced(x)
        if op == "Concat":
            parts = [x, *(produced(b.input((1, c, hw, hw))) for _ in range(int(p.get("parts", 2)) - 1))]
            return [b.act(b.node("Concat", parts, axis=1))]
        # The parts go on to convs too: a Split whose halves are graph outputs ran 17x slower on
        # OpenVINO (1.8 ms for 64x80x80) than one feeding convs.
        if op == "Split":
            halves = b.const_int(np.array([c // 2, c // 2], np.int64))
            return [produced(h, c // 2) for h in b.node("Split", [x, halves], outputs=2, axis=1)]
        starts, ends = b.const_int(np.array([0], np.int64)), b.const_int(np.array([c // 2], np.int64))
        return [produced(b.node("Slice", [x, starts, ends, b.const_int(np.array([1], np.int64))]), c // 2)]
    scales = b.const_int(np.array([1, 1, 2, 2], np.float32))  # Resize scales stay float32
    return [b.act(b.node("Resize", [x, "", scales], mode="nearest"))]


def _recurrent(b: _Builder, p: dict[str, Any]) -> list[str]:
    """An LSTM / GRU layer as torch exports it: bias, zero initial states, GRU linear_before_reset."""
    seq, inp, hidden, op = p["seq"], p["input"], p["hidden"], p["op"]
    gates = 4 if op == "LSTM" else 3
    directions = 2 if p.get("bidirectional") else 1
    x = b.input((seq, 1, inp))
    w = b.const(b.rng.standard_normal((directions, gates * hidden, inp)).astype(np.float32) * 0.1, "w")
    r = b.const(b.rng.standard_normal((directions, gates * hidden, hidden)).astype(np.float32) * 0.1, "r")
    inputs = [x, w, r]
    attrs: dict[str, Any] = {}
    if p.get("torch", True):
        bias = b.const(b.rng.standard_normal((directions, 2 * gates * hidden)).astype(np.float32) * 0.1, "b")
        zeros = b.const(np.zeros((directions, 1, hidden), np.float32), "h0")
        inputs += [bias, "", zeros] + ([zeros] if op == "LSTM" else [])
        if op == "GRU":
            attrs["linear_before_reset"] = 1
    y = b.node(op, inputs, outputs=1, hidden_size=hidden,
               direction="bidirectional" if directions == 2 else "forward", **attrs)
    return [y]


def _attention(b: _Builder, p: dict[str, Any]) -> list[str]:
    """Scaled dot-product attention on projected q, k, v: what fusing backends run as one MHA kernel.

    q and v arrive as [1, s, heads, d] (a projection's output reshaped) and are transposed
    inside the block; k arrives already transposed to [1, heads, d, s] (its Transpose is a
    kernel of its own on OpenVINO); an optional additive mask as BERT-style encoders have it.
    """
    s, heads, d = p["s"], p["heads"], p["d"]
    q = b.node("Transpose", [b.input((1, s, heads, d))], perm=[0, 2, 1, 3])
    v = b.node("Transpose", [b.input((1, s, heads, d))], perm=[0, 2, 1, 3])
    scores = b.node("Div", [b.node("MatMul", [q, b.input((1, heads, d, s))]),
                            b.const(np.array(math.sqrt(d), np.float32))])
    if p.get("mask"):
        scores = b.node("Add", [scores, b.input((1, 1, 1, s))])
    context = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    return [b.node("Transpose", [context], perm=[0, 2, 1, 3])]


BUILDERS: dict[str, Callable[[_Builder, dict[str, Any]], list[str]]] = {
    "conv": _conv, "depthwise": _conv, "gemm": _gemm, "elementwise": _elementwise, "pooling": _pooling,
    "normalization": _normalization, "softmax": _softmax, "data": _data, "recurrent": _recurrent,
    "attention": _attention,
}


def build(spec: Spec, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    b = _Builder(spec.precision, seed)
    outputs = BUILDERS[spec.family](b, spec.params)
    return b.model(outputs), b.feeds
