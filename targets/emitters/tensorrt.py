"""TensorRT emitter: a build bundle the device turns into an engine (engines are not portable).

The bundle holds the TensorRT-ready ONNX (INT8 only through the explicit Q/DQ the quantizer
placed; FP16 as a builder flag), ``build_config.json``, ``build_engine.py`` (TensorRT Python
API), the equivalent ``trtexec`` command in ``build_engine.sh`` and a README. TensorRT cannot be
installed here, so the bundle is checked without it: onnx.checker, an ONNX Runtime run of the
bundled ONNX against the reference, every op in TensorRT's ONNX operator list for the chosen
version (data/tensorrt_onnx_ops_<major>.txt), consistent min/opt/max ranges for every dynamic
dim, and ``build_engine.py --dry-run`` in a subprocess. Where ``tensorrt`` imports and a CUDA
GPU is present the engine is also built, run and compared.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.ir.errors import UserError
from edgeopt.passes.options import option
from edgeopt.targets.emitters.base import EmitResult, Emitter, register_emitter
from edgeopt.targets.emitters.common import (
    by_position,
    check_dim_names,
    compare,
    is_quantized,
    op_inventory,
    write_onnx,
)

DATA = Path(__file__).parent / "data"
# build_engine.py --dry-run setting -> build_config.json key: the script must read the bundle's settings.
_SCRIPT_KEYS = (("profiles", "profile"), ("fp16", "fp16"), ("int8", "int8"), ("sparsity", "sparsity"),
                ("workspace_mb", "workspace_mb"), ("dla_core", "dla_core"), ("gpu_fallback", "gpu_fallback"))
_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}  # input index of the weight


@dataclass
class TensorRtOptions:
    version: str = option("10", help="TensorRT major version whose ONNX operator list is checked")
    fp16: bool = option(True, help="allow FP16 kernels (BuilderFlag.FP16 / trtexec --fp16)")
    workspace_mb: int = option(1024, help="workspace memory pool limit in MiB")
    dla_cores: int = option(0, help="DLA cores on the device; >0 builds for DLA core 0")
    gpu_fallback: bool = option(True, help="layers the DLA lacks fall back to the GPU")
    profile: str = option("", help="ranges of symbolic dims, e.g. batch=1:4:8,sequence=16:128:512")
    default_max: int = option(8, help="max of a symbolic dim the profile does not name (min 1, opt 1)")


@cache
def supported_ops(version: str) -> frozenset[str]:
    path = DATA / f"tensorrt_onnx_ops_{version.split('.')[0]}.txt"
    if not path.exists():
        known = sorted(p.stem.rsplit("_", 1)[-1] for p in DATA.glob("tensorrt_onnx_ops_*.txt"))
        raise UserError(f"backend 'tensorrt': no ONNX operator list for TensorRT {version}"
                        f" (known: {', '.join(known)})")
    lines = (line.strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def sparse_2_4_layers(model: ir.Model) -> list[str]:
    """Conv/MatMul/Gemm nodes whose constant weight is 2:4 sparse along the reduction axis.

    TensorRT's sparse kernels need at least 2 zeros in every group of 4 consecutive input
    channels (Conv: axis 1 of OIHW; MatMul: the K axis, rows of the [K, N] weight).
    """
    layers = []
    for node in model.graph:
        index = _WEIGHTED.get(node.op_type)
        if index is None or len(node.inputs) <= index or node.inputs[index] is None:
            continue
        weight = node.inputs[index].const_value
        if weight is None or weight.size < 64:
            continue
        array = weight.numpy()
        if node.op_type in ("Conv", "ConvTranspose"):
            reduced = np.moveaxis(array, 1, -1)
        elif node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            reduced = array  # [N, K]: K is already last
        else:
            reduced = np.moveaxis(array, -2, -1)  # [K, N] -> K last
        if reduced.shape[-1] % 4:
            continue
        groups = reduced.reshape(-1, 4)
        if np.all(np.count_nonzero(groups, axis=1) <= 2):
            layers.append(node.name or node.op_type)
    return layers


def profile_shapes(model: ir.Model, opts: TensorRtOptions) -> dict[str, list[list[int]]]:
    """min/opt/max shapes per input with a symbolic dim; one range per dim name across inputs."""
    ranges: dict[str, tuple[int, int, int]] = {}
    for item in filter(None, (s.strip() for s in opts.profile.split(","))):
        name, _, text = item.partition("=")
        try:
            low, opt, high = (int(v) for v in text.split(":"))
        except ValueError:
            raise UserError(f"backend 'tensorrt': profile '{item}': expected NAME=MIN:OPT:MAX") from None
        if not 1 <= low <= opt <= high:
            raise UserError(f"backend 'tensorrt': profile '{item}': needs 1 <= min <= opt <= max")
        ranges[name.strip()] = (low, opt, high)
    shapes: dict[str, list[list[int]]] = {}
    used: set[str] = set()
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None:
            continue
        dims = list(value.shape)
        if all(isinstance(d, int) for d in dims):
            continue
        triple: list[list[int]] = [[], [], []]
        for dim in dims:
            if isinstance(dim, int):
                for row in triple:
                    row.append(dim)
                continue
            name = str(dim) if dim.value is not None else f"{value.name}_dim"
            used.add(name)
            low, opt, high = ranges.get(name, (1, 1, max(1, opts.default_max)))
            for row, size in zip(triple, (low, opt, high), strict=True):
                row.append(size)
        shapes[value.name] = triple
    check_dim_names("tensorrt", "profile", set(ranges), used)
    return shapes


def profile_problems(model: ir.Model, profile: Mapping[str, list[list[int]]],
                     inputs: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """What is inconsistent in a min/opt/max profile (empty when it is fine).

    Every input with a symbolic dim needs a range; each range matches the input's rank and
    its fixed dims; min <= opt <= max per dim; inputs sharing a dim name share its range; and
    the arrays the bundle was validated with (``inputs``) lie inside the ranges.
    """
    problems: list[str] = []
    seen: dict[str, tuple[int, int, int]] = {}
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None:
            continue
        dims = list(value.shape)
        if all(isinstance(d, int) for d in dims):
            if value.name in profile:
                problems.append(f"input '{value.name}' is static but has a profile")
            continue
        if value.name not in profile:
            problems.append(f"input '{value.name}' has symbolic dims but no min/opt/max shapes")
            continue
        low, opt, high = profile[value.name]
        if not len(low) == len(opt) == len(high) == len(dims):
            problems.append(f"input '{value.name}': profile rank differs from the model's {len(dims)}")
            continue
        for axis, (dim, a, b, c) in enumerate(zip(dims, low, opt, high, strict=True)):
            where = f"input '{value.name}' dim {axis}"
            if isinstance(dim, int):
                if not a == b == c == dim:
                    problems.append(f"{where} is fixed at {dim} but the profile says {a}:{b}:{c}")
                continue
            if not 1 <= a <= b <= c:
                problems.append(f"{where}: needs 1 <= min <= opt <= max, got {a}:{b}:{c}")
            name = str(dim) if dim.value is not None else f"{value.name}_dim"
            if seen.setdefault(name, (a, b, c)) != (a, b, c):
                problems.append(f"{where}: dim '{name}' has range {a}:{b}:{c} here and {seen[name]} elsewhere")
            if inputs is not None and value.name in inputs and not a <= inputs[value.name].shape[axis] <= c:
                problems.append(f"{where}: validated with size {inputs[value.name].shape[axis]}, outside {a}..{c}")
    return problems


def trtexec_command(config: dict[str, Any]) -> list[str]:
    """The trtexec equivalent of build_engine.py with the same settings."""
    command = ["trtexec", f"--onnx={config['onnx']}", f"--saveEngine={config['engine']}",
               f"--memPoolSize=workspace:{config['workspace_mb']}M"]
    command += [flag for flag, on in (("--fp16", config["fp16"]), ("--int8", config["int8"]),
                                      ("--sparsity=enable", config["sparsity"])) if on]
    if config["dla_core"] >= 0:
        command.append(f"--useDLACore={config['dla_core']}")
        if config["gpu_fallback"]:
            command.append("--allowGPUFallback")
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if config["profile"]:
            shapes = ",".join(f"{name}:{'x'.join(map(str, dims[index]))}" for name, dims in config["profile"].items())
            command.append(f"{flag}={shapes}")
    return command


def tensorrt_available() -> bool:
    """TensorRT's Python package and a CUDA GPU (checked through torch, which ships the runtime)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@register_emitter("tensorrt")
