"""Composition networks: small random CNNs, MLP/attention stacks and recurrent stacks (onnx.helper).

They are not zoo models; they only teach the calibration how isolated kernel times add
up inside one session (run overhead, dispatch per kernel, layouts kept between convs).
The CNNs mix plain, residual, inverted-residual and CSP stages; some are quantized to int8
QDQ (``quantized_networks``) for targets that run int8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edgeopt.targets.calibration.bench import _Builder


def _conv(b: _Builder, x: str, cin: int, cout: int, k: int, stride: int, groups: int = 1,
          act: str | None = "Relu") -> str:
    w = b.weight((cout, cin // groups, k, k))
    y = b.node("Conv", [x, w, b.const(np.zeros(cout, np.float32), "b")], kernel_shape=[k, k],
               strides=[stride, stride], pads=[k // 2] * 4, group=groups)
    scale = b.const(np.ones(cout, np.float32)), b.const(np.zeros(cout, np.float32))
    y = b.node("BatchNormalization", [y, scale[0], scale[1], b.const(np.zeros(cout, np.float32)),
                                      b.const(np.ones(cout, np.float32))])
    if act == "Relu":
        y = b.node("Relu", [y])
    elif act == "Clip":
        y = b.node("Clip", [y, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    elif act == "SiLU":
        y = b.node("Mul", [y, b.node("Sigmoid", [y])])
    elif act == "HardSwish":
        y = b.node("HardSwish", [y])
    return y


def _squeeze_excite(b: _Builder, x: str, c: int, gate: str, act: str = "Relu") -> str:
    """GlobalAveragePool -> 1x1 conv -> Relu | SiLU -> 1x1 conv -> Sigmoid | HardSigmoid -> x * gate."""
    squeezed = max(8, c // 4)
    p = b.node("GlobalAveragePool", [x])
    z = b.node("Conv", [p, b.weight((squeezed, c, 1, 1)), b.const(np.zeros(squeezed, np.float32))])
    z = b.node("Mul", [z, b.node("Sigmoid", [z])]) if act == "SiLU" else b.node("Relu", [z])
    z = b.node("Conv", [z, b.weight((c, squeezed, 1, 1)), b.const(np.zeros(c, np.float32))])
    z = b.node(gate, [z])
    return b.node("Mul", [x, z])


def _inverted(b: _Builder, rng: np.random.Generator, x: str, cin: int, cout: int, stride: int) -> str:
    """An inverted residual's body: 1x1 expand, k x k depthwise (maybe strided), optional SE, 1x1 project.

    As MobileNetV2 (Clip), MobileNetV3 (HardSwish) and EfficientNet (SiLU) build them: 3x and 6x
    expansions, 3x3 and 5x5 depthwise kernels, the same activation on the expand and the
    depthwise conv, and a gate whose reduce conv takes ReLU or SiLU.
    """
    act = str(rng.choice(["Clip", "HardSwish", "SiLU"]))
    e = min(cin * int(rng.choice([3, 4, 6])), 1536)
    z = _conv(b, x, cin, e, 1, 1, act=act)
    z = _conv(b, z, e, e, int(rng.choice([3, 5])), stride, groups=e, act=act)
    if rng.random() < 0.5:
        z = _squeeze_excite(b, z, e, "Sigmoid" if act == "SiLU" else "HardSigmoid",
                            "SiLU" if act == "SiLU" else "Relu")
    return _conv(b, z, e, cout, 1, 1, act=None)


def _inverted_relu6(b: _Builder, rng: np.random.Generator, x: str, c: int) -> str:
    """A MobileNetV2-style block body: 1x1 expand with ReLU6, 3x3 depthwise, optional SE, 1x1 project."""
    e = min(c * int(rng.choice([2, 4, 6])), 1536)
    z = _conv(b, x, c, e, 1, 1, act="Clip")
    z = _conv(b, z, e, e, 3, 1, groups=e, act=str(rng.choice(["Clip", "SiLU", "HardSwish"])))
    if rng.random() < 0.5:
        z = _squeeze_excite(b, z, e, str(rng.choice(["Sigmoid", "HardSigmoid"])))
    return _conv(b, z, e, c, 1, 1, act=None)


def _c2f(b: _Builder, rng: np.random.Generator, x: str, c: int) -> str:
    """A CSP block as YOLOv5/v8 build it: 1x1 conv, its output halved, bottlenecks on one half, Concat, 1x1 conv.

    Every conv takes SiLU. The halves come as a Split or as two Slices (torch exports ``chunk``
    as the latter). These give the calibration SiLU 3x3 convs and Concats of conv outputs in
    context, which no other network here has.
    """
    half = c // 2
    z = _conv(b, x, c, 2 * half, 1, 1, act="SiLU")
    if rng.random() < 0.5:
        parts = list(b.node("Split", [z, b.const_int(np.array([half, half], np.int64))], outputs=2, axis=1))
    else:
        axis = b.const_int(np.array([1], np.int64))
        parts = [b.node("Slice", [z, b.const_int(np.array([lo], np.int64)),
                                  b.const_int(np.array([lo + half], np.int64)), axis]) for lo in (0, half)]
    blocks = int(rng.integers(1, 3))
    for _ in range(blocks):
        h = _conv(b, _conv(b, parts[-1], half, half, 3, 1, act="SiLU"), half, half, 3, 1, act="SiLU")
        parts.append(b.node("Add", [parts[-1], h]) if rng.random() < 0.5 else h)
    return _conv(b, b.node("Concat", parts, axis=1), (2 + blocks) * half, c, 1, 1, act="SiLU")


def cnn(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    b = _Builder("fp32", int(rng.integers(1 << 30)))
    res = int(rng.choice([128, 160, 224]))
    # Widths that fill whole vectors and one that does not (40: MobileNetV3, EfficientNet).
    width = int(rng.choice([16, 24, 32, 40, 48, 64]))
    # Half the networks build inverted blocks as MobileNetV3 / EfficientNet do (_inverted), half
    # as MobileNetV2 does behind full-conv downsampling (_inverted_relu6): calibrated on either
    # kind alone, one backend's predictions drifted (ONNX Runtime's up 5-20 % with the first,
    # OpenVINO's MobileNetV3 and EfficientNet down 20-25 % with the second).
    modern = bool(rng.random() < 0.5)
    x = b.input((1, 3, res, res))
    y = _conv(b, x, 3, width, 3, 2)
    c = width
    for stage in range(int(rng.integers(3, 6))):
        cout = min(c * 2, 512) if stage else c  # ResNet/MobileNet-sized, not larger
        style = str(rng.choice(["plain", "residual", "inverted", "csp"]))
        if style == "inverted" and stage and modern:
            # MobileNetV2/V3 and EfficientNet downsample in a block's depthwise conv, not a full conv.
            y, c = _inverted(b, rng, y, c, cout, stride=2), cout
        else:
            y = _conv(b, y, c, cout, 3, 2 if stage else 1, act="SiLU" if style == "csp" else "Relu")
            c = cout
        for _ in range(int(rng.integers(1, 4))):
            if style == "csp":
                y = _c2f(b, rng, y, c)
            elif style == "residual":
                z = _conv(b, y, c, c, 3, 1)
                z = _conv(b, z, c, c, 3, 1, act=None)
                y = b.node("Relu", [b.node("Add", [y, z])])
            elif style == "inverted" and modern:
                y = b.node("Add", [y, _inverted(b, rng, y, c, c, stride=1)])
            elif style == "inverted":
                y = b.node("Add", [y, _inverted_relu6(b, rng, y, c)])
            else:
                y = _conv(b, y, c, c, int(rng.choice([1, 3])), 1)
    if rng.random() < 0.5:
        y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    # Heads as edge classifiers end: a wide 1x1 conv before the pool (MobileNetV2, EfficientNet) or
    # a pooled two-layer head (MobileNetV3). Their batch-1 GEMVs stream megabytes of weights for
    # few FLOPs, which the composition's vector-stream term is fitted on.
    head = str(rng.choice(["plain", "conv", "mlp"]))
    if head == "conv":
        wide = int(rng.choice([1024, 1280]))
        y, c = _conv(b, y, c, wide, 1, 1, act=str(rng.choice(["Clip", "SiLU"]))), wide
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y])
    if head == "mlp":
        wide = int(rng.choice([1024, 1280]))
        y = b.node("HardSwish", [b.node("Gemm", [y, b.const(rng.standard_normal((wide, c)).astype(np.float32) * 0.05),
                                                 b.const(np.zeros(wide, np.float32))], transB=1)])
        c = wide
    classes = int(rng.choice([100, 1000]))
    y = b.node("Gemm", [y, b.const(rng.standard_normal((classes, c)).astype(np.float32) * 0.05),
                        b.const(np.zeros(classes, np.float32))], transB=1)
    return b.model([y]), b.feeds


def mlp(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    b = _Builder("fp32", int(rng.integers(1 << 30)))
    s = int(rng.choice([16, 64, 128, 197]))
    d = int(rng.choice([128, 192, 256, 384, 512]))
    heads = d // 64
    x = b.input((1, s, d))
    for _ in range(int(rng.integers(1, 4))):
        ln = b.node("LayerNormalization", [x, b.const(np.ones(d, np.float32)), b.const(np.zeros(d, np.float32))],
                    axis=-1)
        qkv = [b.node("Add", [b.node("MatMul", [ln, b.weight((d, d), axis=1)]), b.const(np.zeros(d, np.float32))])
               for _ in range(3)]
        shape = b.const_int(np.array([1, s, heads, 64], np.int64))
        q, k, v = (b.node("Transpose", [b.node("Reshape", [t, shape])], perm=[0, 2, 1, 3]) for t in qkv)
        kt = b.node("Transpose", [k], perm=[0, 1, 3, 2])
        att = b.node("Softmax", [b.node("Div", [b.node("MatMul", [q, kt]), b.const(np.array(8.0, np.float32))])],
                     axis=-1)
        o = b.node("Transpose", [b.node("MatMul", [att, v])], perm=[0, 2, 1, 3])
        o = b.node("Reshape", [o, b.const_int(np.array([1, s, d], np.int64))])
        x = b.node("Add", [x, b.node("MatMul", [o, b.weight((d, d), axis=1)])])
        h = b.node("Add", [b.node("MatMul", [x, b.weight((d, 4 * d), axis=1)]), b.const(np.zeros(4 * d, np.float32))])
        g = b.node("Mul", [b.node("Mul", [h, b.node("Add", [b.node("Erf", [b.node(
            "Div", [h, b.const(np.array(math.sqrt(2), np.float32))])]), b.const(np.array(1.0, np.float32))])]),
            b.const(np.array(0.5, np.float32))])
        x = b.node("Add", [x, b.node("MatMul", [g, b.weight((4 * d, d), axis=1)])])
    return b.model([x]), b.feeds


def rnn(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Stacked LSTM / GRU layers over frames (speech, OCR heads) and a per-frame classifier."""
    b = _Builder("fp32", int(rng.integers(1 << 30)))
    seq, width = int(rng.choice([25, 50, 100, 200])), int(rng.choice([40, 80, 128]))
    x = b.input((seq, 1, width))
    for _ in range(int(rng.integers(1, 4))):
        op, hidden = str(rng.choice(["LSTM", "GRU"])), int(rng.choice([64, 128, 256, 384]))
        gates, directions = (4 if op == "LSTM" else 3), (2 if rng.random() < 0.5 else 1)
        w = b.const(rng.standard_normal((directions, gates * hidden, width)).astype(np.float32) * 0.1, "w")
        r = b.const(rng.standard_normal((directions, gates * hidden, hidden)).astype(np.float32) * 0.1, "r")
        bias = b.const(rng.standard_normal((directions, 2 * gates * hidden)).astype(np.float32) * 0.1, "b")
        zeros = b.const(np.zeros((directions, 1, hidden), np.float32), "h0")
        attrs = {"linear_before_reset": 1} if op == "GRU" else {}
        y = b.node(op, [x, w, r, bias, "", zeros] + ([zeros] if op == "LSTM" else []), hidden_size=hidden,
                   direction="bidirectional" if directions == 2 else "forward", **attrs)
        # Y [seq, directions, 1, hidden] -> [seq, 1, directions * hidden], as torch exports it
        y = b.node("Transpose", [y], perm=[0, 2, 1, 3])
        x, width = b.node("Reshape", [y, b.const_int(np.array([seq, 1, directions * hidden], np.int64))]), \
            directions * hidden
    y = b.node("MatMul", [x, b.weight((width, 32), axis=1)])
    return b.model([y]), b.feeds


