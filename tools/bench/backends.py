"""Backend benchmark: every emitter on every zoo model, validated against the reference; CPU latency.

    python -m tools.bench.backends [--size small|full] [--full resnet18,mobilenet_v2] [--only a,b]
        [--zoo-dir DIR] [--tvm-trials N] [--lock /tmp/edgeopt-bench.lock] [--markdown T.md] [--json T.json]

Each model goes through ``edgeopt compile``'s default pipeline (cleanup, fuse, cleanup) for
host-cpu, then through each backend's emitter exactly as the driver calls it: the up-front op
check (a refused model lists its ops), emit, and validation on the reference inputs (FP32:
max abs error against ONNX Runtime's run of the input model, graph optimizations off).

* onnxruntime: the optimized .onnx; its latency is the baseline (ORT_ENABLE_ALL, all cores).
* openvino: the IR on this machine's CPU plugin.
* tvm: two builds of the same Relax module: untuned (DLight defaults; an empty tuning cache)
  and tuned (the MetaSchedule database for this target and model in $EDGEOPT_CACHE_DIR; tune
  it beforehand with ``edgeopt compile M --backend tvm --backend-option trials=N``, or pass
  ``--tvm-trials N`` to tune here). ``trials`` says how many trials the database holds. A
  model without records is built once and shown as untuned. Untuned builds of full-size CNNs
  take seconds a run; the emitter times such slow builds with fewer runs (one above 5 s).
* tensorrt: the bundle, checked without TensorRT (checker, ORT run of the bundled ONNX, op
  list, shape profile, build_engine.py --dry-run).

Symbolic dims are bound for validation (batch 1; sequence 16 small / 128 full), and the TVM
build and TensorRT profile are told the same sizes. Latency is the median of timed runs after
warm-up; with ``--lock`` only the timing runs of each model hold the lock (other jobs may
still share the CPU). ``--full`` names models measured at full size (224x224 for the CNNs)
whatever ``--size`` says.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import load_model
from edgeopt.ir.reference import ReferenceExecutor
from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline
from edgeopt.targets import get_emitter, get_target
from edgeopt.targets.cost import CostModel
from tools.bench.tables import render_markdown, render_text

PIPELINE = "cleanup,fuse,cleanup"  # edgeopt.driver.DEFAULT_PIPELINE (the CLI layer is not imported here)
SEQUENCE = {"small": 16, "full": 128}


@dataclass
class BackendResult:
    emitted: bool = False
    unsupported: list[str] = field(default_factory=list)
    error: str = ""
    ok: bool | None = None
    max_abs: float | None = None
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    model: str
    size: str
    backends: dict[str, BackendResult]


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    """Hold ``path`` with flock (like ``flock PATH cmd``) so only one timing job runs at a time."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def optimize(model: ir.Model) -> ir.Model:
    target = get_target("host-cpu")
    ctx = PassContext(target=target, cost=CostModel(target, "onnxruntime"))
    return PassManager(instantiate(parse_pipeline(PIPELINE), ctx), [], ctx).run(model).model


def symbolic_dims(model: ir.Model) -> set[str]:
    return {str(d) for v in model.graph.inputs if v.shape is not None for d in v.shape if not isinstance(d, int)}


def options_for(backend: str, dims: Mapping[str, int], trials: int) -> dict[str, Any]:
    if backend == "tvm":
        return {"dims": ",".join(f"{k}={v}" for k, v in dims.items() if k != "batch"), "trials": trials}
    if backend == "tensorrt":
        ranges = {name: (1, size, max(8, size * 2)) for name, size in dims.items()}
        return {"profile": ",".join(f"{k}={a}:{b}:{c}" for k, (a, b, c) in ranges.items())}
    return {}


Feeds = Mapping[str, np.ndarray]


def run_backend(backend: str, model: ir.Model, folder: Path, options: Mapping[str, Any], inputs: Feeds,
                reference: Feeds) -> tuple[Any, Any, BackendResult]:
    """Check, emit and validate (no timing); the emitter and its result are returned for timing."""
    emitter = get_emitter(backend)
    out = BackendResult(unsupported=emitter.unsupported_ops(model))
    if out.unsupported:
        return None, None, out
    try:
        result = emitter.emit(model, folder, options)
        out.emitted = True
        emitter.validate(result, inputs, reference, measure=False)
    except UserError as error:
        out.error = str(error)
        return None, None, out
    summary = result.validation or {}
    out.ok, out.max_abs = summary.get("ok"), summary.get("max_abs")
    out.extra.update({key: summary[key] for key in ("ops_in_tensorrt_list", "profile_ok", "build_script_ok",
                                                     "mode", "checked_with") if key in summary})
    out.extra["notes"] = result.notes
    return emitter, result, out


