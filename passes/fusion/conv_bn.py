"""fuse-conv-bn: fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm.

The rewrite rules are onnxscript's (pattern + check + replacement, the form we
follow for every fusion); the pass wraps them with our counts and contract.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules.common import _fuse_batchnorm

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass

_RULES = RewriteRuleSet([
    _fuse_batchnorm.fuse_batchnorm_into_conv_rule,
    _fuse_batchnorm.fuse_batchnorm_into_conv_transpose_rule,
    _fuse_batchnorm.fuse_batchnorm_into_gemm_rule,
])


@register_pass("fuse-conv-bn")
class FuseConvBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm weights and bias."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        fused = _RULES.apply_to_model(model)
        if fused:
            # The rewriter leaves the BatchNormalization parameters behind.
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(model)
        return PassResult(model, bool(fused), counts={"batchnorms_fused": fused} if fused else {})
