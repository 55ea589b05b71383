"""fold-constants: evaluate subgraphs whose inputs are all constants.

Built on onnxscript's constant folder (it evaluates with the ONNX reference
implementation, knows shape-only ops like Shape/Size and skips random ops);
what we add is the size policy: a folded tensor must stay under a cap, so
folding never trades a small graph for a bloated file.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.optimizer import fold_constants_ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import IntRange, option
from edgeopt.passes.registry import register_pass


@dataclass
class FoldConstantsOptions:
    input_size_limit: int = option(
        1 << 20, help="largest input tensor (elements) a folded node may read",
        space=IntRange(1 << 10, 1 << 24, log=True))
    output_size_limit: int = option(
        1 << 20, help="largest tensor (elements) folding may create; bigger results stay computed")


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold nodes whose inputs are all constants into initializers, under a size cap."""

    Options = FoldConstantsOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = len(model.graph)
        result = fold_constants_ir(
            model,
            input_size_limit=self.options.input_size_limit,
            output_size_limit=self.options.output_size_limit,
        )
        folded = nodes - len(model.graph)
        return PassResult(model, result.modified, counts={"nodes_folded": folded} if folded else {})
