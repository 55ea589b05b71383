"""lift-constants: Constant nodes become initializers (onnx-ir's pass, every size, every value kind).

Exporters (and the Paddle converter) spell weights and shape vectors as
Constant nodes; as initializers they are what constant folding, fusion checks
and deduplication read, and the graph has that many fewer nodes.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass


@register_pass("lift-constants")
class LiftConstants(Pass):
    """Turn Constant nodes into initializers."""

    preserves = ("shapes",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = len(model.graph)
        modified = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model).modified
        lifted = before - len(model.graph)
        return PassResult(model, modified, counts={"constants_lifted": lifted} if lifted else {})
