"""quantize: INT8 (placed by backend rules and by per-layer gain), FP16, INT4 weight-only, or mixed.

INT8 steps: calibration data -> streaming statistics -> candidate layers of
the rule set -> per-layer gain (measured in ORT when the target is this
machine, else ``ctx.cost`` or a roofline) -> the set of INT8 layers that
minimises latency (``precision=mixed``: under the ``max_drop`` budget, using
the sensitivity table) -> Q/DQ insertion -> a whole-model check of that set
and of the full placement (every candidate layer, as ``quantize_static``
places Q/DQ) against FP32: timed round-robin in ORT where it can be measured,
else priced as whole QDQ graphs by ``ctx.cost``; FP32 stays unless one is
faster -> agreement on held-back samples. The report (layer map, gains,
sensitivity, accuracy) is JSON in ``ctx.config["reports"]["quantize"]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import PipelineError, UserError
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import Choice, FloatRange, option
from edgeopt.passes.quant.accuracy import agreement, get_evaluator
from edgeopt.passes.quant.calibration_data import Feeds, ImageSpec, resolve_calibration
from edgeopt.passes.quant.calibrators import METHODS, QuantParams, activation_params
from edgeopt.passes.quant.fp16 import SENSITIVE_OPS, convert_fp16, replace_model
from edgeopt.passes.quant.gain import (
    LayerTimes,
    choose_layers,
    compare_models,
    measure_layers,
    predict_layers,
    predicted_total,
)
from edgeopt.passes.quant.int4 import default_int4_format, quantize_int4
from edgeopt.passes.quant.mixed import choose_mixed, within_budget
from edgeopt.passes.quant.placement import RULE_SETS, RuleSet, candidate_layers, plan_qdq
from edgeopt.passes.quant.sensitivity import evaluate, layer_sensitivity, quantized_copy
from edgeopt.passes.quant.statistics import collect_statistics
from edgeopt.passes.registry import register_pass


@dataclass
class QuantizeOptions:
    precision: Literal["int8", "fp16", "int4", "mixed"] = option(
        "int8", help="uniform INT8/FP16/INT4 weight-only, or per-layer mixed", space=Choice(("int8", "mixed")))
    rules: Literal["auto", "onnxruntime", "tensorrt", "openvino"] = option(
        "auto", help="Q/DQ placement conventions; auto: the target's default backend")
    method: str = option("percentile", help="activation calibrator: minmax|percentile|entropy|mse",
                         space=Choice(METHODS))
    percentile: float = option(99.999, help="percentile for method=percentile")
    activation_bits: int = option(8, help="8, or 16 where the rule set supports it (onnxruntime)")
    reduce_range: Literal["auto", "true", "false"] = option(
        "auto", help="7-bit weights; auto: on x86 without VNNI (avoids u8*s8 int16 saturation)")
    data: str = option("", help="calibration folder (.npy/.npz/images) or plugin:NAME; empty: context or generated")
    samples: int = option(64, help="calibration samples to read")
    holdout: float = option(0.25, help="fraction of samples held back for accuracy")
    image_size: list[int] = option(default_factory=lambda: [224, 224], help="image preprocessing: height,width")  # noqa: RUF009
    mean: list[float] = option(default_factory=lambda: [0.485, 0.456, 0.406], help="image mean per channel")  # noqa: RUF009
    std: list[float] = option(default_factory=lambda: [0.229, 0.224, 0.225], help="image std per channel")  # noqa: RUF009
    layout: Literal["NCHW", "NHWC"] = option("NCHW", help="image layout")
    gain: Literal["auto", "measure", "predict", "all"] = option(
        "auto", help="per-layer decision: measure in ORT (host), predict (cost model), all (no check)")
    threads: int = option(2, help="ORT threads when measuring")
    max_drop: float = option(0.01, help="mixed: accuracy budget (1-top1 agreement, or 1-cosine)",
                             space=FloatRange(0.001, 0.05, log=True))
    latency_budget: float = option(0.0, help="mixed: seconds; >0 means best accuracy within this latency")
    precision_map: str = option("", help="JSON {node: fp32|int8} to apply instead of choosing")
    save_precision_map: str = option("", help="write the chosen map to this JSON file")
    evaluator: str = option("", help="registered evaluator plugin for a real metric")
    keep_fp32: list[str] = option(default_factory=list, help="node names never quantized")  # noqa: RUF009
    block_size: int = option(32, help="int4: weights per block")
    sensitivity: bool = option(False, help="int8: also report the per-layer sensitivity table (mixed always does)")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"option 'method={self.method}': expected one of {', '.join(METHODS)}")
        if self.activation_bits not in (8, 16):
            raise ValueError(f"option 'activation_bits={self.activation_bits}': expected 8 or 16")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"option 'holdout={self.holdout}': expected 0 <= holdout < 1")
        if self.samples < 1:
            raise ValueError(f"option 'samples={self.samples}': expected at least 1")


def _is_host(target: Any) -> bool:
    return target is None or getattr(target, "detect", None) == "host" or getattr(target, "name", "") == "host-cpu"


def _report(ctx: PassContext) -> dict[str, Any]:
    return ctx.config.setdefault("reports", {}).setdefault("quantize", {})


@register_pass("quantize")
class Quantize(Pass):
    """Quantize to INT8/FP16/INT4 or mixed precision, placing Q/DQ only where the backend's INT8 pays."""

    Options = QuantizeOptions
    numerics = "lossy"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts = self.options
        if opts.precision == "fp16":
            replace_model(model, convert_fp16(model, SENSITIVE_OPS, opts.keep_fp32))
            _report(ctx).update({"precision": "fp16", "kept_fp32_ops": list(SENSITIVE_OPS)})
            return PassResult(model, True, counts={"fp16": 1})
        if opts.precision == "int4":
            fmt = default_int4_format(ctx)
            new, count = quantize_int4(model, opts.block_size, True, fmt)
            if count:
                replace_model(model, new)
            _report(ctx).update({"precision": "int4", "format": fmt, "weights": count})
            return PassResult(model, bool(count), counts={"int4_weights": count})
        return self._int8(model, ctx)

    def _int8(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts, notes = self.options, []
        backend = getattr(ctx.target, "default_backend", "onnxruntime") if ctx.target is not None else "onnxruntime"
        rules_name = opts.rules if opts.rules != "auto" else (backend if backend in RULE_SETS else "onnxruntime")
        rules = RULE_SETS[rules_name]
        if opts.activation_bits not in rules.activation_bits:
            raise PipelineError(f"pass 'quantize': option 'activation_bits={opts.activation_bits}' is not supported"
                                f" by rules={rules.name}")
        isa = {f.lower() for f in (getattr(ctx.target, "isa", ()) or ())}
        x86 = bool(isa & {"avx2", "avx", "sse4_2"}) or ctx.target is None
        vnni = bool(isa & {"avx512_vnni", "avx_vnni", "amx_int8"})
        reduce_range = opts.reduce_range == "true" or (opts.reduce_range == "auto" and rules.name == "onnxruntime"
                                                         and x86 and not vnni)
        image = ImageSpec(tuple(opts.image_size), tuple(opts.mean), tuple(opts.std), opts.layout)  # type: ignore[arg-type]
        calib = resolve_calibration(model, opts.data, opts.samples, opts.holdout, ctx.calibration_data, image)
        notes += calib.notes
        candidates = [n for n in candidate_layers(model, rules) if n.name not in set(opts.keep_fp32)]
        if not candidates:
            return PassResult(model, False, notes=[f"no layer the {rules.name} rules can run in INT8"])
        everything = plan_qdq(model, rules, [n.name for n in candidates])
        tensors = set(everything.activations) | set(everything.activations.values())
        for node in candidates:  # micro-models need every input's shape
            tensors.update(v.name for v in node.inputs if v is not None and v.const_value is None and v.name)
        stats = collect_statistics(model, tensors, calib.calibration(), threads=opts.threads)
        symmetric, signed, bits = rules.activation_symmetric, rules.activation_signed, opts.activation_bits

        def params(name: str) -> QuantParams:
            return activation_params(stats.range(name, opts.method, symmetric, bits, opts.percentile), bits,
                                     symmetric, signed)

        mode = opts.gain
        if mode == "auto":
            mode = "measure" if _is_host(ctx.target) and rules.name == "onnxruntime" and ctx.cost is None else "predict"
        sizes = {name: math.prod(shape) for name, shape in stats.shapes.items()}
        if mode == "measure":
            times = measure_layers(model, rules, candidates, stats.shapes, params, opts.threads, reduce_range)
        elif mode == "predict":
            times = predict_layers(model, candidates, ctx.target, ctx.cost, ctx.analyses.get(model, "costs"), sizes)
        else:
            times = LayerTimes({n.name: 1.0 for n in candidates}, {n.name: 0.5 for n in candidates}, sizes=sizes,
                               source="all")
        held_back = list(calib.held_back()) or list(calib.calibration())[:4]
        reference = evaluate(model, held_back, opts.threads)
        report = _report(ctx)
        report.update({"precision": opts.precision, "rules": rules.name, "method": opts.method,
                       "reduce_range": reduce_range, "calibration": {"source": calib.source,
                                                                    "samples": stats.samples,
                                                                    "generated": calib.generated,
                                                                    "histogram_bytes": stats.nbytes},
                       "gain_source": times.source, "layer_times": times.to_dict()})
        if opts.precision_map:
            chosen = self._load_map(opts.precision_map, {n.name for n in candidates})
        elif opts.precision == "mixed":
            table = layer_sensitivity(model, rules, [n for n in candidates if n.name in times.fp32], params,
                                      held_back, reduce_range, opts.threads)
            report["sensitivity"] = [row.to_dict() for row in table]
            drops = {row.layer: row.drop for row in table}
            chosen = choose_mixed(model, rules, times, drops, opts.max_drop, opts.latency_budget)
            chosen = self._tighten(model, rules, chosen, drops, params, reduce_range, held_back, reference)
        else:
            chosen = choose_layers(model, rules, times)
            if opts.sensitivity:
                table = layer_sensitivity(model, rules, candidates, params, held_back, reduce_range, opts.threads)
                report["sensitivity"] = [row.to_dict() for row in table]
        quantized = quantized_copy(model, rules, chosen, params, reduce_range) if chosen else model
        if mode == "measure" and not opts.precision_map:  # a map the user gives is applied, not second-guessed
            if opts.precision == "mixed":  # the full placement is a candidate only within the accuracy budget
                full = self._tighten(model, rules, within_budget(drops, opts.max_drop), drops, params, reduce_range,
                                     held_back, reference)
            else:
                full = {n.name for n in candidates if n.name in times.fp32}
            chosen, quantized, timing = self._check_faster(model, quantized, rules, chosen, times, params,
                                                           reduce_range, held_back[0], opts.threads, full)
            report["measured_latency_s"] = timing
            if not chosen:
                notes.append("INT8 does not pay on this target for this model: kept FP32")
        elif mode == "predict" and ctx.cost is not None and not opts.precision_map and opts.precision != "mixed":
            full = {n.name for n in candidates if n.name in times.fp32}
            chosen, quantized, whole = self._check_predicted(model, quantized, rules, chosen, full, ctx.cost, params,
                                                             reduce_range)
            report["predicted_whole_model_s"] = whole
            if not chosen:
                notes.append("the cost model predicts no INT8 set faster than FP32 on this target: kept FP32")
        accuracy = agreement(reference, evaluate(quantized, held_back, opts.threads)) if chosen else None
        if accuracy is not None:
            report["accuracy"] = accuracy.to_dict()
        if opts.evaluator and chosen:
            from edgeopt.passes.quant.accuracy import cpu_session

            metric = get_evaluator(opts.evaluator)
            report["evaluator"] = {"name": opts.evaluator, "original": metric(cpu_session(model)),
                                   "quantized": metric(cpu_session(quantized))}
        precision_map = {n.name: ("int8" if n.name in chosen else "fp32") for n in candidates}
        report["precision_map"] = precision_map
        if times.source != "all":  # gain=all times no layer: there is nothing to predict with
            report["predicted_latency_s"] = {"fp32": predicted_total(model, rules, set(), times),
                                             "chosen": predicted_total(model, rules, set(chosen), times),
                                             "all_int8": predicted_total(model, rules, set(times.fp32), times)}
        if opts.save_precision_map:
            Path(opts.save_precision_map).write_text(json.dumps(precision_map, indent=1, sort_keys=True) + "\n")
        if not chosen:
            return PassResult(model, False, counts={"layers_int8": 0, "candidates": len(candidates)}, notes=notes)
        replace_model(model, quantized)
        counts = {"layers_int8": len(chosen), "layers_fp32": len(candidates) - len(chosen),
                  "qdq_pairs": sum(1 for n in model.graph if n.op_type == "QuantizeLinear")}
        if accuracy is not None:
            notes.append(f"held-back agreement: drop {accuracy.drop:.4f}, cosine {accuracy.cosine:.5f}"
                         f" on {accuracy.samples} samples")
        return PassResult(model, True, counts=counts, notes=notes)

    def _load_map(self, path: str, candidates: set[str]) -> set[str]:
        try:
            mapping = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"precision map {path}: unreadable ({type(error).__name__}: {error})") from None
        if not isinstance(mapping, dict):
            raise UserError(f"precision map {path}: expected a JSON object {{node: precision}}")
        unknown = sorted(set(mapping) - candidates)
        if unknown:
            raise UserError(f"precision map {path}: node '{unknown[0]}' is not a quantizable layer of this model")
        return {name for name, precision in mapping.items() if precision == "int8"}

    def _tighten(self, model: ir.Model, rules: RuleSet, chosen: set[str], drops: dict[str, float],
                 params: Callable[[str], QuantParams], reduce_range: bool, held_back: list[Feeds],
                 reference: list[list[np.ndarray]]) -> set[str]:
        """Measured drop over budget (the additive model is optimistic): drop the most sensitive layers."""
        for _ in range(8):
            if not chosen:
                return chosen
            candidate = quantized_copy(model, rules, chosen, params, reduce_range)
            measured = agreement(reference, evaluate(candidate, held_back, self.options.threads)).drop
            if measured <= self.options.max_drop:
                return chosen
            worst = sorted(chosen, key=lambda n: drops[n], reverse=True)
            chosen = chosen - set(worst[: max(1, len(worst) // 4)])
        return chosen

    def _check_predicted(self, model: ir.Model, quantized: ir.Model, rules: RuleSet, chosen: set[str],
                         full: set[str], cost: Any, params: Callable[[str], QuantParams], reduce_range: bool
                         ) -> tuple[set[str], ir.Model, dict[str, float]]:
        """The cost model's whole-model latency of FP32, the per-layer set and the full placement, as QDQ graphs.

        Per-layer predictions on the FP32 graph miss what the backend does to a QDQ graph as a whole (a
        residual Add fused into a float Conv becomes a QLinearAdd kernel of its own, Q/DQ pairs are absorbed
        into QLinear kernels, layout changes at the INT8 region's edges), so the sets are also priced as the
        graphs they produce; the cheapest one is kept if it beats FP32 by 1 %.
        """
        sets = [layers for index, layers in enumerate([set(chosen), set(full)])
                if layers and (index == 0 or layers != chosen)]
        whole: dict[str, float] = {"fp32": float(cost.latency(model))}
        best: tuple[float, set[str], ir.Model] | None = None
        for layers in sets:
            candidate = quantized if layers == chosen else quantized_copy(model, rules, layers, params, reduce_range)
            seconds = float(cost.latency(candidate))
            whole[f"int8_{len(layers)}_layers"] = seconds
            if seconds < whole["fp32"] * 0.99 and (best is None or seconds < best[0]):
                best = (seconds, layers, candidate)
        if best is None:
            return set(), model, whole
        whole["chosen"] = best[0]
        return best[1], best[2], whole

    def _check_faster(self, model: ir.Model, quantized: ir.Model, rules: RuleSet, chosen: set[str],
                      times: LayerTimes, params: Callable[[str], QuantParams], reduce_range: bool, feeds: Feeds,
                      threads: int, full: set[str]) -> tuple[set[str], ir.Model, dict[str, float]]:
        """Whole-model ORT timing: the fastest of a few INT8 sets, kept only if it beats FP32 in a second timing.

        Micro-model timings miss cross-layer effects (ORT keeps NHWC uint8 data between INT8 layers, and a
        run of INT8 layers pays as a whole), so these sets are timed whole, round-robin with FP32: the
        per-layer gain set, the full placement (every candidate, as ``quantize_static`` places Q/DQ; within
        the accuracy budget for mixed), and the best-gain half and quarter of the gain set. The comparison is
        the median paired ratio to FP32 (see ``paired_ratios``): it sees the 4-8 % gains INT8 brings on AVX2
        where absolute times on a shared machine swing by more. The winner must beat FP32 by 1 % there and
        by 2 % in each of two fresh confirming rounds (>= 15 runs each: the best of several noisy ratios is
        biased low), with a lower 20th-percentile time too, before the model may change.
        """
        gains = sorted(chosen, key=lambda n: times.fp32[n] - times.int8[n], reverse=True)
        attempts = [set(chosen), set(full), set(gains[: len(gains) // 2]), set(gains[: len(gains) // 4])]
        sets: list[set[str]] = []
        for layers in attempts:
            if layers and all(layers != seen for seen in sets):
                sets.append(layers)
        if not sets:
            return set(), model, {}
        candidates = [quantized if chosen and layers == chosen else
                      quantized_copy(model, rules, layers, params, reduce_range) for layers in sets]
        seconds, ratios = compare_models([model, *candidates], feeds, threads, budget=0.5 * (1 + len(candidates)))
        timing: dict[str, float] = {"fp32": seconds[0]}
        best: tuple[float, set[str], ir.Model] | None = None
        for layers, candidate, time_s, ratio in zip(sets, candidates, seconds[1:], ratios[1:], strict=True):
            timing[f"int8_{len(layers)}_layers"] = time_s
            timing[f"ratio_int8_{len(layers)}_layers"] = ratio
            if ratio < 0.99 and (best is None or ratio < best[0]):
                best = (ratio, layers, candidate)
        if best is None:
            return set(), model, timing
        # Two independent confirming rounds: on a shared 2-core machine one paired round of 15 still swings by
        # +-5 % (bert: a one-layer set confirmed at 0.91 measured 1.17 right after), and a false "faster"
        # breaks the never-slower-than-FP32 promise while a missed gain only keeps FP32.
        for _round in range(2):
            (fp32_again, chosen_again), (_, ratio) = compare_models([model, best[2]], feeds, threads, budget=2.0,
                                                                    min_runs=15)
            timing.update({"confirm_fp32": fp32_again, "confirm_chosen": chosen_again, "confirm_ratio": ratio})
            if ratio >= 0.98 or chosen_again >= fp32_again:
                return set(), model, timing
        timing["chosen"] = chosen_again
        return best[1], best[2], timing
