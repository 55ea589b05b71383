"""Linear-layer fusions: MatMul+Add -> Gemm (2-D only) and BatchNormalization into MatMul.

onnxscript's MatMul+Add rule checks the operand ranks but not the bias: an
Add whose other operand has rank 3 broadcasts the product up, which Gemm
cannot. Ours checks that the bias broadcasts unidirectionally to (M, N).
BatchNormalization after Gemm is onnxscript's rule (registered with conv-bn).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from edgeopt.passes.fusion.registry import PRIORITY_LINEAR, PRIORITY_WEIGHTS, fusion_rule
from edgeopt.passes.values import constant_array

_GEMM_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


@fusion_rule("matmul-add-gemm", priority=PRIORITY_LINEAR, commute=True)
class MatMulAddToGemm(RewriteRuleClassBase):
    """Add(MatMul(a, b), c) -> Gemm(a, b, c) when a and b are 2-D and c broadcasts to (M, N)."""

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b), c)

    def check(self, context, a: ir.Value, b: ir.Value, c: ir.Value) -> MatchResult:
        result = MatchResult()
        if _rank(a) != 2 or _rank(b) != 2:
            return result.fail("MatMul operands are not both 2-D")
        if a.dtype not in _GEMM_TYPES or c.dtype != a.dtype:
            return result.fail("types Gemm does not take")
        if c.shape is None or len(c.shape) > 2:
            return result.fail("bias rank unknown or above 2")
        out = context.output_values[0].shape
        mm_out = (a.shape[0], b.shape[1])
        if out is None or len(out) != 2:
            return result.fail("output rank unknown")
        # Each bias dim must be 1 or the product's own dim, so Add does not broadcast the product.
        for bias_dim, dim in zip(reversed(list(c.shape)), reversed(mm_out), strict=False):
            if bias_dim != 1 and bias_dim != dim:
                return result.fail("bias may broadcast the product")
        return result

    def rewrite(self, op, a, b, c):
        return op.Gemm(a, b, c)


@fusion_rule("matmul-bn", priority=PRIORITY_WEIGHTS)
class MatMulBatchNorm(RewriteRuleClassBase):
    """BatchNormalization(MatMul(x, W)) -> Gemm(x, W*s, b) for 2-D x and a constant W."""

    def pattern(self, op, x, w, scale, bias, mean, var):
        return op.BatchNormalization(op.MatMul(x, w), scale, bias, mean, var, _allow_other_attributes=True,
                                     _outputs=["bn_out"])

    def check(self, context, x: ir.Value, w: ir.Value, scale: ir.Value, bias: ir.Value, mean: ir.Value,
              var: ir.Value, bn_out: ir.Value) -> MatchResult:
        result = MatchResult()
        bn = bn_out.producer()
        if bn is None or (len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:])):
            return result.fail("BatchNormalization training outputs are used")
        if bn.attributes.get_int("training_mode", 0):
            return result.fail("training-mode BatchNormalization")
        if _rank(x) != 2 or x.dtype not in _GEMM_TYPES:
            return result.fail("MatMul input is not 2-D")
        arrays = [constant_array(v) for v in (w, scale, bias, mean, var)]
        if any(a is None for a in arrays) or arrays[0].ndim != 2:
            return result.fail("weights or BatchNormalization parameters are not constant")
        self._arrays = arrays
        self._epsilon = bn.attributes.get_float("epsilon", 1e-5)
        return result

    def rewrite(self, op, x, w, scale, bias, mean, var, bn_out):
        weight, gamma, beta, mu, sigma2 = (a.astype(np.float64) for a in self._arrays)
        factor = gamma / np.sqrt(sigma2 + self._epsilon)
        dtype = self._arrays[0].dtype
        new_w = op.initializer(ir.tensor((weight * factor).astype(dtype)), f"{w.name}_bn")
        new_b = op.initializer(ir.tensor((beta - mu * factor).astype(dtype)), f"{bn_out.name}_bias")
        return op.Gemm(x, new_w, new_b)
