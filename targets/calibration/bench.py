"""Kernel micro-benchmarks: single-kernel ONNX models built with onnx.helper.

Each family samples shapes from the ranges real edge models use (the nn-Meter recipe:
sample the configuration space of each kernel type, then sample more densely where the
predictor is worst) and builds a tiny model whose main kernel is the one measured.
``neighbor`` perturbs one parameter for adaptive sampling. Composition networks (small
random CNNs and MLP/attention stacks, never the zoo models) calibrate how kernel
times add up inside a whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MAX_FLOPS = 8e8  # keep one benchmark run in the tens of milliseconds on a small CPU
MAX_ELEMENTS = 6e6
_CH = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
_HW = (7, 14, 28, 56, 112)


@dataclass
class Spec:
    family: str
    params: dict[str, Any]
    precision: str = "fp32"
    label: str = field(default="")

    def describe(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}[{self.precision}]({inner})"


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

    def input(self, shape: tuple[int, ...], dtype: str = "float", high: int = 2) -> str:
        name = self.name("in")
        if dtype == "int64":
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
            self.feeds[name] = self.rng.integers(0, high, shape).astype(np.int64)
        else:
            self.inputs.append(helper.make_tensor_value_info(name, self.float_type, shape))
            self.feeds[name] = self.rng.standard_normal(shape).astype(self.np_float)
        return self.act(name) if dtype != "int64" else name

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
    return y


def _conv(b: _Builder, p: dict[str, Any]) -> list[str]:
    cin, cout, k, s, hw, groups = p["cin"], p["cout"], p["k"], p["stride"], p["hw"], p.get("groups", 1)
    x = b.input((1, cin, hw, hw))
    w = b.weight((cout, cin // groups, k, k))
    y = b.node("Conv", [x, w, b.const(np.zeros(cout, np.float32), "b")], kernel_shape=[k, k],
               strides=[s, s], pads=[k // 2] * 4, group=groups)
    out = (1, cout, (hw + s - 1) // s, (hw + s - 1) // s)
    epilogue = p.get("epilogue", "none")
    if b.precision == "int8" and epilogue in ("add_relu", "clip"):
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
    if p.get("epilogue") == "relu":
        y = b.node("Relu", [y])
    return [b.act(y, nonnegative=p.get("epilogue") == "relu")]


_UNARY = ("Relu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh", "Erf", "Clip")


def _elementwise(b: _Builder, p: dict[str, Any]) -> list[str]:
    shape = tuple(p["shape"])
    op = p["op"]
    x = b.input(shape)
    if op == "gelu":
        d = b.node("Div", [x, b.const(np.array(math.sqrt(2), np.float32))])
        e = b.node("Erf", [d])
        a = b.node("Add", [e, b.const(np.array(1.0, np.float32))])
        m = b.node("Mul", [x, a])
        y = b.node("Mul", [m, b.const(np.array(0.5, np.float32))])
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
    return [b.act(b.node(p["op"], [x], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))]


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
    if op == "Concat":
        return [b.act(b.node("Concat", [x, b.input((1, c, hw, hw))], axis=1))]
    if op == "Slice":
        starts, ends = b.const_int(np.array([0], np.int64)), b.const_int(np.array([c // 2], np.int64))
        return [b.act(b.node("Slice", [x, starts, ends, b.const_int(np.array([1], np.int64))]))]
    scales = b.const_int(np.array([1, 1, 2, 2], np.float32))  # Resize scales stay float32
    return [b.act(b.node("Resize", [x, "", scales], mode="nearest"))]


def _recurrent(b: _Builder, p: dict[str, Any]) -> list[str]:
    seq, inp, hidden, op = p["seq"], p["input"], p["hidden"], p["op"]
    gates = 4 if op == "LSTM" else 3
    directions = 2 if p.get("bidirectional") else 1
    x = b.input((seq, 1, inp))
    w = b.const(b.rng.standard_normal((directions, gates * hidden, inp)).astype(np.float32) * 0.1, "w")
    r = b.const(b.rng.standard_normal((directions, gates * hidden, hidden)).astype(np.float32) * 0.1, "r")
    y = b.node(op, [x, w, r], outputs=1, hidden_size=hidden,
               direction="bidirectional" if directions == 2 else "forward")
    return [y]


BUILDERS: dict[str, Callable[[_Builder, dict[str, Any]], list[str]]] = {
    "conv": _conv, "depthwise": _conv, "gemm": _gemm, "elementwise": _elementwise, "pooling": _pooling,
    "normalization": _normalization, "softmax": _softmax, "data": _data, "recurrent": _recurrent,
}


def build(spec: Spec, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    b = _Builder(spec.precision, seed)
    outputs = BUILDERS[spec.family](b, spec.params)
    return b.model(outputs), b.feeds


def _choice(rng: np.random.Generator, values: tuple) -> Any:
    return values[int(rng.integers(len(values)))]


def sample(family: str, rng: np.random.Generator, precision: str = "fp32") -> Spec:
    """One random configuration of ``family`` within the size caps."""
    for _ in range(50):
        p = _SAMPLERS[family](rng)
        if _flops(family, p) <= MAX_FLOPS and _elements(family, p) <= MAX_ELEMENTS:
            return Spec(family, p, precision)
    return Spec(family, p, precision)


def neighbor(spec: Spec, rng: np.random.Generator) -> Spec:
    """A configuration next to ``spec``: one parameter re-drawn (adaptive sampling)."""
    for _ in range(50):
        fresh = _SAMPLERS[spec.family](rng)
        key = _choice(rng, tuple(k for k in spec.params if k in fresh and k != "groups"))
        params = {**spec.params, key: fresh[key]}
        if spec.family == "depthwise":
            params["cin"] = params["cout"] = params["groups"] = params[key] if key in ("cin", "cout") else \
                params["cin"]
        if _flops(spec.family, params) <= MAX_FLOPS and _elements(spec.family, params) <= MAX_ELEMENTS:
            return Spec(spec.family, params, spec.precision)
    return sample(spec.family, rng, spec.precision)


def _conv_params(rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() < 0.12:  # stems: 3 input channels at full resolution
        return {"cin": 3, "cout": int(_choice(rng, (16, 24, 32, 64))), "k": int(_choice(rng, (3, 7))),
                "stride": 2, "hw": int(_choice(rng, (224, 320, 448, 640))), "epilogue": "relu"}
    k = int(_choice(rng, (1, 1, 3, 3, 3, 5)))
    return {"cin": int(_choice(rng, _CH)), "cout": int(_choice(rng, _CH)), "k": k,
            "stride": int(_choice(rng, (1, 1, 1, 2))), "hw": int(_choice(rng, (*_HW, 20, 40, 80, 160))),
            "epilogue": str(_choice(rng, ("none", "relu", "add_relu", "clip")))}


def _depthwise_params(rng: np.random.Generator) -> dict[str, Any]:
    c = int(_choice(rng, (16, 32, 64, 96, 144, 192, 240, 384, 480, 576, 672, 960)))
    return {"cin": c, "cout": c, "groups": c, "k": int(_choice(rng, (3, 3, 5))),
            "stride": int(_choice(rng, (1, 1, 2))), "hw": int(_choice(rng, (*_HW, 20, 40, 80))),
            "epilogue": str(_choice(rng, ("none", "relu", "clip")))}


def _gemm_params(rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() < 0.3:
        s = int(_choice(rng, (16, 32, 50, 64, 128, 197, 256)))
        d = int(_choice(rng, (32, 64)))
        transposed = rng.random() < 0.5
        return {"batched": True, "heads": int(_choice(rng, (3, 4, 8, 12))), "m": s, "k": d if not transposed else s,
                "n": s if not transposed else d}
    return {"m": int(_choice(rng, (1, 8, 16, 50, 64, 128, 197, 256, 512))),
            "k": int(_choice(rng, (64, 128, 192, 256, 384, 512, 768, 1024, 1280, 2048, 3072))),
            "n": int(_choice(rng, (10, 64, 128, 192, 256, 384, 512, 768, 1000, 1024, 3072))),
            "bias": bool(rng.random() < 0.8), "epilogue": str(_choice(rng, ("none", "relu")))}


def _shape4(rng: np.random.Generator) -> list[int]:
    if rng.random() < 0.3:
        return [1, int(_choice(rng, (16, 50, 64, 128, 197, 256))), int(_choice(rng, (128, 192, 256, 768, 1024)))]
    return [1, int(_choice(rng, _CH)), *([int(_choice(rng, (*_HW, 20, 40, 80, 160)))] * 2)]


def _elementwise_params(rng: np.random.Generator) -> dict[str, Any]:
    op = str(_choice(rng, ("Add", "Add", "Mul", "scale", "const", "gelu", *_UNARY, "Sigmoid")))
    shape = _shape4(rng)
    if op == "scale" and len(shape) != 4:
        shape = [1, 64, 28, 28]
    return {"op": op, "shape": shape}


def _pooling_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"op": str(_choice(rng, ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalAveragePool"))),
            "c": int(_choice(rng, (*_CH, 960, 1280))), "hw": int(_choice(rng, (*_HW, 20, 40, 80, 160))),
            "k": int(_choice(rng, (2, 3, 5))), "stride": int(_choice(rng, (1, 2)))}


def _normalization_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"op": str(_choice(rng, ("LayerNormalization", "LayerNormalization", "ReduceMean"))),
            "s": int(_choice(rng, (1, 16, 50, 64, 128, 197, 256, 512))),
            "d": int(_choice(rng, (64, 128, 192, 256, 384, 512, 768, 1024)))}


def _softmax_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"heads": int(_choice(rng, (1, 3, 4, 8, 12))), "s": int(_choice(rng, (16, 32, 50, 64, 128, 197, 256)))}


def _data_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"op": str(_choice(rng, ("Transpose", "Concat", "Slice", "Resize", "Gather"))),
            "c": int(_choice(rng, (16, 32, 64, 128, 192, 256))), "hw": int(_choice(rng, (7, 14, 20, 28, 40, 56, 80))),
            "vocab": int(_choice(rng, (1000, 8000, 30522)))}


def _recurrent_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"op": str(_choice(rng, ("LSTM", "GRU"))), "seq": int(_choice(rng, (10, 25, 50, 100, 200))),
            "input": int(_choice(rng, (40, 80, 128, 256, 512))), "hidden": int(_choice(rng, (64, 128, 256, 384))),
            "bidirectional": bool(rng.random() < 0.4)}


_SAMPLERS: dict[str, Callable[[np.random.Generator], dict[str, Any]]] = {
    "conv": _conv_params, "depthwise": _depthwise_params, "gemm": _gemm_params,
    "elementwise": _elementwise_params, "pooling": _pooling_params, "normalization": _normalization_params,
    "softmax": _softmax_params, "data": _data_params, "recurrent": _recurrent_params,
}
FAMILIES = tuple(_SAMPLERS)


def _flops(family: str, p: dict[str, Any]) -> float:
    if family in ("conv", "depthwise"):
        out = (p["hw"] + p["stride"] - 1) // p["stride"]
        return 2.0 * p["cout"] * out * out * (p["cin"] // p.get("groups", 1)) * p["k"] ** 2
    if family == "gemm":
        return 2.0 * p["m"] * p["k"] * p["n"] * p.get("heads", 1)
    if family == "recurrent":
        return 2.0 * p["seq"] * 4 * p["hidden"] * (p["input"] + p["hidden"])
    return 0.0


def _elements(family: str, p: dict[str, Any]) -> float:
    if family in ("conv", "depthwise"):
        return float(max(p["cin"], p["cout"]) * p["hw"] ** 2)
    if family == "elementwise":
        return float(math.prod(p["shape"]))
    if family == "pooling":
        return float(p["c"] * p["hw"] ** 2)
    if family == "softmax":
        return float(p["heads"] * p["s"] ** 2)
    if family == "data":
        return float(p["c"] * p["hw"] ** 2)
    return 0.0
