"""fuse: every registered fusion rule that fits the model's opset, by priority, to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgeopt.ir.errors import PipelineError
from edgeopt.ir.model_io import default_opset
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.fusion.registry import FusionRule, registered_fusions
from edgeopt.passes.options import IntRange, option
from edgeopt.passes.registry import register_pass


@dataclass
class FuseOptions:
    only: list[str] = option(default_factory=list, help="apply only these fusion rules (names)")  # noqa: RUF009
    disable: list[str] = option(default_factory=list, help="fusion rules to skip (names)")  # noqa: RUF009
    max_iterations: int = option(8, help="bound on sweeps over all rules while something still fuses",
                                 space=IntRange(1, 16))


def apply_fusions(model: ir.Model, fusions: list[FusionRule], max_iterations: int) -> tuple[dict[str, int], int]:
    """Apply ``fusions`` in order, sweeping until a sweep changes nothing; returns counts and sweeps."""
    counts: dict[str, int] = {}
    sweeps = 0
    rule_sets = [(fusion.name, fusion.rule_set()) for fusion in fusions]
    while sweeps < max_iterations:
        sweeps += 1
        changed = 0
        for name, rule_set in rule_sets:
            applied = rule_set.apply_to_model(model)
            if applied:
                counts[name] = counts.get(name, 0) + applied
                changed += applied
        if not changed:
            break
    if counts:
        # Rewrites leave the replaced constants (BatchNorm statistics, old weights) behind.
        RemoveUnusedNodesPass()(model)
    return counts, sweeps


@register_pass("fuse")
class Fuse(Pass):
    """Apply every registered fusion pattern legal at the model's opset, by priority, to a fixed point."""

    Options = FuseOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        try:
            fusions = registered_fusions(default_opset(model), self.options.only, self.options.disable)
        except KeyError as error:
            raise PipelineError(f"pass '{self.name}': {error.args[0]}") from None
        counts, sweeps = apply_fusions(model, fusions, self.options.max_iterations)
        return PassResult(model, bool(counts), counts=counts,
                          notes=[f"{len(fusions)} rule(s) at opset {default_opset(model)}, {sweeps} sweep(s)"])
