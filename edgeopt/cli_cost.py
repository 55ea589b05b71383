"""`edgeopt estimate` and `edgeopt calibrate`: the cost model from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgeopt.cli import PluginOption, app, console
from edgeopt.ir.errors import UserError


def _bindings(dims: list[str] | None) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in dims or []:
        name, _, value = item.partition("=")
        if not name or not value.strip().isdigit():
            raise UserError(f"--dim '{item}': expected NAME=INT, e.g. --dim sequence=128")
        result[name.strip()] = int(value)
    return result


def _precision_map(model, precision: str | None) -> dict[str, str] | None:
    """--precision int8 applies to every compute node (conv, gemm); None keeps the graph's own."""
    if precision is None:
        return None
    from edgeopt.targets.cost.kernels import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"--precision '{precision}': unknown (known: {', '.join(PRECISIONS)})")
    ops = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU"}
    return {node.name: precision for node in model.graph if node.op_type in ops and node.name}


@app.command("estimate")
def estimate_command(
    model: Annotated[Path, typer.Argument(help="The ONNX model to estimate.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Hardware target name or .toml file.")] = "host-cpu",
    backend: Annotated[str | None, typer.Option("--backend", help="Backend (default: the target's).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="Run every conv/matmul at fp32, fp16, "
                                                  "int8 or int4 (default: the model's own).")] = None,
    dim: Annotated[list[str] | None, typer.Option("--dim", help="Bind a symbolic dim, NAME=INT "
                                                  "(repeatable; unbound dims are 1).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also run the model on the backend (this machine "
                                          "only) and print measured vs predicted.")] = False,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="Use this calibration file instead "
                                                     "of the cached one.")] = None,
    top: Annotated[int, typer.Option("--top", help="Show this many kernels (largest first; 0 = all, in "
                                     "execution order).")] = 0,
    plugin: PluginOption = None,
) -> None:
    """Predict per-kernel and total latency, peak activation memory, weights and energy of MODEL on a target."""
    from edgeopt.driver import load_plugins
    from edgeopt.ir import load_model
    from edgeopt.targets import get_target
    from edgeopt.targets.cost import CostModel

    load_plugins(list(plugin or []))
    spec = get_target(target)
    loaded = load_model(model)
    bindings = _bindings(dim)
    cost = CostModel(spec, backend, calibration, bindings=bindings)
    estimate = cost.estimate(loaded, _precision_map(loaded, precision))
    rows = estimate.kernels
    if top:
        rows = sorted(rows, key=lambda k: -k.seconds)[:top]
    table = Table("#", "kernel", "ops", "class", "prec", "MFLOPs", "KB", "bound", "ms",
                  title=f"edgeopt estimate {model.name} → {spec.name} ({cost.backend})")
    index = {id(item): i for i, item in enumerate(estimate.kernels)}
    for item in rows:
        k = item.kernel
        table.add_row(str(index[id(item)]), escape(k.name[-48:]), escape(k.ops[:40]), k.kind, k.precision,
                      f"{k.flops / 1e6:.2f}", f"{k.bytes / 1024:.1f}",
                      "dispatch" if k.kind in ("free", "shape") else item.line.bound, f"{item.seconds * 1e3:.3f}")
    console.print(table)
    source = f"calibrated ({escape(str(estimate.calibration))})" if estimate.calibration else \
        "uncalibrated defaults (run `edgeopt calibrate` to measure this target)"
    energy = f"{estimate.energy_j * 1e3:.2f} mJ" if estimate.energy_j is not None else "n/a (no power figure)"
    console.print(f"latency {estimate.latency_s * 1e3:.3f} ms ({len(estimate.kernels)} kernels, "
                  f"{len(loaded.graph)} nodes, {estimate.flops / 1e9:.3f} GFLOPs), peak activations "
                  f"{estimate.peak_activation_bytes / 2**20:.2f} MiB, weights {estimate.weight_bytes / 2**20:.2f} MiB, "
                  f"energy {energy}; {source}")
    if compare:
        measured, speed = _measure(spec, cost, model, loaded, bindings)
        error = estimate.latency_s / measured - 1
        console.print(f"measured {measured * 1e3:.3f} ms on {cost.backend} vs predicted "
                      f"{estimate.latency_s * 1e3:.3f} ms: error {error * 100:+.1f}%")
        if speed is not None:
            # The calibration's reference networks, timed again now: a shift of the machine's own
            # speed (other jobs, throttling) shows apart from the cost model's error.
            console.print(f"machine speed: the calibration's reference networks run x{speed:.3f} their time at "
                          f"calibration; error at that speed {(estimate.latency_s * speed / measured - 1) * 100:+.1f}%")


