"""cleanup: the cleanup passes repeated to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.cleanup.dead_code import RemoveDeadCode
from edgeopt.passes.cleanup.dedup import DeduplicateInitializers, EliminateCommonSubexpressions
from edgeopt.passes.cleanup.fold_constants import FoldConstants, FoldConstantsOptions
from edgeopt.passes.cleanup.noop import EliminateNoops
from edgeopt.passes.options import IntRange, option
from edgeopt.passes.registry import register_pass


@dataclass
class CleanupOptions:
    max_iterations: int = option(4, help="bound on repeats while something still changes",
                                 space=IntRange(1, 8))
    fold_size_limit: int = option(1 << 20, help="largest tensor (elements) constant folding may create")


@register_pass("cleanup")
class Cleanup(Pass):
    """Fold constants, drop no-ops and dead code, merge duplicates; repeat to a fixed point."""

    Options = CleanupOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        fold = FoldConstantsOptions(output_size_limit=self.options.fold_size_limit)
        steps: list[Pass] = [
            FoldConstants(fold, ctx),
            EliminateNoops(ctx=ctx),
            EliminateCommonSubexpressions(ctx=ctx),
            DeduplicateInitializers(ctx=ctx),
            RemoveDeadCode(ctx=ctx),
        ]
        counts: dict[str, int] = {}
        modified = False
        iterations = 0
        while iterations < self.options.max_iterations:
            iterations += 1
            changed = False
            for step in steps:
                result = step(model)
                if result.modified:
                    changed = True
                    ctx.analyses.invalidate(model, step.preserves)
                for key, value in result.counts.items():
                    counts[key] = counts.get(key, 0) + value
            modified |= changed
            if not changed:
                break
        return PassResult(model, modified, counts=counts, notes=[f"{iterations} iteration(s)"])
