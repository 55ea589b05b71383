"""Sampling kernel configurations for the micro-benchmarks (bench.py builds them).

Each family draws shapes from the ranges real edge models use (nn-Meter: sample the
configuration space of each kernel type, then densely next to the configurations the
predictor gets most wrong, which ``neighbor`` supplies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_FLOPS = 8e8  # keep one benchmark run in the tens of milliseconds on a small CPU
MAX_ELEMENTS = 6e6
_CH = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
_HW = (7, 14, 28, 56, 112)
_UNARY = ("Relu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh", "Erf", "Clip")


@dataclass
class Spec:
    family: str
    params: dict[str, Any]
    precision: str = "fp32"
    label: str = field(default="")

    def describe(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}[{self.precision}]({inner})"


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
    draw = rng.random()
    if draw < 0.12:  # stems: 3 input channels at full resolution
        return {"cin": 3, "cout": int(_choice(rng, (16, 24, 32, 64))), "k": int(_choice(rng, (3, 7))),
                "stride": 2, "hw": int(_choice(rng, (224, 320, 448, 640))), "epilogue": "relu"}
    if draw < 0.2:  # squeeze-excitation gates: 1x1 convs on a pooled [1, C, 1, 1] vector
        c = int(_choice(rng, (16, 32, 64, 96, 144, 240, 480, 576, 672, 960, 1152)))
        squeezed = max(8, c // int(_choice(rng, (4, 24))))
        cin, cout = (c, squeezed) if rng.random() < 0.5 else (squeezed, c)
        return {"cin": cin, "cout": cout, "k": 1, "stride": 1, "hw": 1,
                "epilogue": str(_choice(rng, ("relu", "swish", "sigmoid", "none")))}
    k = int(_choice(rng, (1, 1, 3, 3, 3, 5)))
    return {"cin": int(_choice(rng, _CH)), "cout": int(_choice(rng, _CH)), "k": k,
            "stride": int(_choice(rng, (1, 1, 1, 2))), "hw": int(_choice(rng, (*_HW, 20, 40, 80, 160))),
            "epilogue": str(_choice(rng, ("none", "relu", "add_relu", "clip", "swish", "hardswish")))}


def _depthwise_params(rng: np.random.Generator) -> dict[str, Any]:
    c = int(_choice(rng, (16, 32, 64, 96, 144, 192, 240, 384, 480, 576, 672, 960)))
    return {"cin": c, "cout": c, "groups": c, "k": int(_choice(rng, (3, 3, 5))),
            "stride": int(_choice(rng, (1, 1, 2))), "hw": int(_choice(rng, (*_HW, 20, 40, 80))),
            "epilogue": str(_choice(rng, ("none", "relu", "clip", "swish", "hardswish")))}


def _gemm_params(rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() < 0.3:
        s = int(_choice(rng, (16, 32, 50, 64, 128, 197, 256)))
        d = int(_choice(rng, (32, 64)))
        transposed = rng.random() < 0.5
        return {"batched": True, "heads": int(_choice(rng, (3, 4, 8, 12))), "m": s, "k": d if not transposed else s,
                "n": s if not transposed else d}
    return {"m": int(_choice(rng, (1, 8, 16, 50, 64, 128, 197, 256, 512))),
            # Widths of 4x d (transformer feed-forward layers) as both k and n: without n=2048 the
            # up-projection of a d=512 block was predicted 25 % faster than it ran.
            "k": int(_choice(rng, (64, 128, 192, 256, 384, 512, 768, 1024, 1280, 1536, 2048, 3072))),
            "n": int(_choice(rng, (10, 64, 128, 192, 256, 384, 512, 768, 1000, 1024, 1536, 2048, 3072))),
            "bias": bool(rng.random() < 0.8), "epilogue": str(_choice(rng, ("none", "relu", "gelu")))}


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
    return {"op": str(_choice(rng, ("Transpose", "Concat", "Concat", "Split", "Slice", "Resize", "Gather"))),
            "c": int(_choice(rng, (16, 32, 64, 128, 192, 256))), "hw": int(_choice(rng, (7, 14, 20, 28, 40, 56, 80))),
            "vocab": int(_choice(rng, (1000, 8000, 30522))), "parts": int(_choice(rng, (2, 3, 4)))}


def _recurrent_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"op": str(_choice(rng, ("LSTM", "GRU"))), "seq": int(_choice(rng, (10, 25, 50, 100, 200))),
            "input": int(_choice(rng, (40, 80, 128, 256, 512))), "hidden": int(_choice(rng, (64, 128, 256, 384))),
            "bidirectional": bool(rng.random() < 0.4)}


def _attention_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"s": int(_choice(rng, (16, 32, 50, 64, 128, 197, 256, 384))),
            "heads": int(_choice(rng, (2, 3, 4, 6, 8, 12))), "d": int(_choice(rng, (32, 64, 64))),
            "mask": bool(rng.random() < 0.5)}


_SAMPLERS: dict[str, Callable[[np.random.Generator], dict[str, Any]]] = {
    "conv": _conv_params, "depthwise": _depthwise_params, "gemm": _gemm_params,
    "elementwise": _elementwise_params, "pooling": _pooling_params, "normalization": _normalization_params,
    "softmax": _softmax_params, "data": _data_params, "recurrent": _recurrent_params,
    "attention": _attention_params,
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
    if family == "attention":
        return 4.0 * p["heads"] * p["s"] ** 2 * p["d"]
    return 0.0


def _elements(family: str, p: dict[str, Any]) -> float:
    if family in ("conv", "depthwise"):
        return float(max(p["cin"], p["cout"]) * p["hw"] ** 2)
    if family == "elementwise":
        return float(math.prod(p["shape"]))
    if family == "pooling":
        return float(p["c"] * p["hw"] ** 2)
    if family in ("softmax", "attention"):
        return float(p["heads"] * p["s"] ** 2)
    if family == "data":
        return float(p["c"] * p["hw"] ** 2)
    return 0.0
