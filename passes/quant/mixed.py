"""Mixed precision: per-layer FP32/INT8 under an accuracy budget (or the reverse) from gain and sensitivity.

The latency side is :func:`edgeopt.passes.quant.gain.predicted_total` (which
charges the Q/DQ a choice forces at its borders); the accuracy side adds the
per-layer drops of the sensitivity table, which is what a first-order
(independent-noise) model of quantization error predicts. The caller then
measures the chosen model on held-back data and tightens if the real drop
exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from edgeopt.passes.quant.gain import LayerTimes, choose_layers, predicted_total
from edgeopt.passes.quant.placement import RuleSet


def choose_mixed(model: ir.Model, rules: RuleSet, times: LayerTimes, drops: Mapping[str, float],
                 max_drop: float, latency_budget: float = 0.0) -> set[str]:
    """INT8 layers minimising predicted latency with summed drop <= ``max_drop``.

    With ``latency_budget`` > 0 (seconds of the candidate layers), the reverse:
    the least summed drop whose predicted latency fits the budget.
    """
    fastest = choose_layers(model, rules, times, allowed=[n for n in times.fp32 if n in drops])
    chosen = set(fastest)

    def total(layers: set[str]) -> float:
        return predicted_total(model, rules, layers, times)

    if latency_budget > 0:
        # Drop the layers that cost the most accuracy per second saved while the budget still holds.
        while chosen:
            current = total(chosen)
            ranked = sorted(chosen, key=lambda n: drops[n] / max(total(chosen - {n}) - current, 1e-9),
                            reverse=True)
            for name in ranked:
                if total(chosen - {name}) <= latency_budget and drops[name] > 0:
                    chosen.discard(name)
                    break
            else:
                break
        return chosen
    while chosen and sum(drops[n] for n in chosen) > max_drop:
        current = total(chosen)
        # Remove the layer with the largest drop per second it saves.
        worst = max(chosen, key=lambda n: drops[n] / max(total(chosen - {n}) - current, 1e-9))
        chosen.discard(worst)
    return chosen


def within_budget(drops: Mapping[str, float], max_drop: float) -> set[str]:
    """The most layers whose summed drop fits ``max_drop``: least sensitive first (the budget's full placement)."""
    chosen: set[str] = set()
    total = 0.0
    for name in sorted(drops, key=lambda n: drops[n]):
        if total + max(drops[name], 0.0) > max_drop:
            break
        chosen.add(name)
        total += max(drops[name], 0.0)
    return chosen
