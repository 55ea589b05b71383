"""The OpenVINO runner: whole-model timing, PERF_COUNT kernel times and per-kernel profiles (runners.py)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from edgeopt.ir.errors import TargetError
from edgeopt.targets.calibration.runners import KernelProfile, Runner

_OV_LAYOUT = {"Reorder", "Parameter", "Result"}


class OpenVinoRunner(Runner):
    backend = "openvino"
    profiles_kernels = True

    def __init__(self, threads: int | None = 2, budget_s: float = 0.25, max_repeats: int = 200,
                 statistic: str = "median", clock: str = "wall", device: str = "CPU") -> None:
        super().__init__(threads, budget_s, max_repeats, statistic, clock)
        try:
            import openvino as ov
        except ImportError:
            raise TargetError("backend 'openvino': the openvino package is not installed "
                              "(pip install 'edgeopt[openvino]')") from None
        self.core = ov.Core()
        if device not in self.core.available_devices:
            raise TargetError(f"backend 'openvino': device {device} not available "
                              f"(found: {', '.join(self.core.available_devices)})")
        self.ov_device = device

    def _config(self) -> dict[str, object]:
        # f32 kernels, as the cost model's "fp32" means: on CPUs with AVX-512 BF16 or AMX the plugin
        # would otherwise run bf16, with other kernels (the MHA Subgraph then leaves its output
        # Transpose apart) and other timings than the f32 artifact the emitter validates.
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _compile(self, model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray] | None = None,
                 **extra: object):
        """The model compiled for the device with the runner's config (OpenVINO reads ONNX from a file).

        With ``feeds``, dynamic input dims are fixed to the feeds' shapes first: the CPU plugin
        compiles a dynamic model without the snippets fusions and with shape inference on every
        run (here: MobileNetV3 1.23x, BERT 1.16x, EfficientNet-B0 1.12x the static model's time;
        ResNet-18 1.02x). The cost model predicts a model at concrete shapes, and OpenVINO's
        latency guidance (and ``benchmark_app -shape``) runs it at them.
        """
        config = {**self._config(), **extra}
        with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as folder:
            path = model
            if not isinstance(model, Path):
                path = Path(folder) / "model.onnx"
                onnx.save(model, str(path))
            read = self.core.read_model(str(path))
            shapes = {}
            for port in read.inputs:
                fed = next((feeds[name] for name in port.get_names() if name in feeds), None) if feeds else None
                if fed is not None and port.get_partial_shape().is_dynamic:
                    shapes[port.get_any_name()] = list(fed.shape)
            if shapes:
                read.reshape(shapes)
            return self.core.compile_model(read, self.ov_device, config)

    def prepare(self, model: onnx.ModelProto | Path):
        """A run function; a model with dynamic inputs is compiled for each new set of feed shapes."""
        compiled: dict[tuple, tuple[object, set[str]]] = {}

        def run(feeds: Mapping[str, np.ndarray]):
            key = tuple(sorted((name, value.shape) for name, value in feeds.items()))
            if key not in compiled:
                done = self._compile(model, feeds)
                compiled[key] = (done.create_infer_request(), _ov_input_names(done))
            request, names = compiled[key]
            return request.infer({k: v for k, v in feeds.items() if k in names})

        return run

    def kernel_time(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
        """Median per-run sum of OpenVINO's per-node timings (PERF_COUNT), layout reorders excluded."""
        compiled = self._compile(model, feeds, PERF_COUNT=True)
        request = compiled.create_infer_request()
        names = _ov_input_names(compiled, feeds)
        feeds = {k: v for k, v in feeds.items() if k in names}
        for _ in range(3):
            request.infer(feeds)
        kernel: list[float] = []
        every: list[float] = []
        cpu: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(kernel) < 5 or (time.perf_counter() < deadline and len(kernel) < self.max_repeats):
            began = time.process_time()
            request.infer(feeds)
            cpu.append(time.process_time() - began)
            executed = [p for p in request.profiling_info if str(p.status).endswith("EXECUTED")]
            kernel.append(sum(p.real_time.total_seconds() for p in executed if p.node_type not in _OV_LAYOUT))
            every.append(sum(p.real_time.total_seconds() for p in executed))
        if self.clock == "wall":
            return self.reduce(kernel)
        # PERF_COUNT's cpu_time is the wall span on the CPU plugin: scale the run's CPU time by
        # the kernels' share instead (see OnnxRuntimeRunner.kernel_time).
        share = self.reduce(kernel) / self.reduce(every) if self.reduce(every) > 0 else 1.0
        return min(self.reduce(kernel), self.reduce(cpu) * share)

    def kernel_profile(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], owner: Mapping[str, int],
                       count: int, runs: int = 15) -> KernelProfile:
        """Each of ``count`` kernels' median seconds inside ``model``, from PERF_COUNT.

        The CPU plugin renames what it fuses (a conv with its folded BatchNormalization runs as
        ``Multiply_5194``); the executed graph's ``originalLayersNames`` lists the ONNX nodes each
        executed node took in, which ``owner`` maps to kernels. PERF_COUNT slows small kernels (a
        0.4 ms transformer stack profiled at 0.66 ms): calibration scales a profile into the
        unprofiled run time (``KernelProfile.within``). A conv whose folded BatchNormalization
        left it no ONNX name at all is found by the kernel it reads from (``_by_producer``).
        """
        compiled = self._compile(model, feeds, PERF_COUNT=True)
        took_in: dict[str, list[str]] = {}
        ops = compiled.get_runtime_model().get_ops()
        for op in ops:
            info = op.get_rt_info()
            names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
            took_in[op.get_friendly_name()] = [n for n in names.split(",") if n]
        kernel_of = {name: _named_kernel(name, took_in, owner) for name in took_in}
        kernel_of.update(_by_producer(model, ops, owner, kernel_of))
        request = compiled.create_infer_request()
        feeds = {k: v for k, v in feeds.items() if k in _ov_input_names(compiled, feeds)}
        for _ in range(3):
            request.infer(feeds)
        per_run = np.zeros((runs, count))
        reorder, unattributed, cpu, wall = np.zeros(runs), np.zeros(runs), [], []
        for i in range(runs):
            began, began_cpu = time.perf_counter(), time.process_time()
            request.infer(feeds)
            cpu.append(time.process_time() - began_cpu)
            wall.append(time.perf_counter() - began)
            for info in request.profiling_info:
                if not str(info.status).endswith("EXECUTED") or info.node_type in ("Parameter", "Result"):
                    continue
                seconds = info.real_time.total_seconds()
                index = kernel_of.get(info.node_name)
                if index is None:
                    index = _named_kernel(info.node_name, took_in, owner)
                if index is not None:
                    per_run[i, index] += seconds
                elif info.node_type == "Reorder":
                    reorder[i] += seconds
                else:
                    unattributed[i] += seconds
        ratio = min(1.0, float(np.median(cpu) / np.median(wall))) if self.clock == "cpu" else 1.0
        return KernelProfile.median_of(per_run, reorder, unattributed, wall, ratio)

    def runtime(self) -> dict[str, str]:
        import openvino as ov

        return {"openvino": ov.__version__}


