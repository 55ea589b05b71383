"""Convolution fusions: BatchNormalization, per-channel Mul/Add, and Pad folded into Conv or pooling.

Conv+BatchNormalization and Pad+Conv reuse onnxscript's rules (they check
constant weights, the epsilon and the pad mode). onnxscript's Conv+affine rule
only takes scalars, so the per-channel Conv+Mul / Conv+Add rules and the
Pad+pooling rules are ours.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _fuse_batchnorm, _fuse_pad_into_conv

from edgeopt.passes.fusion.registry import PRIORITY_LAYOUT, PRIORITY_WEIGHTS, fusion_rule, register_fusion
from edgeopt.passes.values import constant_array

register_fusion(
    "conv-bn",
    [_fuse_batchnorm.fuse_batchnorm_into_conv_rule, _fuse_batchnorm.fuse_batchnorm_into_conv_transpose_rule,
     _fuse_batchnorm.fuse_batchnorm_into_gemm_rule],
    priority=PRIORITY_WEIGHTS, summary="BatchNormalization folded into the preceding Conv/ConvTranspose/Gemm")
register_fusion(
    "pad-conv",
    [_fuse_pad_into_conv.normalize_pad_format_conv_rule, _fuse_pad_into_conv.fuse_pad_into_conv_rule],
    priority=PRIORITY_LAYOUT, min_opset=11, summary="constant zero Pad folded into the Conv's pads")


def _per_channel(operand: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``operand`` as a vector over axis 1 of a rank-``rank`` tensor, if it broadcasts only along it."""
    if operand.ndim > rank:
        return None
    shape = (1,) * (rank - operand.ndim) + tuple(operand.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(operand.reshape(-1), (channels,))


class _ConvElementwise(RewriteRuleClassBase):
    """Shared check: constant weights (and bias), and a per-output-channel constant operand."""

    def check(self, context, x: ir.Value, w: ir.Value, operand: ir.Value, conv_out: ir.Value,
              **_: object) -> MatchResult:
        result = MatchResult()
        conv = conv_out.producer()
        weight = constant_array(w)
        if conv is None or weight is None or weight.ndim < 3:
            return result.fail("Conv weight is not a constant")
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        bias = constant_array(bias_value) if bias_value is not None else np.zeros(weight.shape[0], weight.dtype)
        if bias is None:
            return result.fail("Conv bias is not a constant")
        value = constant_array(operand)
        if value is None or value.dtype != weight.dtype:
            return result.fail("the other operand is not a constant of the weight's type")
        vector = _per_channel(value, weight.ndim, weight.shape[0])
        if vector is None:
            return result.fail("the other operand does not broadcast along the output channels only")
        self._weight, self._bias, self._vector = weight, bias, vector
        return result


@fusion_rule("conv-mul", priority=PRIORITY_WEIGHTS, commute=True)
class ConvMul(_ConvElementwise):
    """Conv(x, W, B) * s -> Conv(x, W*s, B*s) for a constant s per output channel."""

    def pattern(self, op, x, w, operand):
        conv = op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"])
        return op.Mul(conv, operand)

    def rewrite(self, op, x, w, operand, conv_out):
        shape = (-1,) + (1,) * (self._weight.ndim - 1)
        weight = (self._weight.astype(np.float64) * self._vector.reshape(shape)).astype(self._weight.dtype)
        bias = (self._bias.astype(np.float64) * self._vector).astype(self._weight.dtype)
        new_w = op.initializer(ir.tensor(weight), f"{w.name}_scaled")
        new_b = op.initializer(ir.tensor(bias), f"{conv_out.name}_bias_scaled")
        return op.Conv(x, new_w, new_b, **conv_out.producer().attributes)


@fusion_rule("conv-add", priority=PRIORITY_WEIGHTS, commute=True)
class ConvAdd(_ConvElementwise):
    """Conv(x, W, B) + a -> Conv(x, W, B+a) for a constant a per output channel."""

    def pattern(self, op, x, w, operand):
        conv = op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"])
        return op.Add(conv, operand)

    def rewrite(self, op, x, w, operand, conv_out):
        bias = (self._bias.astype(np.float64) + self._vector).astype(self._weight.dtype)
        new_b = op.initializer(ir.tensor(bias), f"{conv_out.name}_bias_shifted")
        return op.Conv(x, w, new_b, **conv_out.producer().attributes)


def _pad_spatial(pads_input: ir.Value, value_input: ir.Value | None, axes_input: ir.Value | None,
                 rank: int | None, fill: float) -> list[int] | None:
    """Spatial pads (ONNX begin..., end... order) of a constant Pad that pads only spatial axes with ``fill``."""
    pads = constant_array(pads_input)
    if pads is None or rank is None or (axes_input is not None and constant_array(axes_input) is None):
        return None
    if value_input is not None:
        constant = constant_array(value_input)
        if constant is None or constant.size != 1 or float(constant.reshape(-1)[0]) != fill:
            return None
    elif fill != 0.0:
        return None
    axes = list(range(rank)) if axes_input is None else [int(a) % rank for a in constant_array(axes_input).reshape(-1)]
    full = [0] * (2 * rank)
    pads = [int(p) for p in pads.reshape(-1)]
    for index, axis in enumerate(axes):
        full[axis], full[axis + rank] = pads[index], pads[index + len(axes)]
    if any(p < 0 for p in full) or full[0] or full[1] or full[rank] or full[rank + 1]:
        return None
    return full[2:rank] + full[rank + 2:]


class _PadPool(RewriteRuleClassBase):
    fill = 0.0
    pool = "AveragePool"

    def pattern(self, op, x, pads):
        padded = op.Pad(x, pads, _allow_other_inputs=True, _outputs=["padded"])
        return getattr(op, self.pool)(padded, _allow_other_attributes=True, _outputs=["pooled"])

    def check(self, context, x: ir.Value, pads: ir.Value, padded: ir.Value, pooled: ir.Value) -> MatchResult:
        result = MatchResult()
        pad_node, pool = padded.producer(), pooled.producer()
        if pad_node is None or pool is None or pad_node.attributes.get_string("mode", "constant") != "constant":
            return result.fail("Pad is not a constant-mode Pad")
        inputs = [*pad_node.inputs, None, None]
        rank = len(x.shape) if x.shape is not None else None
        spatial = _pad_spatial(pads, inputs[2], inputs[3], rank, self.fill)
        if spatial is None:
            return result.fail("Pad is not a constant padding of the spatial axes with the pool's fill value")
        attrs = pool.attributes
        if attrs.get_string("auto_pad", "NOTSET") != "NOTSET" or attrs.get_int("ceil_mode", 0):
            return result.fail("pool uses auto_pad or ceil_mode")
        own = attrs.get_ints("pads")
        if own is not None and any(own):
            return result.fail("pool already pads")
        if len(pool.outputs) > 1 and pool.outputs[1].uses():
            return result.fail("MaxPool indices are used")
        self._pads = spatial
        return result

    def rewrite(self, op, x, pads, padded, pooled):
        attributes = {k: v for k, v in pooled.producer().attributes.items() if k != "pads"}
        extra = {"count_include_pad": 1} if self.pool == "AveragePool" else {}
        return getattr(op, self.pool)(x, **{**attributes, **extra}, pads=self._pads)


@fusion_rule("pad-average-pool", priority=PRIORITY_LAYOUT, min_opset=11)
class PadAveragePool(_PadPool):
    """Pad(x, 0) then AveragePool -> AveragePool(pads, count_include_pad=1)."""


@fusion_rule("pad-max-pool", priority=PRIORITY_LAYOUT, min_opset=11)
class PadMaxPool(_PadPool):
    """Pad(x, -inf) then MaxPool -> MaxPool(pads)."""

    fill = float("-inf")
    pool = "MaxPool"
