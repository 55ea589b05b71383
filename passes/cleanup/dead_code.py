"""remove-dead-code: nodes, initializers, functions and opsets nothing uses."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass


@register_pass("remove-dead-code")
class RemoveDeadCode(Pass):
    """Remove nodes, initializers, functions and opset imports that no output depends on."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = len(model.graph)
        initializers = len(model.graph.initializers)
        modified = False
        for step in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
            modified |= step(model).modified
        counts = {
            "nodes_removed": nodes - len(model.graph),
            "initializers_removed": initializers - len(model.graph.initializers),
        }
        return PassResult(model, modified, counts={k: v for k, v in counts.items() if v})