def bench_model(name: str, size: str, zoo_dir: Path, work: Path, trials: int, lock: Path | None) -> Row:
    from tools.zoo import build

    source = load_model(build(name, zoo_dir, size=size))
    dims = {dim: SEQUENCE[size] if dim == "sequence" else 1 for dim in symbolic_dims(source)}
    executor = ReferenceExecutor()
    inputs = executor.generate_inputs(source, dims)
    reference = executor.run(source, inputs)
    model = optimize(source)
    row = Row(name, size, {})
    timed: list[tuple[str, Any, Any]] = []
    for backend in ("onnxruntime", "openvino", "tvm", "tensorrt"):
        folder = work / f"{name}-{size}" / backend
        options = options_for(backend, dims, trials)
        emitter, result, out = run_backend(backend, model, folder, options, inputs, reference)
        row.backends[backend] = out
        if emitter is not None and backend != "tensorrt":
            timed.append((backend, emitter, result))
        if backend == "tvm" and emitter is not None:
            config = json.loads((folder / "tvm_config.json").read_text())
            out.extra["trials"] = config["tuning"]["trials"]
            out.extra["tuned"] = any(note.startswith("schedules: MetaSchedule records") for note in result.notes)
            if not out.extra["tuned"]:  # no records: this build is the untuned one, timed once as such
                row.backends["tvm-untuned"] = out
                continue
            # The untuned figure: the same module built with an empty tuning cache (DLight defaults only).
            with tempfile.TemporaryDirectory(prefix="edgeopt-untuned-") as empty:
                previous = os.environ.get("EDGEOPT_CACHE_DIR")
                os.environ["EDGEOPT_CACHE_DIR"] = empty
                try:
                    untuned = run_backend("tvm", model, folder.parent / "tvm-untuned", {**options, "trials": 0},
                                          inputs, reference)
                finally:
                    if previous is None:
                        os.environ.pop("EDGEOPT_CACHE_DIR")
                    else:
                        os.environ["EDGEOPT_CACHE_DIR"] = previous
            row.backends["tvm-untuned"] = untuned[2]
            if untuned[0] is not None:
                timed.append(("tvm-untuned", untuned[0], untuned[1]))
    print(f"    timing {', '.join(b for b, _, _ in timed)}", file=sys.stderr, flush=True)
    with locked(lock):
        for backend, emitter, result in timed:
            emitter.validate(result, inputs, reference, measure=True)
            row.backends[backend].latency_ms = result.latency_ms
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(ms: float | None, baseline: float | None) -> str:
    return _fmt(ms / baseline, ".2f") if ms and baseline else "-"


def _status(out: BackendResult) -> str:
    if out.unsupported:
        return f"no ({', '.join(out.unsupported)})"
    if out.error:
        return f"no ({out.error[:60]})"
    return "yes" if out.ok else "yes, not ok"


def table(rows: list[Row]) -> list[list[str]]:
    body = [["model", "size", "ORT ms", "OpenVINO", "OV max abs", "OV ms", "OV/ORT", "TVM", "TVM max abs",
             "TVM untuned ms", "untuned/ORT", "TVM tuned ms", "tuned/ORT", "trials", "TensorRT bundle",
             "TRT max abs"]]
    for row in rows:
        b = row.backends
        ort_ms = b["onnxruntime"].latency_ms
        ov, tvm, trt = b["openvino"], b["tvm"], b["tensorrt"]
        untuned = b.get("tvm-untuned", BackendResult())
        tuned_ms = tvm.latency_ms if tvm.extra.get("tuned") else None
        trt_state = _status(trt)
        if trt.emitted and trt.ok is not None:
            checks = [k for k in ("ops_in_tensorrt_list", "profile_ok", "build_script_ok")
                      if not trt.extra.get(k, True)]
            trt_state = "written, checked" if trt.ok else f"written, failed {', '.join(checks) or 'outputs'}"
        body.append([row.model, row.size, _fmt(ort_ms, ".2f"), _status(ov), _fmt(ov.max_abs, ".1e"),
                     _fmt(ov.latency_ms, ".2f"), _ratio(ov.latency_ms, ort_ms), _status(tvm), _fmt(tvm.max_abs, ".1e"),
                     _fmt(untuned.latency_ms, ".2f"), _ratio(untuned.latency_ms, ort_ms), _fmt(tuned_ms, ".2f"),
                     _ratio(tuned_ms, ort_ms),
                     str(tvm.extra.get("trials", "-")), trt_state, _fmt(trt.max_abs, ".1e")])
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.backends", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--full", default="", help="models measured at full size whatever --size says")
    parser.add_argument("--only", default="", help="comma-separated zoo model names (default: all)")
    parser.add_argument("--zoo-dir", type=Path, default=None, help="where zoo models are built/cached")
    parser.add_argument("--tvm-trials", type=int, default=0,
                        help="MetaSchedule trials for the tuned TVM build (0: what the database holds)")
    parser.add_argument("--lock", type=Path, default=None, help="flock this file around each model's timing runs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    from tools.zoo import ZOO

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ZOO)
    full = {n.strip() for n in args.full.split(",") if n.strip()}
    unknown = [n for n in [*names, *full] if n not in ZOO]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(ZOO)}")
    rows: list[Row] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        zoo_dir = args.zoo_dir or Path(tmp) / "zoo"
        for name in names:
            size = "full" if name in full else args.size
            print(f"... {name} ({size})", file=sys.stderr, flush=True)
            rows.append(bench_model(name, size, zoo_dir, Path(tmp) / "out", args.tvm_trials, args.lock))
            print("    " + " | ".join(table(rows[-1:])[1]), file=sys.stderr, flush=True)  # a long run shows rows early
    body = table(rows)
    print(render_text(body))
    print(f"\n{len(rows)} model(s) in {time.perf_counter() - began:.0f} s")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(body))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
