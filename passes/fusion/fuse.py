"""fuse: every registered fusion rule that fits the model's opset, by priority, to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import RewriteRule, RewriteRuleSet
from onnxscript.rewriter._pattern_ir import NodeOutputPattern, StringConstantPattern

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


def needed_ops(rule: RewriteRule) -> frozenset[tuple[str, str]]:
    """(domain, op) pairs every match of ``rule`` needs.

    Walked from the pattern's outputs through plain node outputs only: a node
    behind an alternative (``OrValue``: Mul(d, d) or Pow(d, 2)) is not required.
    """
    needed: set[tuple[str, str]] = set()
    stack = list(rule._target_pattern.outputs)  # onnxscript has no public accessor for a rule's pattern
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        producer = value.producer() if isinstance(value, NodeOutputPattern) else None
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        identifier = producer.op_identifier()
        if identifier is None and isinstance(producer.op, StringConstantPattern) \
                and isinstance(producer.domain, StringConstantPattern):
            # A commuted copy (rule.commute()) loses the identifier but keeps constant domain and op.
            identifier = (producer.domain.value(), producer.op.value(), "")
        if identifier is not None:
            needed.add((identifier[0] or "", identifier[1]))
        stack.extend(v for v in producer.inputs if v is not None)
    return frozenset(needed)


def ops_in(model: ir.Model) -> set[tuple[str, str]]:
    ops = {(node.domain, node.op_type) for graph in model.graphs() for node in graph}
    ops |= {(node.domain, node.op_type) for function in model.functions.values() for node in function}
    return {("" if domain == "ai.onnx" else domain, op) for domain, op in ops}


def apply_fusions(model: ir.Model, fusions: list[FusionRule], max_iterations: int) -> tuple[dict[str, int], int]:
    """Apply ``fusions`` in order, sweeping until a sweep changes nothing; returns counts and sweeps.

    Matching costs rules x nodes, and most rules cannot match a given model (no
    Erf in a CNN, no Conv in BERT), so a rule whose pattern needs an op the
    model lacks is skipped; the op set is re-read after every change.
    """
    counts: dict[str, int] = {}
    sweeps = 0
    rule_sets = [(fusion.name, needed_ops(rule), RewriteRuleSet([rule], commute=fusion.commute))
                 for fusion in fusions for rule in fusion.rules]
    present = ops_in(model)
    while sweeps < max_iterations:
        sweeps += 1
        changed = 0
        for name, needed, rule_set in rule_sets:
            if not needed <= present:
                continue
            applied = rule_set.apply_to_model(model)
            if applied:
                counts[name] = counts.get(name, 0) + applied
                changed += applied
                present = ops_in(model)
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
