"""Timing models on a backend: warm-up, repeats, median; one runner per backend.

Runners time whole (tiny) models end to end with the session options the product
uses (ONNX Runtime: ORT_ENABLE_ALL; OpenVINO: the LATENCY hint) and a fixed thread
count, so calibration and ``estimate --compare`` measure the same thing. GPU runners
(ORT CUDA / TensorRT execution providers) are guarded: without the runtime or a GPU
they fail with one line before any work. The OpenVINO runner is in openvino_runner.py.

Two clocks: ``wall`` (perf_counter, what a user sees on an idle machine) and ``cpu``
(the process's CPU time with one thread). On a shared machine other jobs preempt a
run: a 200 ms model on 2 cores at load 6 reads 30-80 % slow and the figure drifts with
the load, while the CPU time of a one-thread run (both ORT and OpenVINO then run the
graph on the calling thread) stays within a few percent: it is the latency on a core
of one's own, which is what a cost model can predict.
"""

from __future__ import annotations

import bisect
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeopt.ir.errors import TargetError, UserError

CLOCKS = ("wall", "cpu")


class Runner:
    backend = ""
    device = "cpu"
    profiles_kernels = False  # has kernel_profile: per-kernel times inside a model
    # A lone int8 kernel's sample is its profiled time, not the whole run's (calibrate._measure).
    profiles_lone_int8 = False

    def __init__(self, threads: int | None = 2, budget_s: float = 0.25, max_repeats: int = 200,
                 statistic: str = "median", clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise UserError(f"clock '{clock}': expected one of {', '.join(CLOCKS)}")
        self.clock = clock
        # The cpu clock reads process CPU time: only a one-thread run makes that the latency.
        self.threads = 1 if clock == "cpu" else threads
        self.budget_s = budget_s
        self.max_repeats = max_repeats
        # "median", or "p25" (lower quartile) on a shared machine where preemption inflates the median.
        self.statistic = statistic

    def now(self) -> float:
        return time.process_time() if self.clock == "cpu" else time.perf_counter()

    def reduce(self, times: list[float]) -> float:
        return float(np.percentile(times, 25) if self.statistic == "p25" else np.median(times))

    def prepare(self, model: onnx.ModelProto | Path):  # returns a callable that runs once
        raise NotImplementedError

    def runtime(self) -> dict[str, str]:
        return {}

    def time(self, model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray]) -> float:
        """Median (or p25) seconds of one run after warm-up, repeated within the time budget."""
        return self.measure(self.prepare(model), feeds)

    def interleaved(self, runs: Sequence[tuple[Callable[[dict[str, np.ndarray]], object], Mapping[str, np.ndarray]]],
                    rounds: int, progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
        """Each prepared (run, feeds) timed once per round, round after round: its ``rounds`` times.

        Spreading a model's timing over the whole pass keeps a minute of other tenants' load on the
        shared caches from landing on one model alone (memory-bound models re-time 10-30 % apart a
        minute later on the machine this was measured on). ``progress(round, done)`` after each timing.
        """
        times: list[list[float]] = [[] for _ in runs]
        for round_ in range(rounds):
            for i, (run, feeds) in enumerate(runs):
                times[i].append(self.measure(run, feeds))
                if progress is not None:
                    progress(round_, i + 1)
        return times

    @staticmethod
    def settled(rounds: Sequence[float]) -> float:
        """One model's time from its interleaved rounds: the least loaded round.

        Other tenants only ever slow a round down, so its fastest is the model's own time: on a
        2-core VM a MobileNetV2 timed 4.75, 6.75 and 5.93 ms in three rounds, and the median put
        that load into a -23 % "error" against kernels each timed in a quiet moment (their p25).
        The same reasoning as ``timeit``'s advice to take the minimum.
        """
        return float(min(rounds))

    def measure(self, run: Callable[[dict[str, np.ndarray]], object], feeds: Mapping[str, np.ndarray]) -> float:
        """:meth:`time` for a model :meth:`prepare` already loaded (timed again without reloading)."""
        feeds = dict(feeds)
        warm_until = time.perf_counter() + min(0.05, self.budget_s / 4)
        run(feeds)
        while time.perf_counter() < warm_until:
            run(feeds)
        times: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < self.max_repeats):
            began = self.now()
            run(feeds)
            times.append(self.now() - began)
        return self.reduce(times)


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # kernel_profile finds the CPU provider's nodes by name; the CUDA and TensorRT providers
    # run other node sets (a TensorRT engine is one node).
    profiles_kernels = True
    # A lone QLinearConv runs behind NHWC Transposes that a quantized model pays once: whole-run
    # samples put a ResNet-18 int8 24 % over, profiled ones 12.8 %. (OpenVINO's profile books part
    # of a lone int8 conv on its FakeQuantize nodes: profiled, the same model came out 35 % under.)
    profiles_lone_int8 = True

    def __init__(self, threads: int | None = 2, budget_s: float = 0.25, max_repeats: int = 200,
                 statistic: str = "median", clock: str = "wall") -> None:
        import onnxruntime as ort

        super().__init__(threads, budget_s, max_repeats, statistic, clock)
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise TargetError(f"backend '{self.backend}' on {self.device}: onnxruntime has no {missing[0]} here "
                              "(install onnxruntime-gpu on a machine with an NVIDIA GPU, or calibrate on the "
                              "device and `edgeopt calibrate --import` the file)")

    def session(self, model: onnx.ModelProto | Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        source = str(model) if isinstance(model, Path) else model.SerializeToString()
        return ort.InferenceSession(source, options, providers=list(self.providers))

    def prepare(self, model: onnx.ModelProto | Path):
        session = self.session(model)
        names = [o.name for o in session.get_outputs()]
        allowed = {i.name for i in session.get_inputs()}
        return lambda feeds: session.run(names, {k: v for k, v in feeds.items() if k in allowed})

    def runtime(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__}

    def _profiled(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], runs: int | None = None
                  ) -> tuple[list[dict], list[tuple[float, float]], list[float]]:
        """ORT profiler events, (start, end) µs of each timed run and each run's CPU seconds.

        ``runs`` fixes the number of timed runs; without it they fill the time budget.
        """
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="edgeopt-prof-") as folder:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "p")
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            session = ort.InferenceSession(model.SerializeToString(), options, providers=list(self.providers))
            names = [o.name for o in session.get_outputs()]
            allowed = {i.name for i in session.get_inputs()}
            feeds = {k: v for k, v in feeds.items() if k in allowed}
            warmup = 3
            for _ in range(warmup):
                session.run(names, feeds)
            cpu: list[float] = []
            deadline = time.perf_counter() + self.budget_s
            while len(cpu) < (runs or 5) or (runs is None and time.perf_counter() < deadline
                                                and len(cpu) < self.max_repeats):
                began = time.process_time()
                session.run(names, feeds)
                cpu.append(time.process_time() - began)
            events = json.loads(Path(session.end_profiling()).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e.get("cat") == "Session" and e.get("name") == "model_run")[warmup:]
        return [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")], \
            spans, cpu

    def kernel_time(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
        """Median per-run sum of ORT's own node timings, layout reorders excluded.

        A one-kernel model timed end to end also pays the run overhead, copying its output
        into a fresh numpy array and the NCHW <-> NCHWc reorders around the kernel; inside a
        real model those happen once, not per kernel. ORT's profiler times each node's
        Compute() call, which is what the kernel costs inside a model.
        """
        events, spans, cpu = self._profiled(model, feeds)
        own = {node.name for node in model.graph.node}
        kept = [[0.0] * len(spans), [0.0] * len(spans)]  # per run: [kernel nodes, all nodes]
        for e, i in _per_run(events, spans):
            op = str(e.get("args", {}).get("op_name", ""))
            kept[1][i] += e["dur"] * 1e-6
            # Layout/precision conversions ORT adds around a lone kernel stay out: NCHWc reorders,
            # inserted casts and the NHWC Transposes around a QLinearConv (one pair per quantized
            # region in a real model, not one per kernel).
            inserted = op == "Transpose" and e["name"][: -len("_kernel_time")] not in own
            if not (op.startswith("Reorder") or inserted or
                    (op == "Cast" and "InsertedPrecisionFreeCast" in e["name"])):
                kept[0][i] += e["dur"] * 1e-6
        if not spans:
            return 0.0
        kernel, every = self.reduce(kept[0]), self.reduce(kept[1])
        if self.clock == "wall":
            return kernel
        # CPU clock: the run's CPU time times the kernel nodes' share of the node time (the run's
        # own binding and output copy, tens of µs, stay in). The node spans are wall time that a
        # preempted node inflates: the smaller of the two readings is the less disturbed one.
        return min(kernel, self.reduce(cpu) * (kernel / every if every > 0 else 1.0))

    def kernel_profile(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], owner: Mapping[str, int],
                       count: int, runs: int = 15) -> KernelProfile:
        """Each of ``count`` kernels' median seconds inside ``model``, from ORT's node timings.

        ``owner`` maps node names and node output names to a kernel's index. ORT renames the
        nodes it rewrites: an NCHWc conv is named after its output plus ``_nchwc``, a fusion
        appends ``/MatMulAddFusion`` and the like to the anchor's name; its fused activations
        (QuickGelu, Gelu) get new names, and their time is reported as unattributed. On the
        cpu clock the node spans (wall time) are scaled by the runs' CPU/wall ratio.
        """
        events, spans, cpu = self._profiled(model, feeds, runs)
        per_run = np.zeros((max(len(spans), 1), count))
        reorder, unattributed = np.zeros(len(per_run)), np.zeros(len(per_run))
        for e, i in _per_run(events, spans):
            index = _owner_of(e["name"][: -len("_kernel_time")], owner)
            if index is not None:
                per_run[i, index] += e["dur"] * 1e-6
            elif str(e.get("args", {}).get("op_name", "")).startswith("Reorder"):
                reorder[i] += e["dur"] * 1e-6
            else:
                unattributed[i] += e["dur"] * 1e-6
        walls = [(b - a) * 1e-6 for a, b in spans] or [0.0]
        ratio = 1.0
        if self.clock == "cpu" and spans:
            wall = float(np.median(walls))
            ratio = min(1.0, float(np.median(cpu[-len(spans):])) / wall) if wall > 0 else 1.0
        return KernelProfile.median_of(per_run, reorder, unattributed, walls, ratio)


@dataclass
class KernelProfile:
    """Per-kernel seconds measured inside a model, and the node time no kernel owns."""

    kernels: np.ndarray
    reorder_s: float  # layout conversions the backend inserted
    unattributed_s: float  # nodes the backend renamed beyond recognition (fused activations)
    run_s: float = 0.0  # the profiled runs' own median time: their node times add up to at most this

    @classmethod
    def median_of(cls, per_run: np.ndarray, reorder: np.ndarray, unattributed: np.ndarray,
                  run_wall: Sequence[float], ratio: float) -> KernelProfile:
        """The per-run timings' medians, times ``ratio`` (the runs' CPU/wall ratio on the cpu clock)."""
        return cls(np.median(per_run, 0) * ratio, float(np.median(reorder)) * ratio,
                   float(np.median(unattributed)) * ratio, float(np.median(run_wall)) * ratio)

    def within(self, total_s: float) -> KernelProfile:
        """Scaled down, if need be, so its node times fit in ``total_s`` (the model timed unprofiled).

        Profiling slows what it times: OpenVINO's PERF_COUNT node times of a 0.4 ms transformer
        stack added up to 0.66 ms. The profile says how a run's time splits; the clock says how much.
        """
        profiled = float(self.kernels.sum()) + self.reorder_s + self.unattributed_s
        f = min(1.0, total_s / profiled) if profiled > 0 and total_s > 0 else 1.0
        return KernelProfile(self.kernels * f, self.reorder_s * f, self.unattributed_s * f, self.run_s * f)


def _per_run(events: list[dict], spans: list[tuple[float, float]]) -> Iterator[tuple[dict, int]]:
    """(event, index of the timed run it falls in) for node events inside a timed run."""
    starts = [a for a, _ in spans]
    for e in events:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if 0 <= i < len(spans) and e["ts"] <= spans[i][1]:
            yield e, i


def _owner_of(name: str, owner: Mapping[str, int]) -> int | None:
    """The kernel index of an ORT node name: its own, its output's (``_nchwc``), or its anchor's.

    The QDQ and NHWC rewrites name a fused node after the node it replaced plus ``_token_<n>``
    (``/stem/Conv_token_1`` is the QLinearConv of ``/stem/Conv``).
    """
    if name in owner:
        return owner[name]
    stem, _, token = name.rpartition("_token_")
    if stem and token.isdigit():
        return _owner_of(stem, owner)
    if name.endswith("_nchwc") and name[: -len("_nchwc")] in owner:
        return owner[name[: -len("_nchwc")]]
    while "/" in name.rstrip("/")[1:]:  # "matmul10/MatMulAddFusion" -> "matmul10"
        name = name.rstrip("/").rsplit("/", 1)[0]
        if name in owner:
            return owner[name]
    return None


class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    device = "gpu"
    providers = ("CUDAExecutionProvider",)
    profiles_kernels = False


class TensorRTRunner(OnnxRuntimeRunner):
    backend = "tensorrt"
    device = "gpu"
    providers = ("TensorrtExecutionProvider",)
    profiles_kernels = False


def make_runner(backend: str, device_kind: str, threads: int | None = 2, budget_s: float = 0.25,
                statistic: str = "median", clock: str = "wall") -> Runner:
    """The runner for ``backend`` on this machine, or a one-line TargetError saying why there is none."""
    if clock == "cpu" and device_kind == "gpu":
        raise UserError("clock 'cpu' times CPU backends only (a GPU kernel's time is not the host's CPU time)")
    if backend == "onnxruntime":
        cls = OnnxRuntimeCudaRunner if device_kind == "gpu" else OnnxRuntimeRunner
        return cls(threads, budget_s, statistic=statistic, clock=clock)
    if backend == "tensorrt":
        return TensorRTRunner(threads, budget_s, statistic=statistic, clock=clock)
    if backend == "openvino":
        from edgeopt.targets.calibration.openvino_runner import OpenVinoRunner  # it builds on Runner

        return OpenVinoRunner(threads, budget_s, statistic=statistic, clock=clock)
    raise TargetError(f"calibrate: no timing runner for backend '{backend}' yet "
                      "(supported: onnxruntime, openvino, tensorrt)")