def _named_kernel(node_name: str, took_in: dict[str, list[str]], owner: Mapping[str, int]) -> int | None:
    """The kernel of an executed node by the ONNX names it carries: its own, those it took in, each
    without the plugin's suffix.

    The plugin splits a Conv with a bias into ``<name>/WithoutBiases`` and a bias Add it folds
    back; a conv with no activation after it (an SE gate's expand conv before a HardSigmoid)
    is left with only that name.
    """
    names = [node_name, *took_in.get(node_name, ())]
    names += [n.removesuffix("/WithoutBiases") for n in names if n.endswith("/WithoutBiases")]
    return next((owner[n] for n in names if n in owner), None)


def _layer_type(op) -> str:
    info = op.get_rt_info()
    return info["layerType"].astype(str) if "layerType" in info else ""


_OV_PASS_THROUGH = {"Reorder", "Const", "Parameter"}


def _by_producer(model: onnx.ModelProto, ops: list, owner: Mapping[str, int], kernel_of: Mapping[str, int | None]
                 ) -> dict[str, int]:
    """Executed compute nodes without an ONNX name, each matched to the one unmatched kernel its producer feeds.

    The plugin folds a BatchNormalization into the conv before it and names the result after
    the multiply it made (``Multiply_7274``): with no activation or residual Add after it, the
    node keeps no ONNX name. Its input still comes from a named node; the ONNX graph says
    which kernels read that node's kernel, and if exactly one of those has no executed node,
    that is this one.
    """
    reads: dict[int, set[int]] = {}
    for node in model.graph.node:
        mine = owner.get(node.name, owner.get(node.output[0]) if node.output else None)
        for name in node.input:
            source = owner.get(name)
            if mine is not None and source is not None and source != mine:
                reads.setdefault(source, set()).add(mine)
    matched = {index for index in kernel_of.values() if index is not None}

    def producer_kernels(op) -> set[int]:
        found: set[int] = set()
        for port in op.inputs():
            source = port.get_source_output().get_node()
            kind = _layer_type(source)
            if kind == "Reorder":
                found |= producer_kernels(source)
            elif kind not in _OV_PASS_THROUGH and kernel_of.get(source.get_friendly_name()) is not None:
                found.add(kernel_of[source.get_friendly_name()])
        return found

    out: dict[str, int] = {}
    for op in ops:
        name = op.get_friendly_name()
        if kernel_of.get(name) is not None or _layer_type(op) in _OV_PASS_THROUGH:
            continue
        candidates = {c for p in producer_kernels(op) for c in reads.get(p, ()) if c not in matched}
        if len(candidates) == 1:
            out[name] = candidates.pop()
            matched.add(out[name])
    return out


def _ov_input_names(compiled, feeds: Mapping[str, np.ndarray] | None = None) -> set[str]:
    """Every name of every input (an input feeding a Cast has several); checks ``feeds`` cover them.

    OpenVINO runs a request with an input left unset on whatever its buffer holds, and a
    model that is never fed times in microseconds: a missing feed must fail, not mislead.
    """
    names: set[str] = set()
    for port in compiled.inputs:
        own = set(port.get_names())
        if feeds is not None and not own & set(feeds):
            raise TargetError(f"backend 'openvino': no input data for model input '{port.get_any_name()}'")
        names |= own
    return names
