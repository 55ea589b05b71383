"""Quantization benchmark: edgeopt INT8 against ORT quantize_static and NNCF, plus mixed precision and memory.

    python -m tools.bench.quant [--size full|small] [--only a,b] [--mixed a,b] [--out table.md] [--json out.json]

Run timing under ``flock /tmp/edgeopt-bench.lock`` (other jobs share the CPU).

* digits: a small CNN trained here on scikit-learn's bundled digits (real
  labels, a few seconds of torch), exported with the TorchScript exporter like
  the zoo; accuracy is real top-1 on the 20 % test split.
* zoo models: every method starts from the same FP32 model (edgeopt cleanup +
  fuse-conv-bn), calibrates on the same samples and is evaluated on other
  samples: top-1 agreement with FP32 for classifiers, cosine otherwise.
* latency: ORT CPU, ORT_ENABLE_ALL, 2 threads, 20th percentile of runs.
* mixed: per-layer map from ``quantize{precision=mixed}`` against uniform
  FP32, FP16 and INT8 (every candidate layer) on latency and agreement.
* memory: peak RSS of edgeopt's calibration of BERT over 256 samples, in a
  fresh child process.

This file holds the side-by-side rows, the bars and the output; the data is in
``quant_data``, the compared methods in ``quant_peers``, sessions/agreement/latency
in ``quant_measure``, the mixed table in ``quant_mixed`` and memory in ``quant_memory``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python tools/bench/quant.py): the root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench.quant_data import digits_data, train_digits_cnn, zoo_samples
from tools.bench.quant_measure import agreement, cosine, latencies_and_ratios, latency_ms, run_all, session, top1
from tools.bench.quant_memory import calibration_memory, ort_calibration_memory
from tools.bench.quant_mixed import MixedRow, bench_mixed
from tools.bench.quant_peers import edgeopt_quantize, nncf_quantize, ort_static, prepare_fp32

ZOO_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3", "efficientnet_b0", "yolov8n", "bert")
METHODS = ("fp32", "edgeopt", "ort-static", "nncf")


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    model: str
    method: str
    status: str = "ok"
    accuracy: float | None = None  # digits: real top-1; zoo: agreement with FP32
    latency_ms: float | None = None
    detail: str = ""
    cosine: float | None = None
    vs_fp32: float | None = None  # median paired ratio of run times to FP32 in the same rounds


def _guard(row: Row, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as error:  # a peer that fails shows as an error row, it cannot stop the benchmark
        row.status, row.detail = "error", f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"


def bench_digits(work: Path, calibration: int = 64) -> list[Row]:
    x_train, _, x_test, y_test = digits_data()
    raw = train_digits_cnn(work / "digits.onnx")
    fp32 = prepare_fp32(raw, work / "digits-fp32.onnx")
    samples = [{"images": x_train[i:i + 1]} for i in range(calibration)]
    feeds = {"images": x_test[:1]}
    rows = []
    for method in METHODS:
        row, path = Row("digits", method), work / f"digits-{method}.onnx"

        def run(method: str = method, path: Path = path, row: Row = row) -> None:
            if method == "fp32":
                path.write_bytes(fp32.read_bytes())
            elif method == "edgeopt":
                report = edgeopt_quantize(fp32, path, samples, "gain=all")
                row.detail = f"{report['counts'].get('layers_int8', 0)} int8 layers"
            elif method == "ort-static":
                ort_static(fp32, path, samples)
            else:
                nncf_quantize(fp32, path, samples)
            row.accuracy = top1(session(path), x_test, y_test)
            row.latency_ms = latency_ms(path, feeds, budget=0.5)

        _guard(row, run)
        rows.append(row)
    return rows


def bench_zoo(name: str, size: str, work: Path, calibration: int, evaluation: int) -> tuple[list[Row], dict]:
    from tools.zoo import build

    fp32 = prepare_fp32(build(name, work / "zoo", size=size), work / f"{name}-fp32.onnx")
    samples = zoo_samples(name, size, calibration, 0)
    held = zoo_samples(name, size, evaluation, 10_000)
    reference = run_all(fp32, held)
    rows, reports = [], {}
    for method in METHODS:
        row, path = Row(name, method), work / f"{name}-{method}.onnx"

        def run(method: str = method, path: Path = path, row: Row = row) -> None:
            if method == "fp32":
                path.write_bytes(fp32.read_bytes())
            elif method == "edgeopt":
                report = edgeopt_quantize(fp32, path, samples)
                reports[name] = report
                row.detail = f"{report['counts'].get('layers_int8', 0)}/{len(report.get('precision_map', {}))} int8"
            elif method == "ort-static":
                ort_static(fp32, path, samples)
            else:
                nncf_quantize(fp32, path, samples)
            outputs = run_all(path, held)
            row.accuracy = agreement(reference, outputs)
            row.cosine = cosine(reference, outputs)
            if method == "edgeopt" and not reports[name]["counts"].get("layers_int8"):
                row.detail += " (kept FP32)"

        _guard(row, run)
        rows.append(row)
    # Every method timed round-robin, so load from other processes falls on all alike; a kept-FP32 edgeopt
    # model is the very same graph as FP32, so the FP32 timing is its timing (no second noisy sample).
    timed = [r for r in rows if r.status == "ok" and not r.detail.endswith("(kept FP32)")]
    seconds, ratios = latencies_and_ratios([work / f"{name}-{r.method}.onnx" for r in timed], held[0],
                                           budget=2.0 * len(timed))
    for row, value, ratio in zip(timed, seconds, ratios, strict=True):
        row.latency_ms, row.vs_fp32 = value, ratio if timed[0] is rows[0] else None
    for row in rows:
        if row.detail.endswith("(kept FP32)"):
            row.latency_ms, row.vs_fp32 = rows[0].latency_ms, 1.0
    return rows, reports


def check_bars(rows: list[Row]) -> list[str]:
    """The issue's bars, one line each, saying plainly where edgeopt loses."""
    lines = []
    by_model: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_model.setdefault(row.model, {})[row.method] = row
    nncf_wins = nncf_total = 0
    for model, methods in by_model.items():
        ours, base = methods.get("edgeopt"), methods.get("fp32")
        static, peer = methods.get("ort-static"), methods.get("nncf")
        if ours is None or ours.status != "ok" or base is None:
            lines.append(f"{model}: edgeopt did not run ({ours.detail if ours else 'missing'})")
            continue
        if model == "digits":
            drop = (base.accuracy - ours.accuracy) * 100
            lines.append(f"digits: top-1 drop {drop:.2f} points (bar <= 0.5): {'PASS' if drop <= 0.5 else 'FAIL'}")
            continue
        verdicts = [f"vs FP32 latency {ours.latency_ms:.2f} <= {base.latency_ms:.2f} ms:"
                    f" {'PASS' if ours.latency_ms <= base.latency_ms * 1.03 else 'FAIL'}"]
        if ours.vs_fp32 is not None:
            verdicts.append(f"paired ratio to FP32 {ours.vs_fp32:.3f} <= 1.03:"
                            f" {'PASS' if ours.vs_fp32 <= 1.03 else 'FAIL'}")
        if static is not None and static.status == "ok":
            verdicts.append(f"latency <= ort-static {static.latency_ms:.2f}:"
                            f" {'PASS' if ours.latency_ms <= static.latency_ms * 1.03 else 'FAIL'}")
            if ours.vs_fp32 is not None and static.vs_fp32 is not None:
                verdict = "PASS" if ours.vs_fp32 <= static.vs_fp32 * 1.03 else "FAIL"
                verdicts.append(f"paired ratio <= ort-static's {ours.vs_fp32:.3f} vs {static.vs_fp32:.3f}: {verdict}")
            verdicts.append(f"accuracy >= ort-static {static.accuracy:.4f}:"
                            f" {'PASS' if ours.accuracy >= static.accuracy - 1e-6 else 'FAIL'}")
        faster_peers = [r for r in (static, peer) if r is not None and r.status == "ok" and r.vs_fp32 is not None
                        and r.vs_fp32 < 0.97]
        if faster_peers and ours.vs_fp32 is not None:
            best = min(r.vs_fp32 for r in faster_peers)
            verdicts.append(f"peers faster than FP32 (best ratio {best:.3f}): edgeopt {ours.vs_fp32:.3f} < 1:"
                            f" {'PASS' if ours.vs_fp32 < 1.0 else 'FAIL'}")
        if peer is not None and peer.status == "ok":
            nncf_total += 1
            nncf_wins += ours.accuracy >= peer.accuracy - 1e-6
        lines.append(f"{model}: " + "; ".join(verdicts))
    if nncf_total:
        verdict = "PASS" if nncf_wins * 2 > nncf_total else "FAIL"
        lines.append(f"accuracy >= NNCF on {nncf_wins}/{nncf_total} zoo models (bar: most): {verdict}")
    return lines


