"""The compile driver: load, run the pipeline, emit, and write one folder atomically.

This is the thin layer that ties ir, passes and targets together; the CLI
calls it and so can Python code. Everything is written into a temporary
sibling folder and renamed into place at the end, so a failure never leaves a
half-written output.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.artifacts import write_manifest, write_report
from edgeopt.ir.errors import TargetError, UserError
from edgeopt.ir.model_io import load_model
from edgeopt.ir.reference import ReferenceExecutor, compare_outputs
from edgeopt.passes import (
    DeltaInstrument,
    Instrument,
    IRCheckInstrument,
    PassContext,
    PassManager,
    PipelineResult,
    PrintAfterInstrument,
    ReproducerInstrument,
    VerifyInstrument,
    instantiate,
    load_entry_point_plugins,
    load_pipeline_config,
    load_plugin_file,
    parse_pipeline,
)
from edgeopt.targets import get_emitter, get_target
from edgeopt.targets.cost import CostModel
from edgeopt.targets.emitters.select import choose_backend

DEFAULT_PIPELINE = "cleanup,fuse,cleanup"
# For the onnxruntime backend transformer blocks also become ONNX Runtime's contrib ops (its
# fastest kernels), which no other runtime runs; fuse-ort checks ctx.backend itself as well.
ORT_TAIL = "fuse-ort,cleanup"
ONNXRUNTIME_PIPELINE = f"cleanup,fuse,{ORT_TAIL}"


def default_pipeline(backend: str | None) -> str:
    """What `compile` runs when no pipeline is given; ``backend`` is None while `--backend auto` has not chosen."""
    return ONNXRUNTIME_PIPELINE if backend == "onnxruntime" else DEFAULT_PIPELINE


@dataclass
class CompileRequest:
    model: Path
    target: str = "host-cpu"
    passes: str | None = None
    config: Path | None = None
    out: Path | None = None
    backend: str | None = None  # None: the target's default; "auto": TVM only where measured faster
    backend_options: dict[str, str] = field(default_factory=dict)  # over [backend_options.<backend>]
    verify: bool = False
    plugins: list[Path] = field(default_factory=list)
    print_after: set[str] | None = None
    print_after_all: bool = False
    reproducer_dir: Path | None = None
    measure: bool = True
    force: bool = True


@dataclass
class CompileResult:
    out: Path
    pipeline: PipelineResult
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float


def load_plugins(files: list[Path]) -> None:
    """Entry-point plugins first, then the files named on the command line."""
    load_entry_point_plugins()
    for path in files:
        load_plugin_file(path)


def resolve_pipeline(request: CompileRequest, ctx: PassContext) -> list:
    if request.passes and request.config:
        raise UserError("give either --passes or --config, not both")
    if request.config:
        specs = load_pipeline_config(request.config)
    else:
        specs = parse_pipeline(request.passes or default_pipeline(ctx.backend))
    return instantiate(specs, ctx)


def default_out(model_path: Path, target: str) -> Path:
    return model_path.parent / f"{model_path.stem}.{target}.edgeopt"


def compile_model(request: CompileRequest,
                  progress: Callable[[str], None] | None = None) -> CompileResult:
    """Compile ``request.model`` for ``request.target`` into ``request.out``."""
    began = time.perf_counter()
    say = progress or (lambda _message: None)
    load_plugins(request.plugins)
    target = get_target(request.target)
    backend = request.backend or target.default_backend
    if backend != "auto":
        emitter = _emitter_for(target, backend, request.backend is None)
    out = Path(request.out) if request.out else default_out(request.model, target.name)
    if out.exists() and not request.force:
        raise UserError(f"{out}: output folder exists (use --force to replace it)")

    say(f"loading {request.model}")
    model = load_model(request.model)
    # The target's cost model (calibrated when `edgeopt calibrate` saved a file) for passes to query.
    chosen = None if backend == "auto" else backend
    ctx = PassContext(target=target, cost=CostModel(target, chosen), backend=chosen)
    passes = resolve_pipeline(request, ctx)  # bad pass names fail before any heavy work

    executor = ReferenceExecutor()
    lacking = get_emitter("onnxruntime").unsupported_ops(model)  # the reference run is ONNX Runtime's CPU
    if lacking:
        raise UserError(f"{request.model}: the reference run (ONNX Runtime CPU) cannot run op(s) {', '.join(lacking)}")
    inputs = executor.generate_inputs(model)
    ctx.reference_inputs = inputs
    say("running the reference model")
    reference = executor.run(model, inputs)
    input_model = model.clone()

    # Staged next to the destination so the final rename stays on one filesystem.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        instruments: list[Instrument] = [DeltaInstrument(), IRCheckInstrument()]
        if request.verify:
            instruments.append(VerifyInstrument(inputs))
        if request.print_after_all or request.print_after:
            instruments.append(PrintAfterInstrument(None if request.print_after_all else request.print_after))
        reproducers = request.reproducer_dir or Path.cwd() / "edgeopt-reproducers"
        instruments.append(ReproducerInstrument(reproducers))
        say(f"running {len(passes)} pass(es)")
        result = PassManager(passes, instruments, ctx).run(model)
        model = result.model

        auto_notes: list[str] = []
        if backend == "auto":
            say("measuring onnxruntime and tvm")
            backend, auto_notes = choose_backend(target, model, inputs, reference, request.backend_options)
            emitter = _emitter_for(target, backend, False)
            if backend == "onnxruntime" and not (request.passes or request.config):
                # The default pipeline ran before the choice, without ONNX Runtime's contrib-op fusions.
                ctx.backend = backend
                tail = PassManager(instantiate(parse_pipeline(ORT_TAIL), ctx), instruments, ctx).run(model)
                result = PipelineResult(tail.model, result.records + tail.records,
                                        f"{result.pipeline},{tail.pipeline}", result.seconds + tail.seconds)
                model = result.model
        emitter.check(model)
        say(f"emitting for {backend}")
        emitted = emitter.emit(model, staging, {**target.backend_options.get(backend, {}), **request.backend_options})
        emitted.notes[:0] = auto_notes
        # The ONNX Runtime artifact is this IR already saved: run the file rather than serialize again.
        runnable = emitted.artifact if backend == "onnxruntime" else model
        final = compare_outputs(reference, executor.run(runnable, inputs), atol=1e-4, rtol=1e-3)
        emitter.validate(emitted, inputs, reference, measure=request.measure and target.name == "host-cpu")
        seconds = time.perf_counter() - began
        report = write_report(staging, request, target, result, emitted, final, seconds)
        cost = ctx.cost if ctx.cost.backend == backend else CostModel(target, backend)  # "auto" picked another
        manifest = write_manifest(staging, request.model, input_model, model, target, emitted, final,
                                  predicted_latency_ms=cost.latency(model) * 1e3)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(out, result, manifest, report, time.perf_counter() - began)


def _emitter_for(target: Any, backend: str, is_default: bool) -> Any:
    if backend not in target.backends:
        raise UserError(f"target '{target.name}' has no backend '{backend}'"
                        f" (it offers: {', '.join(target.backends)})")
    try:
        return get_emitter(backend)
    except TargetError as error:
        if not is_default:
            raise
        others = [b for b in target.backends if b != backend]
        raise TargetError(f"target '{target.name}' defaults to backend '{backend}', which edgeopt cannot emit"
                          f" yet; pick --backend {' or '.join(others) or 'onnxruntime'}") from error


def _replace_folder(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an existing ``out`` is swapped out, never half-replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        staging.rename(out)
        return
    backup = out.with_name(f".{out.name}.old")
    if backup.exists():
        shutil.rmtree(backup)
    out.rename(backup)
    try:
        staging.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


