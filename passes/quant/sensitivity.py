"""Sensitivity analysis: what quantizing one layer alone costs, layer by layer.

For each layer, a copy of the model with only that layer in INT8 runs on the
held-back samples: the layer output's SQNR against FP32 (how much noise the
layer's quantized inputs and weights add) and the model output's drop
against the original (1 - top-1 agreement for classifiers, 1 - cosine
otherwise). The table goes into the pass report; mixed precision ranks
layers by it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.passes.quant.accuracy import agreement, cpu_session, run_outputs
from edgeopt.passes.quant.calibrators import QuantParams, sqnr_db
from edgeopt.passes.quant.placement import RuleSet, layer_tail, plan_qdq
from edgeopt.passes.quant.qdq import apply_plan
from edgeopt.passes.quant.statistics import session_with_outputs


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    op_type: str
    sqnr_db: float
    drop: float
    cosine: float

    def to_dict(self) -> dict[str, float | str]:
        return {"layer": self.layer, "op": self.op_type, "sqnr_db": round(self.sqnr_db, 2),
                "drop": round(self.drop, 6), "cosine": round(self.cosine, 6)}


def quantized_copy(model: ir.Model, rules: RuleSet, layers: Iterable[str], params: Callable[[str], QuantParams],
                   reduce_range: bool) -> ir.Model:
    copy = model.clone()
    apply_plan(copy, plan_qdq(copy, rules, layers), params, reduce_range)
    return copy


def layer_sensitivity(model: ir.Model, rules: RuleSet, layers: Iterable[ir.Node],
                      params: Callable[[str], QuantParams], samples: list[Mapping[str, np.ndarray]],
                      reduce_range: bool = False, threads: int | None = None,
                      progress: Callable[[str], None] | None = None) -> list[LayerSensitivity]:
    layers = list(layers)
    tails = {layer.name: layer_tail(layer, rules).outputs[0].name for layer in layers}
    reference_session = session_with_outputs(model, tails.values(), threads)
    names = [o.name for o in reference_session.get_outputs()]
    n_outputs = len(model.graph.outputs)
    feeds_names = {i.name for i in reference_session.get_inputs()}
    reference_runs = [dict(zip(names, reference_session.run(names, {k: v for k, v in s.items() if k in feeds_names}),
                               strict=True)) for s in samples]
    reference_outputs = [[run[n] for n in names[:n_outputs]] for run in reference_runs]
    table = []
    for layer in layers:
        copy = quantized_copy(model, rules, [layer.name], params, reduce_range)
        session = session_with_outputs(copy, [tails[layer.name]], threads)
        out_names = [o.name for o in session.get_outputs()]
        runs = [dict(zip(out_names, session.run(out_names, {k: v for k, v in s.items() if k in feeds_names}),
                         strict=True)) for s in samples]
        tail = tails[layer.name]
        ref_tail = np.concatenate([np.ravel(r[tail]) for r in reference_runs if tail in r]) \
            if all(tail in r for r in reference_runs) else np.zeros(1)
        got_tail = np.concatenate([np.ravel(r[tail]) for r in runs if tail in r]) \
            if all(tail in r for r in runs) else ref_tail
        agree = agreement(reference_outputs, [[r[n] for n in out_names[:n_outputs]] for r in runs])
        table.append(LayerSensitivity(layer.name, layer.op_type, sqnr_db(ref_tail, got_tail), agree.drop,
                                      agree.cosine))
        if progress is not None:
            progress(f"sensitivity {layer.name}: drop {agree.drop:.4f}")
    return table


def evaluate(model: ir.Model, samples: list[Mapping[str, np.ndarray]], threads: int | None = None) -> list:
    return run_outputs(cpu_session(model, threads), samples)
