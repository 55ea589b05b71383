"""eliminate-common-subexpressions and deduplicate-initializers, from onnx-ir."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass, DeduplicateInitializersPass

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass


@register_pass("eliminate-common-subexpressions")
class EliminateCommonSubexpressions(Pass):
    """Merge nodes that compute the same op on the same inputs with the same attributes."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = len(model.graph)
        modified = CommonSubexpressionEliminationPass()(model).modified
        merged = nodes - len(model.graph)
        return PassResult(model, modified, counts={"nodes_merged": merged} if merged else {})


@register_pass("deduplicate-initializers")
class DeduplicateInitializers(Pass):
    """Share one copy of initializers that hold identical data."""

    preserves = ("shapes",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = len(model.graph.initializers)
        modified = DeduplicateInitializersPass()(model).modified
        removed = before - len(model.graph.initializers)
        return PassResult(model, modified, counts={"initializers_merged": removed} if removed else {})
