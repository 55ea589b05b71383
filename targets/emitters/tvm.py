"""TVM emitter: Relax ONNX import, MetaSchedule-tuned build, exported library, Relax VM validation.

Steps: edgeopt's ``cleanup`` first (TVM 0.27's ONNX frontend rejects Reshape targets computed
at run time; folded, they import), ``tvm.relax.frontend.onnx.from_onnx`` with symbolic dims
bound (batch 1), on CPUs the convs converted to NHWC (``layout`` option), the CPU/GPU
legalization and fusion TVM's pipeline does, then the schedules:
MetaSchedule records from the tuning database for this target and model (tuning more when the
budget asks and the code runs here), DLight's default rules for what has no record, and
``tvm.compile``. The library is exported as ``model.so`` (a cross compiler links aarch64
builds; without one a ``model.tar`` of objects is written for linking on the device).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.passes import PassContext, get_pass
from edgeopt.passes.options import option
from edgeopt.targets.emitters import tvm_tuning
from edgeopt.targets.emitters.base import EmitResult, Emitter, register_emitter
from edgeopt.targets.emitters.common import (
    by_position,
    check_dim_names,
    compare,
    is_quantized,
    onnx_bytes,
    op_name,
    time_call,
)
from edgeopt.targets.host import read_host

LAYOUTS = ("nhwc", "nchw")
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc", "arm": "arm-linux-gnueabihf-gcc"}


@dataclass
class TvmOptions:
    target: str = option("llvm -mcpu=native", help="TVM target, CLI form: llvm -mtriple=… -mcpu=…, cuda -arch=sm_87")
    host: str = option("", help="host target of a GPU build (the CPU that drives it)")
    trials: int = option(0, help="MetaSchedule trial budget for this compile (0: database records + defaults)")
    trials_per_task: int = option(0, help="trial cap per tuning task (0: budget / tasks, at least 32)")
    tuning_seconds: int = option(0, help="stop starting tuning batches after this many seconds (0: no limit)")
    num_cores: int = option(0, help="cores the tuned code uses (0: this machine's, for host builds)")
    cross_compiler: str = option("", help="C compiler that links a cross build (default: <triple>-gcc)")
    dims: str = option("", help="sizes of symbolic dims in the build, e.g. sequence=128 (unnamed ones: 1)")
    layout: str = option("nhwc", help="conv layout of CPU builds: nhwc (channels innermost, which MetaSchedule"
                         " vectorizes) or nchw (the model's own)")


@register_emitter("tvm")
class TvmEmitter(Emitter):
    """TVM Relax library (.so) built for the target, tuned with MetaSchedule."""

    description = "TVM Relax library (.so), MetaSchedule-tuned"
    Options = TvmOptions

    def __init__(self) -> None:
        self._executable: Any = None  # the build, when it runs here
        self._prepared: Any = None  # the imported module, for a host build when it does not
        self._payload: bytes | None = None
        self._quantized = False
        self._input_names: list[str] = []
        self._layout = "nhwc"

    def unsupported_ops(self, model: ir.Model) -> list[str]:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

        # The frontend's own converter table (If is converted outside it); it raises only
        # after parsing the graph, so the table is checked here up front.
        known = set(_get_convert_map()) | {"If", "Constant"}
        missing = set()
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.domain not in ("", "ai.onnx") or node.op_type not in known:
                missing.add(op_name(node))
        return sorted(missing)

    def emit(self, model: ir.Model, folder: Path, options: Mapping[str, Any]) -> EmitResult:
        import tvm

        opts: TvmOptions = self.options(options)
        if opts.layout not in LAYOUTS:
            raise UserError(f"backend 'tvm': layout '{opts.layout}': expected one of {', '.join(LAYOUTS)}")
        self._layout = opts.layout
        spec = tvm_tuning.parse_target(opts.target, opts.host, opts.num_cores)
        notes: list[str] = []
        if spec["kind"] == "cuda" and shutil.which("nvcc") is None:
            # TVM compiles CUDA kernels with nvcc; without it the target's host CPU is built.
            if not opts.host:
                raise UserError(f"backend 'tvm': target '{opts.target}' needs nvcc (CUDA toolkit) on PATH")
            notes.append(f"nvcc not found: built for the host CPU ({opts.host}) instead of {opts.target}")
            spec = tvm_tuning.parse_target(opts.host, num_cores=opts.num_cores)
        target = tvm.target.Target(spec)
        here = tvm_tuning.runs_here(spec)
        # Before TVM runs anything: tuning measurements and the validation run use every core.
        wanted = (tvm_tuning.device_threads(spec) if here else None) or read_host().physical_cores
        threads = tvm_tuning.use_threads(wanted)
        if threads != wanted:
            notes.append(f"TVM's runtime runs {threads} threads here (TVM_NUM_THREADS), not {wanted}")

        clean = model.clone()
        cleanup = get_pass("cleanup")
        cleanup(cleanup.Options(), PassContext()).run(clean, PassContext())
        payload = onnx_bytes(clean)
        if payload is None:
            raise UserError("backend 'tvm': models above 2 GB are not supported by the Relax ONNX importer")
        shapes = _bound_shapes(clean, _parse_dims(opts.dims))
        self._input_names = list(shapes)
        mod = _import(payload, shapes)
        self._prepared, self._payload, self._quantized = mod, payload, is_quantized(model)

        prepared = _prepare(mod, target, opts.layout)
        work = (tvm_tuning.cache_root() / tvm_tuning.target_slug(spec)
                / tvm_tuning.model_hash(payload, shapes, _preparation(target, opts.layout)))
        record = tvm_tuning.TuningRecord.load(work)
        if opts.trials > record.trials:
            if here:
                asked, seconds, tasks = tvm_tuning.tune(prepared, target, work, opts.trials - record.trials,
                                                        opts.trials_per_task, opts.tuning_seconds)
                record = tvm_tuning.TuningRecord(record.trials + asked, record.seconds + seconds, tasks)
                record.save(work, spec)
                notes.append(f"tuned {asked} MetaSchedule trials over {tasks} tasks in {seconds:.0f} s")
            else:
                notes.append("tuning needs the target CPU; build it there (records copied into"
                             f" {work} are applied here)")
        elif record.trials:
            notes.append(f"reused {record.trials} tuning trials from {work}")
        tuned = tvm_tuning.has_records(work)
        executable = _build(prepared, target, work if tuned else None)
        notes.append(f"schedules: {'MetaSchedule records + ' if tuned else ''}DLight defaults;"
                     f" input shapes {shapes}")

        folder.mkdir(parents=True, exist_ok=True)
        artifact, export_note = _export(executable, spec, folder, opts.cross_compiler)
        if export_note:
            notes.append(export_note)
        device = tvm_tuning.device_threads(spec)
        config = {"library": artifact.name, "target": spec, "input_shapes": shapes, "tvm_version": tvm.__version__,
                  "tuning": {"database": str(work), "trials": record.trials, "seconds": round(record.seconds, 1)},
                  "threads": device,
                  "load": "ex = tvm.runtime.load_module('model.so'); vm = tvm.relax.VirtualMachine(ex, tvm.cpu())",
                  # TVM's pool otherwise takes half the logical CPUs on x86 (see tvm_tuning.use_threads).
                  "environment": {"TVM_NUM_THREADS": str(device or "<the device's core count>")}}
        config_path = folder / "tvm_config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        self._executable = executable if here else None
        return EmitResult("tvm", artifact, files=[artifact, config_path], notes=notes)

    def validate(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], *, measure: bool = True) -> None:
        import tvm
        from tvm import relax

        executable = self._executable
        if executable is None:
            # A cross or GPU build cannot run here: the same Relax module is built for this
            # CPU with default schedules and checked instead (the frontend and lowering are shared).
            host = tvm.target.Target(tvm_tuning.parse_target("llvm -mcpu=native"))
            executable = _build(_prepare(self._prepared, host, self._layout), host, None)
            result.notes.append("validated a build of the same module for this CPU")
        vm = relax.VirtualMachine(executable, tvm.cpu())
        args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[name])) for name in self._input_names]
        began = time.perf_counter()
        try:
            outputs = _flatten(vm["main"](*args))
        except Exception as error:
            raise UserError(f"backend 'tvm': Relax VM run failed: {str(error).strip().splitlines()[-1]}") from None
        first_s = time.perf_counter() - began
        result.validation = compare(reference, by_position(reference, outputs), reduced=self._quantized)
        if measure and self._executable is not None:
            # The validation run was the first warm-up. Untuned full-size CNNs take many seconds a
            # run: timing them like a tuned build (3 warm-ups + up to 20 runs) took minutes each.
            warmup, repeats = (0, 1) if first_s > 5 else (1, 3) if first_s > 0.5 else (3, 20)
            result.latency_ms = time_call(lambda: vm["main"](*args), warmup=warmup, repeats=repeats)
            if repeats == 1:
                result.notes.append(f"timed one run (the validation run took {first_s:.1f} s)")
            result.validation["onnxruntime_latency_ms"] = _ort_latency(self._payload, inputs)
            result.notes.append(f"latency here: TVM {result.latency_ms:.2f} ms,"
                                f" ONNX Runtime {result.validation['onnxruntime_latency_ms']:.2f} ms")


def _parse_dims(text: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"backend 'tvm': dims '{item}': expected NAME=SIZE with SIZE >= 1")
        sizes[name.strip()] = int(value)
    return sizes


def _bound_shapes(model: ir.Model, sizes: Mapping[str, int] | None = None) -> dict[str, list[int]]:
    """Static input shapes for the importer: symbolic dims (batch, sequence) bound to ``sizes``, else 1."""
    initializers = set(model.graph.initializers)
    sizes = dict(sizes or {})
    shapes = {}
    used: set[str] = set()
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        if value.shape is None:
            raise UserError(f"backend 'tvm': graph input '{value.name}' has no shape")
        dims = []
        for dim in value.shape:
            if isinstance(dim, int):
                dims.append(dim)
                continue
            used.add(str(dim))
            dims.append(sizes.get(str(dim), 1))
        shapes[value.name] = dims
    check_dim_names("tvm", "dims", set(sizes), used)
    return shapes


def _import(payload: bytes, shapes: dict[str, list[int]]) -> Any:
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(onnx.load_from_string(payload), shape_dict=shapes, keep_params_in_input=False)
    except Exception as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise UserError(f"backend 'tvm': Relax ONNX import failed: {lines[-1] if lines else type(error).__name__}"
                        ) from None
    return relax.transform.DecomposeOpsForInference()(_clip_as_relax_ops(mod))


def _clip_as_relax_ops(mod: Any) -> Any:
    """The frontend's Clip (``emit_te(topi.maximum)`` / ``topi.minimum``) as ``R.maximum`` / ``R.minimum``.

    A ``call_tir`` is opaque to ConvertLayout, so every ReLU6 of an NHWC MobileNet was wrapped in
    two transposes back to NCHW and forth: 36 transposes, 3.1 of its 10.0 ms here. The Relax ops
    compute the same broadcast max/min and carry the layout through.
    """
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    binary = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != call_tir or not isinstance(call.args[1], relax.Tuple):
                return call
            callee, args = call.args[0], call.args[1].fields
            op = binary.get(callee.name_hint.rstrip("0123456789"))
            func = mod[callee] if callee in mod.functions else None
            # topi's maximum/minimum as emit_te makes them: two inputs, one output buffer.
            if op is None or len(args) != 2 or func is None or len(func.params) != 3:
                return call
            return op(args[0], args[1])

    rewriter = Rewriter(mod)
    for var, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mod[var] = rewriter.visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _preparation(target: Any, layout: str) -> str:
    """What the tuned TIR was prepared with: records made for another preparation never apply."""
    return f"{tvm_tuning.PREPARATION}-{layout}" if target.kind.name == "llvm" else tvm_tuning.PREPARATION


def _prepare(mod: Any, target: Any, layout: str = "nhwc") -> Any:
    """Legalized, fused TIR: what MetaSchedule tunes and what its records are applied to.

    On CPUs convolutions are first converted to NHWC activations and OHWI weights (ConvertLayout
    transposes at the model's edges and carries the layout through elementwise ops and pools):
    with channels innermost a conv is a GEMM whose output channels MetaSchedule vectorizes with
    contiguous loads. Measured here, a 512-channel 3x3 conv on a 7x7 map, 64 trials each: NCHW
    3.77 ms, NHWC 1.11 ms (ONNX Runtime 0.57 ms).

    The weight buffers are marked layout-free, so a tuned schedule may keep the weights
    in a packed layout its inner loops read contiguously (MetaSchedule's RewriteLayout); the
    packing is split out and folded into the constants after the records are applied
    (:func:`_build`). TVM's own CPU tuning pipeline does the same (``cpu_weight_prepack``).
    """
    import tvm
    from tvm import relax

    passes = [*relax.pipeline.library_dispatch_passes(target), *relax.pipeline.legalize_passes(target)]
    if target.kind.name == "llvm":
        if layout == "nhwc":
            passes.insert(0, relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}))
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target:
        return tvm.transform.Sequential(passes)(mod)


def _build(prepared: Any, target: Any, database_dir: Path | None) -> Any:
    """Apply tuning records (if any), DLight defaults for the rest, and compile."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    mod = prepared
    with target:
        if database_dir is not None:
            with ms.database.JSONDatabase(work_dir=str(database_dir)):
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            # Packed weight layouts chosen by the records: the packing becomes its own function on
            # the constant weights, and FoldConstant runs it once here instead of on every call.
            mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                            relax.transform.FoldConstant()])(mod)
        if target.kind.name == "cuda":
            rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                     dl.gpu.Fallback()]
        else:
            # Not dl.cpu.GEMV: it vectorizes the rows of an inner reduction (a strided gather per
            # lane, 64-128 lanes, unrolled), which LLVM took over 11 minutes to compile for the
            # 1x1 downsample convs of a small ResNet-50, for no measured gain on ResNet-18.
            rules = [dl.cpu.Reduction()]
        mod = dl.ApplyDefaultSchedule(*rules)(mod)
    try:
        return tvm.compile(mod, target=target)
    except Exception as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise UserError(f"backend 'tvm': build failed: {lines[-1] if lines else type(error).__name__}") from None


