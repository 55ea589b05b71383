"""The fusion-rule registry: named, prioritized, opset-bounded rewrite patterns.

A fusion is a declarative pattern written with onnxscript's rewriter (a
pattern function, a replacement function, and an optional check that says why
a match is refused). The registry gives each one a name (what reports and the
``fuse{only=...,disable=...}`` options use), a priority (lower runs first) and
the opset range where the replacement is legal. The ``fuse`` pass applies
every registered rule that fits the model's opset, by priority, to a fixed point.

A plugin adds a fusion by writing a pattern; importing its module (through
``--plugin file.py`` or the ``edgeopt.plugins`` entry point) registers it::

    from onnxscript.rewriter import pattern
    from edgeopt.passes.fusion.registry import fusion_rule

    @fusion_rule("double-neg", priority=50, min_opset=13)
    class DoubleNeg(pattern.RewriteRuleClassBase):
        \"\"\"Neg(Neg(x)) -> x.\"\"\"

        def pattern(self, op, x):
            return op.Neg(op.Neg(x))

        def rewrite(self, op, x):
            return op.Identity(x)

or, for rules built elsewhere, ``register_fusion("name", [rule, ...], priority=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase, RewriteRuleSet

from edgeopt.ir.errors import PluginError

# Priorities used by the built-ins (lower first): simplifications that expose
# patterns, then weight folding, then op-level fusions.
PRIORITY_LAYOUT = 10
PRIORITY_WEIGHTS = 20
PRIORITY_LINEAR = 30
PRIORITY_ACTIVATION = 40
PRIORITY_NORMALIZATION = 50
PRIORITY_DEFAULT = 100


@dataclass(frozen=True)
class FusionRule:
    """One named fusion: its rewrite rules and where it is legal."""

    name: str
    rules: tuple[RewriteRule, ...]
    priority: int = PRIORITY_DEFAULT
    min_opset: int | None = None
    max_opset: int | None = None
    summary: str = ""
    commute: bool = False  # also try the mirrored operand order of Add/Mul in the pattern

    def applies_to(self, opset: int) -> bool:
        return (self.min_opset is None or opset >= self.min_opset) and (
            self.max_opset is None or opset <= self.max_opset)

    def rule_set(self) -> RewriteRuleSet:
        return RewriteRuleSet(list(self.rules), commute=self.commute)


_RULES: dict[str, FusionRule] = {}


def register_fusion(name: str, rules: RewriteRule | Sequence[RewriteRule], *, priority: int = PRIORITY_DEFAULT,
                    min_opset: int | None = None, max_opset: int | None = None, summary: str = "",
                    commute: bool = False) -> FusionRule:
    """Register (or re-register, same name) a fusion made of onnxscript rewrite rules."""
    rule_tuple = (rules,) if isinstance(rules, RewriteRule) else tuple(rules)
    if not rule_tuple or not all(isinstance(r, RewriteRule) for r in rule_tuple):
        raise PluginError(f"fusion '{name}': expected onnxscript RewriteRule objects")
    if min_opset is not None and max_opset is not None and min_opset > max_opset:
        raise PluginError(f"fusion '{name}': min_opset {min_opset} > max_opset {max_opset}")
    fusion = FusionRule(name, rule_tuple, priority, min_opset, max_opset, summary, commute)
    _RULES[name] = fusion
    return fusion


def unregister_fusion(name: str) -> FusionRule | None:
    """Remove a fusion from the registry (tests, or a plugin replacing a built-in); returns it."""
    return _RULES.pop(name, None)


def fusion_rule(name: str, *, priority: int = PRIORITY_DEFAULT, min_opset: int | None = None,
                max_opset: int | None = None, commute: bool = False
                ) -> Callable[[type[RewriteRuleClassBase]], type[RewriteRuleClassBase]]:
    """Class decorator: register a ``RewriteRuleClassBase`` subclass (pattern/check/rewrite) as a fusion."""

    def decorate(cls: type[RewriteRuleClassBase]) -> type[RewriteRuleClassBase]:
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        register_fusion(name, cls.rule(name=name), priority=priority, min_opset=min_opset,
                        max_opset=max_opset, summary=summary, commute=commute)
        return cls

    return decorate


def registered_fusions(opset: int | None = None, only: Iterable[str] = (), disable: Iterable[str] = ()
                       ) -> list[FusionRule]:
    """Registered fusions in application order, filtered by opset and by name."""
    _ensure_builtins()
    wanted, dropped = set(only), set(disable)
    unknown = (wanted | dropped) - set(_RULES)
    if unknown:
        known = ", ".join(sorted(_RULES))
        raise KeyError(f"unknown fusion rule(s) {', '.join(sorted(unknown))} (known: {known})")
    chosen = [
        rule for rule in _RULES.values()
        if (not wanted or rule.name in wanted) and rule.name not in dropped
        and (opset is None or rule.applies_to(opset))
    ]
    return sorted(chosen, key=lambda rule: (rule.priority, rule.name))


def _ensure_builtins() -> None:
    # The built-in rule modules register on import (edgeopt.passes.builtin imports them too).
    from edgeopt.passes.fusion import rules_activation, rules_conv, rules_layout, rules_linear  # noqa: F401