# --------------------------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(headers: list[str], body: Iterable[list[str]], markdown: bool) -> str:
    body = list(body)
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body])


def report_text(rows: list[Row], mixed: list[MixedRow], memory: dict | None, bars: list[str], markdown: bool) -> str:
    parts = [render(["model", "method", "status", "accuracy", "cosine", "latency ms", "vs fp32", "detail"],
                    [[r.model, r.method, r.status, _fmt(r.accuracy, ".4f"), _fmt(r.cosine, ".5f"),
                      _fmt(r.latency_ms, ".2f"), _fmt(r.vs_fp32, ".3f"), r.detail]
                     for r in rows], markdown)]
    if mixed:
        parts.append(render(["model", "config", "int8 layers", "predicted ms", "measured ms", "agreement", "pareto"],
                            [[m.model, m.config, m.int8_layers, _fmt(m.predicted_ms, ".2f"), _fmt(m.latency_ms, ".2f"),
                              _fmt(m.accuracy, ".4f"), m.pareto] for m in mixed], markdown))
    if memory:
        parts.append("calibration memory (BERT): " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                              for k, v in memory.items()))
    parts.append("bars:\n" + "\n".join(f"- {line}" for line in bars))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.quant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=("small", "full"))
    parser.add_argument("--only", default=",".join(ZOO_MODELS), help="zoo models (comma separated)")
    parser.add_argument("--mixed", default="resnet50,yolov8n", help="zoo models for the mixed-precision table")
    parser.add_argument("--max-drop", type=float, default=0.01, help="mixed: accuracy budget (1-agreement or 1-cosine)")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--evaluation", type=int, default=16)
    parser.add_argument("--memory-samples", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--ort-memory-samples", type=int, default=32,
                        help="samples for ORT's percentile calibrater (it stores every activation: keep small)")
    parser.add_argument("--out", type=Path, help="write the tables as markdown")
    parser.add_argument("--json", type=Path, help="write every figure as JSON")
    parser.add_argument("--work", type=Path, help="keep models here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeopt-bench-quant-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = bench_digits(work)
    reports: dict = {}
    for name in filter(None, args.only.split(",")):
        print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        model_rows, model_reports = bench_zoo(name, args.size, work, args.calibration, args.evaluation)
        rows += model_rows
        reports.update(model_reports)
    mixed: list[MixedRow] = []
    maps: dict[str, dict[str, str]] = {}
    for name in filter(None, args.mixed.split(",")):
        print(f"[{time.strftime('%H:%M:%S')}] mixed {name}", file=sys.stderr, flush=True)
        model_mixed, maps[name] = bench_mixed(name, args.size, work, args.calibration, args.evaluation,
                                              args.max_drop)
        mixed += model_mixed
    memory = None
    if not args.skip_memory:
        memory = calibration_memory(args.size, work, args.memory_samples)
        if args.ort_memory_samples:
            memory.update(ort_calibration_memory(args.size, work, args.ort_memory_samples))
    bars = check_bars(rows)
    if memory:
        bars.append(f"calibration peak RSS {memory['peak_rss_mib']:.0f} MiB (goal < 2048):"
                    f" {'PASS' if memory['peak_rss_mib'] < 2048 else 'FAIL'}")
    print(report_text(rows, mixed, memory, bars, markdown=False))
    for name, chosen in maps.items():
        print(f"\nmixed map {name} ({work / f'{name}-mixed-map.json'}): "
              + ", ".join(f"{layer}={precision}" for layer, precision in chosen.items()))
    if args.out:
        text = report_text(rows, mixed, memory, bars, markdown=True)
        for name, chosen in maps.items():
            table = render(["layer", "precision"], [[k, v] for k, v in chosen.items()], True)
            text += f"\n\nmixed map {name}:\n\n{table}"
        args.out.write_text(text + "\n")
    if args.json:
        payload = {"rows": [asdict(r) for r in rows], "mixed": [asdict(m) for m in mixed], "memory": memory,
                   "bars": bars, "edgeopt_reports": reports, "mixed_maps": maps,
                   "self_rusage_max_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
