"""fuse-conv-bn: fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm.

The rules are the "conv-bn" fusion of the registry (onnxscript's pattern +
check + replacement); this pass applies that one fusion alone.
"""

from __future__ import annotations

import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.fusion.fuse import apply_fusions
from edgeopt.passes.fusion.registry import registered_fusions
from edgeopt.passes.registry import register_pass


@register_pass("fuse-conv-bn")
class FuseConvBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm weights and bias."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        counts, _ = apply_fusions(model, registered_fusions(only=["conv-bn"]), max_iterations=2)
        fused = counts.get("conv-bn", 0)
        return PassResult(model, bool(fused), counts={"batchnorms_fused": fused} if fused else {})