def _measure(spec, cost, path: Path, loaded, bindings: dict[str, int]) -> tuple[float, float | None]:
    """Measured seconds of ``path``, and how much slower the machine runs than at calibration (or None)."""
    from edgeopt.ir import ReferenceExecutor
    from edgeopt.targets.calibration.reference import reference_seconds, speed_ratio
    from edgeopt.targets.calibration.runners import make_runner

    if spec.detect != "host":
        raise UserError(f"--compare: target '{spec.name}' is not this machine; only host-cpu can be measured here")
    threads = cost.calibration.threads if cost.calibration is not None else 2
    clock = cost.calibration.clock if cost.calibration is not None else "wall"  # measure as calibration did
    runner = make_runner(cost.backend, "cpu", threads, budget_s=1.0, clock=clock)
    feeds = ReferenceExecutor().generate_inputs(loaded, bindings=bindings)
    measured = runner.time(path, feeds)
    if cost.calibration is None or not cost.calibration.reference_s:
        return measured, None
    return measured, speed_ratio(reference_seconds(runner, rounds=1), cost.calibration)


@app.command("calibrate")
def calibrate_command(
    target: Annotated[str, typer.Option("--target", "-t", help="Target to calibrate (host-cpu on this machine; "
                                        "a device target when run on that device).")] = "host-cpu",
    backend: Annotated[str | None, typer.Option("--backend", help="onnxruntime, openvino, tensorrt "
                                                "(default: the target's).")] = None,
    budget_s: Annotated[float | None, typer.Option("--budget-s", help="Wall-time budget in seconds "
                                                   "(default 480, --quick 30).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small, fast calibration (about 30 s).")] = False,
    threads: Annotated[int, typer.Option("--threads", help="Threads the backend may use (keep it equal to "
                                         "deployment).")] = 2,
    statistic: Annotated[str, typer.Option("--statistic", help="Per-run time statistic: median, or p25 (lower "
                                           "quartile) on a machine other jobs load.")] = "median",
    clock: Annotated[str, typer.Option("--clock", help="wall, or cpu: one-thread CPU time, the latency on a core "
                                       "of its own (steady on a machine other jobs share).")] = "wall",
    import_file: Annotated[Path | None, typer.Option("--import", help="Import a calibration file made on "
                                                     "another machine instead of measuring.")] = None,
    plugin: PluginOption = None,
) -> None:
    """Measure kernel micro-benchmarks on this machine and fit the target's cost model (or --import one)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeopt.driver import load_plugins
    from edgeopt.targets import get_target
    from edgeopt.targets.calibration import calibrate, import_calibration

    load_plugins(list(plugin or []))
    spec = get_target(target)
    if import_file is not None:
        path = import_calibration(import_file, spec)
        console.print(f"imported calibration for [bold]{spec.name}[/] → {escape(str(path))}")
        return
    chosen = backend or spec.default_backend
    if chosen not in spec.backends:
        raise UserError(f"target '{spec.name}' has no backend '{chosen}' (it offers: {', '.join(spec.backends)})")
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def report(what: str, done: int, total: int) -> None:
            stage = what.split(":")[0]
            if stage not in tasks:
                tasks[stage] = bar.add_task(what, total=total)
            bar.update(tasks[stage], completed=done, total=total, description=what)

        if statistic not in ("median", "p25"):
            raise UserError(f"--statistic '{statistic}': expected median or p25")
        if clock not in ("wall", "cpu"):
            raise UserError(f"--clock '{clock}': expected wall or cpu")
        result = calibrate(spec, chosen, budget_s=budget_s, quick=quick, threads=threads, progress=report,
                           statistic=statistic, clock=clock)
    scores = result.validation["heldout"]
    table = Table("method", "held-out mean |log err|", "within ±10%", "MAPE", title="kernel predictors (5-fold)")
    for method, score in scores.items():
        mark = " ←" if method == result.method else ""
        table.add_row(method + mark, f"{score['mean_abs_log_error']:.3f}", f"{score['within_10pct'] * 100:.0f}%",
                      f"{score['mape'] * 100:.1f}%")
    console.print(table)
    comp = result.composition
    inside = result.validation.get("in_model_samples", 0)
    console.print(f"{len(result.samples)} kernels measured ({inside} inside the composition networks, "
                  f"{result.validation['failed']} failed), method "
                  f"{result.method}, run overhead {comp['run_overhead_s'] * 1e6:.0f} µs, scale {comp['scale']:.3f}, "
                  f"per kernel {comp['per_kernel_s'] * 1e6:.1f} µs; {result.wall_s:.1f} s")
    console.print(f"wrote [bold]{escape(str(result.path))}[/]")
