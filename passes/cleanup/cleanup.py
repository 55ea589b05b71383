"""cleanup: the cleanup passes repeated to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.cleanup.dead_code import RemoveDeadCode
from edgeopt.passes.cleanup.dedup import DeduplicateInitializers, EliminateCommonSubexpressions
from edgeopt.passes.cleanup.fold_constants import FoldConstants, FoldConstantsOptions
from edgeopt.passes.cleanup.lift_constants import LiftConstants
from edgeopt.passes.cleanup.noop import EliminateNoops
from edgeopt.passes.cleanup.rnn_states import DropZeroRnnStates
from edgeopt.passes.cleanup.shapes import SimplifyShapes
from edgeopt.passes.options import IntRange, option
from edgeopt.passes.registry import register_pass


@dataclass
class CleanupOptions:
    max_iterations: int = option(4, help="bound on repeats while something still changes",
                                 space=IntRange(1, 8))
    fold_size_limit: int = option(1 << 20, help="largest tensor (elements) constant folding may create")
    fold_growth_ratio: float = option(1.0, help="folding may make the weights at most this many times larger")


@register_pass("cleanup")
class Cleanup(Pass):
    """Fold constants, simplify shape chains, drop no-ops and dead code, merge duplicates; repeat to a fixed point."""

    Options = CleanupOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        fold = FoldConstantsOptions(output_size_limit=self.options.fold_size_limit,
                                    growth_ratio=self.options.fold_growth_ratio)
        steps: list[Pass] = [
            RemoveDeadCode(ctx=ctx),  # first too: no folding work spent on what nobody reads
            LiftConstants(ctx=ctx),
            FoldConstants(fold, ctx),
            SimplifyShapes(ctx=ctx),
            EliminateNoops(ctx=ctx),
            DropZeroRnnStates(ctx=ctx),
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
