"""Simplifier benchmark: edgeopt's default pipeline against onnxsim, OnnxSlim and ORT's basic offline optimizer.

edgeopt's row is the default pipeline for the onnxruntime backend (host-cpu's default), which
fuses transformer blocks into ONNX Runtime contrib ops, as onnxsim's row may do too; the
"bar" column names every result that uses ops outside the ONNX standard.

    python -m tools.bench.simplify [--size full|small] [--only a,b] [--repeat N] [--out table.md] [--zoo-dir DIR]

Every zoo model is simplified by each tool in a child process (a peer that
segfaults shows as "crash", it cannot take the benchmark down), timed from
load to save; each tool runs ``--repeat`` times in fresh processes and the
median counts, since other work on the machine disturbs single timings.
Then each result is compared with the original on the same random inputs
(batch 2, so a result that froze the batch dim fails), and its ORT CPU
latency is measured (all ORT optimizations on, one thread, median).
The last column checks edgeopt's row against the bar of issue 4: nodes <= the
fewest of the peers, outputs within 1e-5 relative, file not larger than the
original, wall time at most 2x OnnxSlim's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tools.bench.tables import render_markdown, render_text

TOOLS = ("original", "edgeopt", "onnxsim", "onnxslim", "ort-basic")
PEERS = ("onnxsim", "onnxslim", "ort-basic")
REL_TOLERANCE = 1e-5
TIME_FACTOR = 2.0


@dataclass
class Row:
    model: str
    tool: str
    status: str = "ok"  # ok | crash | error
    detail: str = ""
    nodes: int | None = None
    bytes: int | None = None
    seconds: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    latency_ms: float | None = None
    domains: tuple[str, ...] = ()  # op domains outside the ONNX standard (runtime-specific ops)
    bar: list[str] = field(default_factory=list)


def _optimize(tool: str, src: str, dst: str) -> float:
    """Run one tool on ``src`` writing ``dst``; returns its wall time (load to save, imports excluded)."""
    if tool == "edgeopt":
        from edgeopt.driver import default_pipeline
        from edgeopt.ir import load_model, save_model
        from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline
        from edgeopt.passes.registry import registered_passes

        registered_passes()  # import every built-in pass before the clock starts
    elif tool == "onnxsim":
        import onnxsim
    elif tool == "onnxslim":
        import onnxslim
    start = time.perf_counter()
    if tool == "edgeopt":
        # What `edgeopt compile --target host-cpu` runs: its default backend is ONNX Runtime, the
        # runtime every row here is measured in, so transformer blocks become its contrib ops.
        ctx = PassContext(backend="onnxruntime")
        model = load_model(src)
        result = PassManager(instantiate(parse_pipeline(default_pipeline(ctx.backend)), ctx), [], ctx).run(model)
        save_model(result.model, dst)
    elif tool == "onnxsim":
        model, ok = onnxsim.simplify(onnx.load(src))
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        onnx.save(model, dst)
    elif tool == "onnxslim":
        onnx.save(onnxslim.slim(onnx.load(src)), dst)
    elif tool == "ort-basic":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = dst
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    else:
        raise ValueError(tool)
    return time.perf_counter() - start


def _child(tool: str, src: str, dst: str, queue: multiprocessing.Queue) -> None:
    try:
        queue.put(("ok", _optimize(tool, src, dst)))
    except BaseException as error:  # reported to the parent as the tool's failure
        queue.put(("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                            f" [{traceback.format_exc().splitlines()[-1][:80]}]"))


def run_tool(tool: str, src: Path, dst: Path, timeout: float) -> tuple[str, float | str]:
    """Run a tool in a child process: ("ok", seconds) or ("crash" | "error", reason)."""
    # spawn, not fork: the parent already holds ORT thread pools, which a forked child could deadlock on.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(tool, str(src), str(dst), queue))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return "crash", f"timed out after {timeout:.0f}s"
    if not queue.empty():
        status, value = queue.get()
        return ("ok", value) if status == "ok" else ("crash", value)
    return "crash", f"process died (exit code {process.exitcode})"


def _node_count(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        count += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _node_count(attr.g)
            for sub in attr.graphs:
                count += _node_count(sub)
    return count


def _session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = _session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def _latency_ms(path: Path, feeds: dict[str, np.ndarray], runs: int) -> float:
    session = _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _difference(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    if len(reference) != len(candidate):
        raise ValueError("different number of outputs")
    worst_abs = worst_rel = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"output shape {cand.shape} instead of {ref.shape}")
        diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
        worst_abs = max(worst_abs, max_abs)
        worst_rel = max(worst_rel, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")))
    return worst_abs, worst_rel


def bench_model(name: str, size: str, zoo_dir: Path, work: Path, tools: tuple[str, ...], runs: int,
                timeout: float, repeat: int = 1) -> list[Row]:
    from tools.zoo import build, example_inputs  # imported here: the tool child processes need no torch

    source = build(name, zoo_dir, size=size)
    feeds = example_inputs(name, size, batch=2, seed=1)
    reference = _run(source, feeds)
    rows = []
    for tool in tools:
        row = Row(name, tool)
        rows.append(row)
        target = source if tool == "original" else work / f"{name}-{size}.{tool}.onnx"
        if tool != "original":
            seconds = []
            for _ in range(repeat):
                status, value = run_tool(tool, source, target, timeout)
                if status != "ok":
                    row.status, row.detail = status, str(value)
                    break
                seconds.append(float(value))
            if row.status != "ok":
                continue
            row.seconds = statistics.median(seconds)
        proto = onnx.load(str(target), load_external_data=False)
        row.nodes = _node_count(proto.graph)
        row.domains = tuple(sorted({n.domain for n in proto.graph.node} - {"", "ai.onnx"}))
        row.bytes = sum(p.stat().st_size for p in target.parent.glob(target.name + "*"))
        try:
            row.max_abs, row.max_rel = _difference(reference, _run(target, feeds))
            row.latency_ms = _latency_ms(target, feeds, runs)
        except Exception as error:  # the result does not run (frozen batch, contrib op missing...)
            row.status, row.detail = "error", f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    _check_bar(rows)
    return rows


def _check_bar(rows: list[Row]) -> None:
    by_tool = {row.tool: row for row in rows}
    ours, original = by_tool.get("edgeopt"), by_tool.get("original")
    if ours is None or original is None:
        return
    if ours.status != "ok":
        ours.bar = ["edgeopt failed"]
        return
    peers = [by_tool[t] for t in PEERS if t in by_tool and by_tool[t].nodes is not None]
    fewest = min((p.nodes for p in peers), default=None)
    if fewest is not None and ours.nodes > fewest:  # type: ignore[operator]
        best = [p for p in peers if p.nodes == fewest]
        why = "".join(f" ({p.tool} uses {'/'.join(p.domains)} ops)" for p in best if p.domains)
        ours.bar.append(f"nodes {ours.nodes} > {fewest}{why}")
    if ours.max_rel is None or ours.max_rel > REL_TOLERANCE:
        ours.bar.append(f"rel diff {ours.max_rel}")
    if ours.bytes is not None and original.bytes is not None and ours.bytes > original.bytes:
        ours.bar.append("file grew")
    slim = by_tool.get("onnxslim")
    if slim is not None and slim.seconds is not None and ours.seconds is not None \
            and ours.seconds > TIME_FACTOR * slim.seconds:
        ours.bar.append(f"time {ours.seconds:.2f}s > {TIME_FACTOR:g}x onnxslim")


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> list[list[str]]:
    header = ["model", "tool", "nodes", "MB", "wall s", "max abs diff", "max rel diff", "ORT ms", "bar"]
    body = [header]
    for row in rows:
        if row.status == "crash":
            body.append([row.model, row.tool, "crash", "-", "-", "-", "-", "-", row.detail[:60]])
            continue
        diff_abs = _fmt(row.max_abs, ".1e") if row.status == "ok" else "error"
        diff_rel = _fmt(row.max_rel, ".1e") if row.status == "ok" else row.detail[:60]
        bar = ("ok" if not row.bar else "MISS: " + "; ".join(row.bar)) if row.tool == "edgeopt" else ""
        if row.domains:
            bar = f"{bar}; " * bool(bar) + f"uses {'/'.join(row.domains)} ops"
        body.append([row.model, row.tool, _fmt(row.nodes, "d"), _fmt(row.bytes and row.bytes / 2**20, ".2f"),
                     _fmt(row.seconds, ".2f"), diff_abs, diff_rel, _fmt(row.latency_ms, ".2f"), bar])
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.simplify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--only", default="", help="comma-separated zoo model names (default: all)")
    parser.add_argument("--zoo-dir", type=Path, default=None, help="where zoo models are built/cached")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as markdown here")
    parser.add_argument("--runs", type=int, default=10, help="timed ORT runs per result (median)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh child processes per tool and model; the wall time is their median")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a tool may take per model")
    args = parser.parse_args(argv)
    from tools.zoo import ZOO

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(ZOO)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        zoo_dir = args.zoo_dir or Path(tmp) / "zoo"
        work = Path(tmp) / "results"
        work.mkdir()
        for name in names:
            print(f"... {name}", file=sys.stderr, flush=True)
            rows.extend(bench_model(name, args.size, zoo_dir, work, TOOLS, args.runs, args.timeout,
                                    max(1, args.repeat)))
    body = table(rows)
    print(render_text(body, left={0, 1, 8}))
    misses = [r for r in rows if r.tool == "edgeopt" and r.bar]
    print(f"\nbar met on {sum(1 for r in rows if r.tool == 'edgeopt') - len(misses)}"
          f"/{sum(1 for r in rows if r.tool == 'edgeopt')} models")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
