"""Mixed precision in the quantization benchmark: the chosen map against uniform FP32, FP16 and INT8."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.bench.quant_data import zoo_samples
from tools.bench.quant_measure import agreement, latencies, run_all
from tools.bench.quant_peers import edgeopt_quantize, prepare_fp32


@dataclass
class MixedRow:
    model: str
    config: str
    int8_layers: str
    predicted_ms: float | None
    latency_ms: float | None
    accuracy: float | None
    pareto: str = ""


def bench_mixed(name: str, size: str, work: Path, calibration: int, evaluation: int,
                max_drop: float = 0.01) -> tuple[list[MixedRow], dict[str, str]]:
    """Uniform FP32/FP16/INT8 and the mixed map on one model; predictions come from the mixed run's layer times."""
    from edgeopt.ir import load_model, save_model
    from edgeopt.passes.quant.fp16 import convert_fp16
    from tools.zoo import build

    fp32 = prepare_fp32(build(name, work / "zoo", size=size), work / f"{name}-fp32.onnx")
    samples = zoo_samples(name, size, calibration, 0)
    held = zoo_samples(name, size, evaluation, 10_000)
    reference = run_all(fp32, held)
    mixed_path, map_path = work / f"{name}-mixed.onnx", work / f"{name}-mixed-map.json"
    report = edgeopt_quantize(fp32, mixed_path, samples,
                              f"precision=mixed,max_drop={max_drop},save_precision_map={map_path}")
    (work / f"{name}-mixed-report.json").write_text(json.dumps(report, indent=1, default=str))
    chosen: dict[str, str] = report.get("precision_map", {})
    predicted = {k: v * 1e3 for k, v in report.get("predicted_latency_s", {}).items()}
    fp16, int8 = work / f"{name}-fp16.onnx", work / f"{name}-int8.onnx"
    save_model(convert_fp16(load_model(fp32)), fp16)
    edgeopt_quantize(fp32, int8, samples, "gain=all")
    int8_count = sum(v == "int8" for v in chosen.values())
    # Timed round-robin; an all-FP32 map is the FP32 graph itself, so it reuses that timing.
    paths = [fp32, fp16, int8] + ([mixed_path] if int8_count else [])
    measured = latencies(paths, held[0], budget=2.0 * len(paths))
    measured += [] if int8_count else [measured[0]]
    rows = [MixedRow(name, "fp32", f"0/{len(chosen)}", predicted.get("fp32"), measured[0], 1.0),
            MixedRow(name, "fp16", "-", None, measured[1], agreement(reference, run_all(fp16, held))),
            MixedRow(name, "int8 (all layers)", f"{len(chosen)}/{len(chosen)}", predicted.get("all_int8"),
                     measured[2], agreement(reference, run_all(int8, held))),
            MixedRow(name, f"mixed max_drop={max_drop}" + ("" if int8_count else " (kept FP32)"),
                     f"{int8_count}/{len(chosen)}", predicted.get("chosen"), measured[3],
                     agreement(reference, run_all(mixed_path, held)))]
    mixed = rows[-1]
    dominated_by = [r.config for r in rows[:-1] if r.latency_ms is not None and mixed.latency_ms is not None
                    and r.latency_ms < mixed.latency_ms * 0.97 and (r.accuracy or 0) >= (mixed.accuracy or 0)]
    mixed.pareto = "on/beyond front" if not dominated_by else f"dominated by {', '.join(dominated_by)}"
    return rows, chosen