def networks(count: int, seed: int = 0) -> list[tuple[str, onnx.ModelProto, dict[str, np.ndarray]]]:
    out = []
    for i in range(count):
        # Two CNNs to one transformer stack; every tenth network recurrent. Each network draws
        # from its own stream, so a change to one generator leaves the other networks as they were.
        rng = np.random.default_rng([seed + 7, i])
        kind = "rnn" if i % 10 == 9 else ("cnn" if i % 3 != 2 else "mlp")
        model, feeds = {"cnn": cnn, "mlp": mlp, "rnn": rnn}[kind](rng)
        out.append((f"{kind}-{i}", model, feeds))
    return out


def quantize_qdq(source: Path, out: Path, feeds: dict[str, np.ndarray], rng: np.random.Generator,
                 samples: int = 2) -> None:
    """Quantize ``source`` to a static QDQ model at ``out``, as users quantize for ONNX Runtime / OpenVINO.

    quant_pre_process first (BatchNormalization folded into the convs), then quantize_static with
    per-channel int8 weights and uint8 activations, calibrated on ``samples`` random inputs
    shaped as ``feeds``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in feeds.items()}
                               for _ in range(samples)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def quantized_networks(count: int, seed: int = 0, progress: Callable[[int, int], None] | None = None
                       ) -> list[tuple[str, onnx.ModelProto, dict[str, np.ndarray]]]:
    """CNNs of ``cnn`` quantized to int8 QDQ (``quantize_qdq``).

    Lone int8 kernels put ONNX Runtime's int8 ResNet-18 13-24 % over its measured time: its
    QLinearConvs run at 44 GOP/s in the model, 36-38 alone. Networks quantized as users quantize
    theirs give the int8 kernels their in-model samples. Their own stream (``seed + 13``), so the
    float networks stay as they were.
    """
    import tempfile

    out = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-int8-") as folder:
        for i in range(count):
            rng = np.random.default_rng([seed + 13, i])
            model, feeds = cnn(rng)
            source, quantized = Path(folder) / f"{i}.onnx", Path(folder) / f"{i}-int8.onnx"
            onnx.save(model, str(source))
            quantize_qdq(source, quantized, feeds, rng)
            out.append((f"cnn-int8-{i}", onnx.load(str(quantized)), feeds))
            if progress is not None:
                progress(i + 1, count)
    return out
