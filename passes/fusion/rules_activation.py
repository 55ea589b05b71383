"""Activation and normalization fusions, each bounded to the opsets that have the fused op.

HardSwish/HardSigmoid, Relu/Clip merging and LayerNormalization come from
onnxscript (LayerNormalization gets an extra check of ours: scale and bias must
be vectors over the normalized axis, as the op requires). GELU (erf and tanh
forms) -> Gelu (opset 20) and x*Sigmoid(x) -> Swish (opset 24) are ours.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _fuse_hardswish, _fuse_relus_clips
from onnxscript.rewriter.rules.fusion import _layer_norm

from edgeopt.passes.fusion.registry import (
    PRIORITY_ACTIVATION,
    PRIORITY_NORMALIZATION,
    fusion_rule,
    register_fusion,
)

register_fusion("hardswish", list(_fuse_hardswish.fuse_hardswish_rules().rules), priority=PRIORITY_ACTIVATION,
                min_opset=14, commute=True, summary="Add/Clip/Mul/Div chains -> HardSwish or HardSigmoid")
register_fusion("relu-clip", list(_fuse_relus_clips.rules.rules), priority=PRIORITY_ACTIVATION, min_opset=11,
                summary="consecutive Relu/Clip merged into one Clip")

_SQRT2 = math.sqrt(2.0)


class _GeluBase(RewriteRuleClassBase):
    approximate = "none"

    def check(self, context, x: ir.Value, **_: object) -> MatchResult:
        result = MatchResult()
        if x.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            return result.fail("Gelu takes floating-point tensors only")
        return result

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate=self.approximate) if self.approximate != "none" else op.Gelu(x)


@fusion_rule("gelu", priority=PRIORITY_ACTIVATION, min_opset=20, commute=True)
class GeluErfDiv(_GeluBase):
    """x * (1 + erf(x / sqrt 2)) * 0.5 -> Gelu(x)."""

    def pattern(self, op, x):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, _SQRT2)), 1.0)), 0.5)


@fusion_rule("gelu-half-first", priority=PRIORITY_ACTIVATION, min_opset=20, commute=True)
class GeluErfHalfFirst(_GeluBase):
    """(x * 0.5) * (1 + erf(x / sqrt 2)) -> Gelu(x)."""

    def pattern(self, op, x):
        return op.Mul(op.Mul(x, 0.5), op.Add(op.Erf(op.Div(x, _SQRT2)), 1.0))


@fusion_rule("gelu-mul-rsqrt2", priority=PRIORITY_ACTIVATION, min_opset=20, commute=True)
class GeluErfMul(_GeluBase):
    """x * (1 + erf(x * 1/sqrt 2)) * 0.5 -> Gelu(x)."""

    def pattern(self, op, x):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Mul(x, 1.0 / _SQRT2)), 1.0)), 0.5)


@fusion_rule("gelu-tanh", priority=PRIORITY_ACTIVATION, min_opset=20, commute=True)
class GeluTanh(_GeluBase):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> Gelu(x, approximate="tanh")."""

    approximate = "tanh"

    def pattern(self, op, x):
        inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, 3.0), 0.044715)), math.sqrt(2.0 / math.pi))
        return op.Mul(op.Mul(x, 0.5), op.Add(op.Tanh(inner), 1.0))


@fusion_rule("silu", priority=PRIORITY_ACTIVATION, min_opset=24, commute=True)
class SiLU(RewriteRuleClassBase):
    """x * Sigmoid(x) -> Swish(x) (alpha 1)."""

    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def check(self, context, x: ir.Value) -> MatchResult:
        result = MatchResult()
        if x.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            return result.fail("Swish takes floating-point tensors only")
        return result

    def rewrite(self, op, x):
        return op.Swish(x)


def _vector_over_last_axis(value: ir.Value, x: ir.Value) -> bool:
    """Whether ``value`` is a 1-D tensor as long as ``x``'s last axis (what LayerNormalization takes)."""
    if value.shape is None or x.shape is None or len(value.shape) != 1 or len(x.shape) == 0:
        return False
    return isinstance(value.shape[0], int) and value.shape[0] == x.shape[-1]


class _CheckedLayerNorm(_layer_norm.LayerNormFusion):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul -> LayerNormalization (scale a vector over the last axis)."""

    def check(self, context, x, epsilon, **rest) -> MatchResult:
        result = super().check(context, x, epsilon, **rest)
        if result and not _vector_over_last_axis(rest["scale"], x):
            return MatchResult().fail("scale is not a vector over the normalized axis")
        return result


class _CheckedLayerNormBias(_layer_norm.LayerNormBiasFusion):
    """LayerNormalization + Add(bias vector) -> LayerNormalization with bias."""

    def check(self, context, x, scale, bias, normalized) -> MatchResult:
        result = MatchResult()
        producer = normalized.producer()
        if producer is None or (len(producer.inputs) > 2 and producer.inputs[2] is not None):
            return result.fail("LayerNormalization already has a bias")
        if producer.attributes.get_int("axis", -1) not in (-1, len(x.shape or ()) - 1):
            return result.fail("LayerNormalization does not normalize over the last axis only")
        if not _vector_over_last_axis(bias, x) or bias.dtype != x.dtype:
            return result.fail("bias is not a vector over the normalized axis")
        return result


register_fusion("layer-norm", [_CheckedLayerNorm.rule(), _CheckedLayerNormBias.rule()],
                priority=PRIORITY_NORMALIZATION, min_opset=18, commute=True,
                summary="mean/variance/normalize/scale/shift chains -> LayerNormalization")