class TensorRtEmitter(Emitter):
    """TensorRT build bundle: ONNX + build_engine.py + trtexec command (engine built on the device)."""

    description = "TensorRT bundle: ONNX, build_engine.py, trtexec command"
    Options = TensorRtOptions

    def __init__(self) -> None:
        self.version = TensorRtOptions.version
        self._quantized = False

    def unsupported_ops(self, model: ir.Model) -> list[str]:
        known = supported_ops(self.version)
        return sorted(op for op in op_inventory(model) if op not in known)

    def emit(self, model: ir.Model, folder: Path, options: Mapping[str, Any]) -> EmitResult:
        opts: TensorRtOptions = self.options(options)
        if opts.version.split(".")[0] != self.version:
            self.version = opts.version.split(".")[0]
            self.check(model)  # the up-front check ran against the default version's list
        bundle = folder / "tensorrt"
        bundle.mkdir(parents=True, exist_ok=True)
        files = write_onnx(model, bundle / "model.onnx")
        self._quantized = is_quantized(model)
        sparse = sparse_2_4_layers(model)
        config = {
            "onnx": "model.onnx", "engine": "model.engine", "tensorrt_version": f"{self.version}.x",
            "fp16": opts.fp16, "int8": self._quantized, "sparsity": bool(sparse), "sparse_layers": sparse,
            "workspace_mb": opts.workspace_mb, "dla_core": 0 if opts.dla_cores > 0 else -1,
            "gpu_fallback": opts.gpu_fallback, "profile": profile_shapes(model, opts),
        }
        (bundle / "build_config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(DATA / "build_engine.py", bundle / "build_engine.py")
        command = shlex.join(trtexec_command(config))
        script = bundle / "build_engine.sh"
        script.write_text(f"#!/bin/sh\n# The trtexec equivalent of build_engine.py.\ncd \"$(dirname \"$0\")\"\n"
                          f"exec {command} \"$@\"\n")
        script.chmod(0o755)
        readme = bundle / "README.md"
        readme.write_text(_README.format(version=self.version, command=command,
                                         precision=_precision_text(config)))
        files += [bundle / "build_config.json", bundle / "build_engine.py", script, readme]
        notes = [f"trtexec: {command}"]
        if sparse:
            notes.append(f"2:4 sparse weights in {len(sparse)} layer(s): sparsity flag set")
        return EmitResult("tensorrt", bundle, files=files, notes=notes)

    def validate(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], *, measure: bool = True) -> None:
        bundle = result.artifact
        onnx_path = bundle / "model.onnx"
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except onnx.checker.ValidationError as error:
            raise UserError(f"backend 'tensorrt': bundled ONNX fails onnx.checker:"
                            f" {str(error).strip().splitlines()[0]}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The graph as written (like the reference run): ORT's own QDQ fusions would round differently.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})
        validation = compare(reference, by_position(reference, outputs), reduced=False)
        validation["checked_with"] = "onnxruntime"
        validation["ops_in_tensorrt_list"] = not self.unsupported_ops(ir.load(onnx_path))
        dry = subprocess.run([sys.executable, str(bundle / "build_engine.py"), "--dry-run"],
                             capture_output=True, text=True, timeout=120)
        if dry.returncode != 0:
            raise UserError(f"backend 'tensorrt': build_engine.py --dry-run failed: {dry.stderr.strip()[-200:]}")
        settings = json.loads(dry.stdout)
        config = json.loads((bundle / "build_config.json").read_text())
        validation["build_script_ok"] = all(settings[key] == config[name] for key, name in _SCRIPT_KEYS)
        problems = profile_problems(ir.load(onnx_path), config["profile"], inputs)
        validation["profile_ok"] = not problems
        if problems:
            result.notes.append(f"shape profile: {'; '.join(problems)}")
        validation["ok"] = bool(validation["ok"] and validation["ops_in_tensorrt_list"]
                                and validation["build_script_ok"] and validation["profile_ok"])
        result.validation = validation
        if tensorrt_available():
            self._validate_engine(result, inputs, reference)
        else:
            result.notes.append("tensorrt or a CUDA GPU is missing here: engine not built (bundle checked)")

    def _validate_engine(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                         reference: Mapping[str, np.ndarray]) -> None:
        bundle = result.artifact
        with tempfile.TemporaryDirectory(prefix="edgeopt-trt-") as scratch:
            feeds = Path(scratch) / "inputs.npz"
            np.savez(feeds, **inputs)
            run = subprocess.run([sys.executable, str(bundle / "build_engine.py"), "--engine",
                                  str(Path(scratch) / "model.engine"), "--check", str(feeds)],
                                 capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise UserError(f"backend 'tensorrt': engine build failed: {run.stderr.strip()[-300:]}")
            produced = dict(np.load(str(feeds) + ".out.npz"))
        fp16 = bool(json.loads((bundle / "build_config.json").read_text())["fp16"])
        engine = compare(reference, by_position(reference, [produced[k] for k in produced]),
                         reduced=self._quantized or fp16)
        result.validation = {**(result.validation or {}), "engine": engine}
        result.notes.append("engine built and run with TensorRT on this GPU")


def _precision_text(config: dict[str, Any]) -> str:
    parts = ["FP32"] + [name for name, on in (("FP16", config["fp16"]), ("INT8 (explicit Q/DQ)", config["int8"]),
                                              ("2:4 sparsity", config["sparsity"])) if on]
    return ", ".join(parts)


_README = """# TensorRT build bundle (edgeopt)

Engines are tied to the GPU, TensorRT version and driver: build this one on the device.
Checked for TensorRT {version}.x's ONNX operator list; precision: {precision}.

    python3 build_engine.py            # TensorRT Python API, settings from build_config.json
    python3 build_engine.py --help     # override precision, workspace, DLA, shape profiles

or with trtexec (same settings, `./build_engine.sh`):

    {command}
"""
