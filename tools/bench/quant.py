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
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ZOO_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3", "efficientnet_b0", "yolov8n", "bert")
METHODS = ("fp32", "edgeopt", "ort-static", "nncf")


# ----------------------------------------------------------------------------------------------- digits


def digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as float32 NCHW in [0, 1], split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def train_digits_cnn(out: Path, seconds: float = 8.0, seed: int = 0) -> Path:
    """Train a tiny CNN on digits for at most ``seconds`` and export it (opset 17, symbolic batch)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits_data(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        for _epoch in range(40):
            order = torch.randperm(len(xs))
            for start in range(0, len(xs), 64):
                batch = order[start:start + 64]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
                loss.backward()
                optimizer.step()
            if time.perf_counter() - began > seconds:
                break
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xs[:2],), str(out), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False)
    return out


def top1(session: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return float(np.mean(logits.argmax(-1) == y))


# ------------------------------------------------------------------------------------------- utilities


def session(path: Path | str | bytes, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=["CPUExecutionProvider"])


def latency_ms(path: Path, feeds: dict[str, np.ndarray], budget: float = 2.0) -> float:
    from edgeopt.passes.quant.gain import time_session

    return time_session(session(path), feeds, budget=budget, min_runs=10) * 1e3


def latencies(paths: list[Path], feeds: dict[str, np.ndarray], budget: float) -> list[float]:
    """Milliseconds per run of each model, timed round-robin (see ``time_interleaved``)."""
    from edgeopt.passes.quant.gain import time_interleaved

    sessions = [session(p) for p in paths]
    return [t * 1e3 for t in time_interleaved(sessions, [feeds] * len(sessions), budget=budget, min_runs=10)]


def agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Top-1 agreement for classifier outputs, else cosine (over all outputs)."""
    from edgeopt.passes.quant.accuracy import agreement as agree

    result = agree(reference, candidate)
    return result.top1 if result.top1 is not None else result.cosine


def cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    from edgeopt.passes.quant.accuracy import agreement as agree

    return agree(reference, candidate).cosine


def run_all(path: Path, samples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    s = session(path)
    names = {i.name for i in s.get_inputs()}
    return [s.run(None, {k: v for k, v in f.items() if k in names}) for f in samples]


def prepare_fp32(src: Path, dst: Path) -> Path:
    """The common FP32 start: edgeopt cleanup + fuse-conv-bn (ORT would fold BN at load anyway)."""
    from edgeopt.ir import load_model, save_model
    from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline

    model = load_model(src)
    ctx = PassContext()
    result = PassManager(instantiate(parse_pipeline("cleanup,fuse-conv-bn,cleanup"), ctx), [], ctx).run(model)
    save_model(result.model, dst)
    return dst


def edgeopt_quantize(src: Path, dst: Path, samples: list[dict[str, np.ndarray]], options: str = "") -> dict:
    from edgeopt.ir import load_model, save_model
    from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline
    from edgeopt.targets import get_target

    model = load_model(src)
    ctx = PassContext(target=get_target("host-cpu"), calibration_data=lambda: iter(samples))
    text = f"quantize{{samples={len(samples)},holdout=0{',' + options if options else ''}}}"
    began = time.perf_counter()
    result = PassManager(instantiate(parse_pipeline(text), ctx), [], ctx).run(model)
    save_model(result.model, dst)
    report = dict(ctx.config.get("reports", {}).get("quantize", {}))
    report["seconds"] = time.perf_counter() - began
    report["counts"] = result.records[0].counts
    return report


class _Reader:
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.iterator = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)