def _export(executable: Any, spec: dict[str, Any], folder: Path, cross_compiler: str) -> tuple[Path, str]:
    from tvm.support import cc

    cpu = spec.get("host", spec) if spec["kind"] == "cuda" else spec
    triple = str(cpu.get("mtriple", ""))
    if not triple or tvm_tuning.runs_here({"kind": "llvm", "mtriple": triple}):
        path = folder / "model.so"
        executable.export_library(str(path))
        return path, ""
    compiler = cross_compiler or CROSS_COMPILERS.get(triple.split("-")[0], f"{triple}-gcc")
    if shutil.which(compiler):
        path = folder / "model.so"
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
        return path, f"linked with {compiler}"
    path = folder / "model.tar"
    executable.export_library(str(path))
    return path, (f"{compiler} not found: wrote object files (model.tar) to link on the device with"
                  " `gcc -shared -o model.so *.o`; or install it (apt-get install gcc-aarch64-linux-gnu)")


def _flatten(value: Any) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [array for item in value for array in _flatten(item)]


def _ort_latency(payload: bytes | None, inputs: Mapping[str, np.ndarray]) -> float:
    """ONNX Runtime's latency on the same (cleaned) model, for the report's comparison."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in inputs.items() if k in names}
    return time_call(lambda: session.run(None, feeds))