def ort_static(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def nncf_quantize(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    import nncf

    model = onnx.load(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(dst))


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


def zoo_samples(name: str, size: str, count: int, offset: int) -> list[dict[str, np.ndarray]]:
    from tools.zoo import example_inputs

    return [example_inputs(name, size, seed=offset + i) for i in range(count)]


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
    seconds = latencies([work / f"{name}-{r.method}.onnx" for r in timed], held[0], budget=2.0 * len(timed))
    for row, value in zip(timed, seconds, strict=True):
        row.latency_ms = value
    for row in rows:
        if row.detail.endswith("(kept FP32)"):
            row.latency_ms = rows[0].latency_ms
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
        if static is not None and static.status == "ok":
            verdicts.append(f"latency <= ort-static {static.latency_ms:.2f}:"
                            f" {'PASS' if ours.latency_ms <= static.latency_ms * 1.03 else 'FAIL'}")
            verdicts.append(f"accuracy >= ort-static {static.accuracy:.4f}:"
                            f" {'PASS' if ours.accuracy >= static.accuracy - 1e-6 else 'FAIL'}")
        if peer is not None and peer.status == "ok":
            nncf_total += 1
            nncf_wins += ours.accuracy >= peer.accuracy - 1e-6
        lines.append(f"{model}: " + "; ".join(verdicts))
    if nncf_total:
        verdict = "PASS" if nncf_wins * 2 > nncf_total else "FAIL"
        lines.append(f"accuracy >= NNCF on {nncf_wins}/{nncf_total} zoo models (bar: most): {verdict}")
    return lines


# ----------------------------------------------------------------------------------------------- mixed


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


# ---------------------------------------------------------------------------------------------- memory

_PEAK = """
def reset_peak():
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak seen next is the calibration's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
"""

_MEMORY_CHILD = _PEAK + """
import sys, time
from edgeopt.ir import load_model
from edgeopt.passes.quant.placement import RULE_SETS, candidate_layers, plan_qdq
from edgeopt.passes.quant.statistics import collect_statistics
from edgeopt.ir.reference import ReferenceExecutor
model = load_model(sys.argv[1])
rules = RULE_SETS["onnxruntime"]
plan = plan_qdq(model, rules, [n.name for n in candidate_layers(model, rules)])
reset_peak()
before = status_mib("VmRSS")
executor = ReferenceExecutor()  # no torch in this process: ids within the vocabulary, random masks
began = time.perf_counter()
samples = (executor.generate_inputs(model, seed=i) for i in range(int(sys.argv[3])))
stats = collect_statistics(model, plan.activations, samples)
peak = status_mib("VmHWM")
print(f"{peak:.1f} {before:.1f} {stats.samples} {len(stats.histograms)} {stats.nbytes}"
      f" {time.perf_counter() - began:.1f}")
"""


_ORT_MEMORY_CHILD = _PEAK + """
import sys
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
from edgeopt.ir import load_model
from edgeopt.ir.reference import ReferenceExecutor
model = load_model(sys.argv[1])
executor = ReferenceExecutor()
class Reader:
    def __init__(self): self.it = (executor.generate_inputs(model, seed=i) for i in range(int(sys.argv[3])))
    def get_next(self): return next(self.it, None)
reset_peak()
before = status_mib("VmRSS")
calibrator = create_calibrator(sys.argv[1], calibrate_method=CalibrationMethod.Percentile,
                               augmented_model_path=sys.argv[4])
calibrator.collect_data(Reader())
calibrator.compute_data()
print(f"{status_mib('VmHWM'):.1f} {before:.1f}")
"""


def ort_calibration_memory(size: str, work: Path, samples: int) -> dict[str, float]:
    """Peak RSS (MiB) of ORT's own percentile calibrater on the same model (it keeps every activation)."""
    fp32 = work / "bert-fp32.onnx"
    out = subprocess.run([sys.executable, "-c", _ORT_MEMORY_CHILD, str(fp32), size, str(samples),
                          str(work / "bert-augmented.onnx")], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    peak, before = out.stdout.split()[-2:]
    return {"ort_percentile_samples": samples, "ort_percentile_peak_rss_mib": float(peak),
            "ort_rss_before_mib": float(before)}


def calibration_memory(size: str, work: Path, samples: int = 256) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process that loads BERT and calibrates every candidate tensor."""
    from tools.zoo import build

    fp32 = prepare_fp32(build("bert", work / "zoo", size=size), work / "bert-fp32.onnx")
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(fp32), size, str(samples)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    peak, before, seen, tensors, nbytes, seconds = out.stdout.split()[-6:]
    return {"peak_rss_mib": float(peak), "rss_before_mib": float(before), "samples": int(seen),
            "tensors": int(tensors), "histogram_mib": int(nbytes) / 2**20, "seconds": float(seconds)}


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
    parts = [render(["model", "method", "status", "accuracy", "cosine", "latency ms", "detail"],
                    [[r.model, r.method, r.status, _fmt(r.accuracy, ".4f"), _fmt(r.cosine, ".5f"),
                      _fmt(r.latency_ms, ".2f"), r.detail]
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
    parser.add_argument("--mixed", default="resnet18,mobilenet_v2", help="zoo models for the mixed-precision table")
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
        model_mixed, maps[name] = bench_mixed(name, args.size, work, args.calibration, args.evaluation)
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
    # Run as a file (python tools/bench/quant.py), the repository root is not on sys.path for `tools.zoo`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
