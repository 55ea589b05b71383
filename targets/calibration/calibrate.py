"""`edgeopt calibrate`: measure kernel micro-benchmarks on this machine and fit the cost model.

1. time an empty-ish model: the per-run overhead every benchmark pays; time the reference
   networks (reference.py), again at the end: the machine's speed during this calibration;
2. time sampled kernels of every class and precision the backend runs (bench.py);
   a benchmark's extra kernels (the Q at an int8 model's input, …) are subtracted
   with the elementwise fit so each sample is one kernel's own time;
3. adaptive sampling: re-sample next to the configurations the held-out predictor
   gets most wrong, while the budget lasts (nn-Meter, MobiSys 2021);
4. time random composition networks (interleaved rounds; CNNs quantized to int8 QDQ among them
   where the target runs int8) to fit how kernel times add up in a model (composition.py);
   where the runner profiles kernels (ONNX Runtime, OpenVINO), each network's kernels are
   also timed inside it, and those timings join the predictor's samples;
5. pick factors / Ridge / GradientBoosting by held-out error, and read each class's remaining
   scale off the profiled networks (or fit the composition on their totals).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.ir.costs import concrete_shapes
from edgeopt.ir.shapes import infer_shapes
from edgeopt.targets.calibration import bench
from edgeopt.targets.calibration.compose import fit_profiled_composition
from edgeopt.targets.calibration.fit import (
    Predictor,
    choose_method,
    fit_factors,
    fit_predictor,
    heldout_errors,
    lines_for,
)
from edgeopt.targets.calibration.networks import networks, quantized_networks
from edgeopt.targets.calibration.reference import ROUNDS, reference_id, reference_seconds
from edgeopt.targets.calibration.runners import KernelProfile, Runner, make_runner
from edgeopt.targets.calibration.store import Calibration, host_fingerprint
from edgeopt.targets.catalog import Target
from edgeopt.targets.cost.composition import CompositionTerms, kernel_class
from edgeopt.targets.cost.features import KernelSample
from edgeopt.targets.cost.kernels import RULES, Kernel, group_kernels, layout_boundary_bytes
from edgeopt.targets.cost.roofline import effective_bandwidth

Progress = Callable[[str, int, int], None]  # (what, done, total)

# Initial samples per (family, precision) for the default run; --quick takes about a tenth.
PLAN: dict[tuple[str, str], int] = {
    ("elementwise", "fp32"): 40, ("conv", "fp32"): 70, ("depthwise", "fp32"): 35, ("gemm", "fp32"): 45,
    ("pooling", "fp32"): 15, ("normalization", "fp32"): 15, ("softmax", "fp32"): 10, ("data", "fp32"): 20,
    ("recurrent", "fp32"): 32, ("attention", "fp32"): 24, ("conv", "int8"): 30, ("depthwise", "int8"): 12,
    ("gemm", "int8"): 15,
    ("elementwise", "int8"): 8, ("pooling", "int8"): 10, ("conv", "fp16"): 12, ("depthwise", "fp16"): 6,
    ("gemm", "fp16"): 8, ("elementwise", "fp16"): 6,
}


NETWORK_ROUNDS = 5  # interleaved timing rounds per composition network


@dataclass
class Settings:
    budget_s: float = 480.0
    quick: bool = False
    threads: int | None = 2
    seed: int = 0
    statistic: str = "median"
    clock: str = "wall"

    @property
    def repeat_budget_s(self) -> float:
        return 0.03 if self.quick else 0.2

    @property
    def composition_count(self) -> int:
        return 3 if self.quick else 50  # about 40 s of timing and profiling here (3 rounds)

    @property
    def quantized_count(self) -> int:
        return 1 if self.quick else 8  # about 3 s each to quantize (onnxruntime.quantization)


def _model_kernels(proto: onnx.ModelProto, backend: str) -> tuple[list[Kernel], int]:
    """The backend's kernels of ``proto`` and the bytes its layout conversions move."""
    model = ir.serde.deserialize_model(proto)
    shapes = concrete_shapes(model, infer_shapes(model))
    kernels = group_kernels(model, shapes, backend)
    return kernels, layout_boundary_bytes(kernels, shapes, backend)


def _precisions(target: Target) -> set[str]:
    wanted = {"fp32"}
    if "int8" in target.precisions:
        wanted.add("int8")
    if "fp16" in target.precisions:  # elsewhere fp16 kernels cost fp32 ones (CostModel.fp16_runs_as_fp32)
        wanted.add("fp16")
    return wanted


class Calibrator:
    def __init__(self, target: Target, backend: str, settings: Settings, progress: Progress | None = None,
                 runner: Runner | None = None) -> None:
        self.target = target
        self.backend = backend
        self.settings = settings
        self.progress = progress or (lambda *_: None)
        self.device_kind = "gpu" if target.kind == "gpu" or backend == "tensorrt" else "cpu"
        self.runner = runner or make_runner(backend, self.device_kind, settings.threads, settings.repeat_budget_s,
                                            settings.statistic, settings.clock)
        self.samples: list[KernelSample] = []
        self.specs: list[bench.Spec] = []
        self.overhead_s = 0.0
        self.helper = None  # elementwise predictor used to subtract a benchmark's extra kernels
        self.failed = 0

    def _measure(self, spec: bench.Spec, seed: int) -> None:
        try:
            proto, feeds = bench.build(spec, seed)
            kernels, _ = _model_kernels(proto, self.backend)
            work = [k for k in kernels if k.kind not in ("free", "shape")]
            own = [k for k in work if k.kind == spec.family]
            lone_int8 = spec.precision == "int8" and self.runner.profiles_lone_int8
            if own and self.runner.profiles_kernels and (lone_int8 or any(
                    k.kind not in (spec.family, "elementwise", "data") for k in work)):
                # A benchmark that sets its kernel in context (the conv an int8 MaxPool follows,
                # bench._pooling; the convs around a Concat, bench._data) times that kernel alone,
                # inside it: no predictor knows the context.
                # So does every int8 one where the runner says so (Runner.profiles_lone_int8).
                main = max(own, key=lambda k: (k.flops, k.bytes))
                profile = self.runner.kernel_profile(proto, feeds, kernel_owners(kernels), len(kernels))
                self._keep(spec, main, float(profile.kernels[kernels.index(main)]), [])
                return
            if hasattr(self.runner, "kernel_time"):
                seconds = self.runner.kernel_time(proto, feeds)
            else:
                seconds = self.runner.time(proto, feeds) - self.overhead_s
        except Exception:  # a shape the backend rejects is skipped, not fatal (counted in the report)
            self.failed += 1
            return
        if not kernels:
            return
        main = max(work or kernels, key=lambda k: (k.kind != "elementwise" or spec.family == "elementwise",
                                                   k.flops, k.bytes))
        self._keep(spec, main, seconds, [k for k in kernels if k is not main])

    def _keep(self, spec: bench.Spec, main: Kernel, seconds: float, others: list[Kernel]) -> None:
        """``main``'s sample: ``seconds`` less the predicted time of the benchmark's ``others``."""
        if seconds <= 0:
            return
        extra = 0.0
        if others and self.helper is not None:
            extra_samples = [KernelSample.of(k) for k in others]
            extra = sum(self.helper.predict(extra_samples, lines_for(extra_samples, self.target)))
        sample = KernelSample.of(main)
        sample.seconds = max(seconds - extra, 0.3 * seconds)
        sample.label = spec.describe()
        self.samples.append(sample)
        self.specs.append(spec)

    def run(self) -> Calibration:
        began = time.perf_counter()
        s = self.settings
        deadline = began + s.budget_s
        rng = np.random.default_rng(s.seed)
        tiny = bench.Spec("elementwise", {"op": "Add", "shape": [1, 1]})
        proto, feeds = bench.build(tiny)
        self.overhead_s = min(self.runner.time(proto, feeds) for _ in range(3))
        # The machine's speed at the start and at the end (reference.py): later runs compare against it.
        probes = [reference_seconds(self.runner, 1 if s.quick else ROUNDS)]

        precisions = _precisions(self.target)
        scale = 0.1 if s.quick else 1.0
        rules = RULES.get(self.backend, RULES["tvm"])
        plan = [(fam, prec, max(1 if s.quick else 3, round(n * scale))) for (fam, prec), n in PLAN.items()
                if prec in precisions and (not s.quick or fam != "recurrent")
                and (fam != "attention" or rules.fuse_attention)]  # a block only where one kernel runs it
        # Elementwise fp32 first: its fit subtracts the extra kernels of later benchmarks. The rest in
        # random order: on a shared machine a family timed in one block took that minute's load with
        # it, a bias per class that the composition's per-class scales then absorbed differently
        # from one calibration to the next.
        first = [(fam, prec) for fam, prec, n in plan if (fam, prec) == ("elementwise", "fp32") for _ in range(n)]
        rest = [(fam, prec) for fam, prec, n in plan if (fam, prec) != ("elementwise", "fp32") for _ in range(n)]
        order = first + [rest[i] for i in rng.permutation(len(rest))]
        reserve = 0.12 * s.budget_s  # for the adaptive rounds and composition networks
        for done, (family, precision) in enumerate(order):
            if time.perf_counter() > deadline - reserve and done > 10:
                break
            self._measure(bench.sample(family, rng, precision), seed=done)
            self.progress(f"kernels: {family} {precision}", done + 1, len(order))
            if done + 1 == len(first) and self.samples:
                self.helper = fit_predictor(self.samples, self.target, self.device_kind, "factors")

        method = "factors" if s.quick else choose_method(self.samples, self.target, self.device_kind)[0]
        rounds = 1 if s.quick else 4
        for round_ in range(rounds):
            if time.perf_counter() > deadline - 0.6 * reserve:
                break
            errors = heldout_errors(self.samples, self.target, self.device_kind, (method,))[method]
            worst = np.argsort(-np.abs(errors))[: max(4, len(errors) // (10 if s.quick else 8))]
            for j, index in enumerate(worst):
                if time.perf_counter() > deadline - 0.6 * reserve:
                    break
                self._measure(bench.neighbor(self.specs[index], rng), seed=10_000 + round_ * 1000 + j)
                self.progress(f"adaptive sampling, round {round_ + 1}", j + 1, len(worst))
        isolated_count = len(self.samples)
        nets = self._time_networks()
        probes.append(reference_seconds(self.runner, 1 if s.quick else ROUNDS))
        # Kernels profiled inside the networks train the predictor beside the lone-kernel samples:
        # they ran with the cache state and neighbours a model gives them.
        self.samples += [sample for net in nets for sample in net.in_model_samples()]
        method, scores = choose_method(self.samples, self.target, self.device_kind)
        lines = lines_for(self.samples, self.target)
        factors = fit_factors(self.samples, lines, self.device_kind)
        predictor = fit_predictor(self.samples, self.target, self.device_kind, method, factors)

        rows, profiles = self._composition_rows(nets, predictor)
        composition = fit_profiled_composition(rows, profiles, self.overhead_s)  # totals fit without profiles
        wall = time.perf_counter() - began
        return Calibration(
            target=self.target.name, backend=self.backend,
            fingerprint=host_fingerprint(),  # the machine that measured (a Jetson running calibrate itself)
            method=method, factors=factors, composition=composition, samples=self.samples,
            device_kind=self.device_kind, threads=self.runner.threads, clock=s.clock, runtime=self.runner.runtime(),
            validation={"heldout": scores, "samples": len(self.samples), "failed": self.failed,
                        "in_model_samples": len(self.samples) - isolated_count,
                        "run_overhead_measured_s": self.overhead_s, "quick": s.quick,
                        "reference_probes_s": probes, "reference_id": reference_id(),
                        "statistic": s.statistic,
                        "composition_rows": [[*dataclasses.astuple(t), m, b] for t, m, b in rows],
                        "composition_profiles": [{c: list(v) for c, v in p.items()} for p in profiles]},
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), wall_s=wall,
            device=self.target.description, reference_s=float(np.mean(probes)))

    def _time_networks(self) -> list[TimedNetwork]:
        """Each composition network's kernels, layout bytes and measured seconds, and its kernels' profile.

        Each network is timed in ``NETWORK_ROUNDS`` interleaved rounds and its least loaded round
        kept (``Runner.settled``, as the models a calibration predicts are measured): on a shared
        machine a network timed in one short window carried that moment's load into the fit (the
        depthwise scale came out anywhere from 0.9 to 2.0 between two calibrations), and the median
        of three rounds sat 17-21 % (median over 50 networks, ONNX Runtime / OpenVINO) above the
        best of five rounds taken under other tenants' load: every zoo model came out that much
        over its measured time.
        """
        s = self.settings
        nets = networks(s.composition_count, s.seed)
        if "int8" in _precisions(self.target):
            nets += quantized_networks(s.quantized_count, s.seed, lambda done, total: self.progress(
                "composition networks: quantizing to int8", done, total))
        profiling = self.runner.profiles_kernels
        timed, runs = [], []
        for i, (name, proto, feeds) in enumerate(nets):
            kernels, layout_bytes = _model_kernels(proto, self.backend)
            profile = self._profile(proto, feeds, kernels) if profiling else None
            timed.append(TimedNetwork(name, kernels, float(layout_bytes), 0.0, profile))
            runs.append(self.runner.prepare(proto))
            self.progress("composition networks: loading" + (" and profiling" if profiling else ""), i + 1,
                          len(nets))
        rounds = 1 if s.quick else NETWORK_ROUNDS
        times = self.runner.interleaved(
            [(run, feeds) for run, (_name, _proto, feeds) in zip(runs, nets, strict=True)], rounds,
            lambda round_, done: self.progress(f"composition networks: round {round_ + 1}/{rounds}", done, len(nets)))
        for net, measured in zip(timed, times, strict=True):
            net.measured_s = self.runner.settled(measured)
            if net.profile is not None:
                net.profile = net.profile.within(net.measured_s - self.overhead_s)
        return timed

    def _profile(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], kernels: list[Kernel]) -> KernelProfile:
        return self.runner.kernel_profile(proto, feeds, kernel_owners(kernels), len(kernels))

    def _composition_rows(self, nets: list[TimedNetwork], predictor: Predictor
                          ) -> tuple[list[tuple[CompositionTerms, float, float]], list[dict[str, tuple[float, float]]]]:
        """Per network: its kernels' predicted times summed per term, measured seconds, layout bytes;
        and, where the kernels were profiled, each class's (predicted, in-network) seconds."""
        bandwidth = effective_bandwidth(self.target)
        rows, profiles = [], []
        for net in nets:
            kernel_samples = [KernelSample.of(k) for k in net.kernels]
            isolated = predictor.predict(kernel_samples, lines_for(kernel_samples, self.target))
            rows.append((CompositionTerms.of(net.kernels, isolated, bandwidth), net.measured_s, net.layout_bytes))
            if net.profile is not None:
                profiles.append(_class_times(net, isolated))
        return rows, profiles


def kernel_owners(kernels: list[Kernel]) -> dict[str, int]:
    """Node names and node output names, each mapped to the index of the kernel it belongs to.

    Backends rename the nodes they rewrite after one or the other (runners.kernel_profile).
    """
    owner: dict[str, int] = {}
    for index, kernel in enumerate(kernels):
        for node in kernel.nodes:
            owner.update({v.name: index for v in node.outputs if v.name})
        owner.update({node.name: index for node in kernel.nodes if node.name})
    return owner


# Kernel classes whose in-network timings join the predictor's training samples; the rest are
# dispatch-sized (free, shape) or absent from the networks.
IN_MODEL_KINDS = ("conv", "depthwise", "gemm", "elementwise", "pooling", "normalization", "softmax", "data",
                  "recurrent")
MIN_IN_MODEL_S = 2e-6  # below this a profiled node is the profiler's own resolution


@dataclass
class TimedNetwork:
    name: str
    kernels: list[Kernel]
    layout_bytes: float
    measured_s: float
    profile: KernelProfile | None

    def in_model_samples(self) -> list[KernelSample]:
        if self.profile is None:
            return []
        out = []
        for kernel, seconds in zip(self.kernels, self.profile.kernels, strict=True):
            if kernel.kind in IN_MODEL_KINDS and seconds >= MIN_IN_MODEL_S:
                sample = KernelSample.of(kernel)
                sample.seconds, sample.label = float(seconds), f"in {self.name}: {kernel.ops}"
                out.append(sample)
        return out


def _class_times(net: TimedNetwork, predicted: list[float]) -> dict[str, tuple[float, float]]:
    """Per kernel class: (predicted seconds, seconds profiled inside the network)."""
    assert net.profile is not None
    out: dict[str, list[float]] = {}
    for kernel, iso, inside in zip(net.kernels, predicted, net.profile.kernels, strict=True):
        pair = out.setdefault(kernel_class(kernel), [0.0, 0.0])
        pair[0] += iso
        pair[1] += float(inside)
    # ORT's fused activations (QuickGelu for x * sigmoid(x), Gelu) come back under new names;
    # they are elementwise kernels in every network here. A larger unattributed share is a
    # kernel the backend rebuilt beyond recognition (OpenVINO's LSTM as a sequence node) and
    # stays out: that class then has no in-network time and no ratio.
    if net.profile.unattributed_s <= 0.25 * (float(net.profile.kernels.sum()) + net.profile.unattributed_s):
        out.setdefault("elementwise", [0.0, 0.0])[1] += net.profile.unattributed_s
    return {cls: (iso, inside) for cls, (iso, inside) in out.items()}


def calibrate(target: Target, backend: str | None = None, *, budget_s: float | None = None, quick: bool = False,
              threads: int | None = 2, seed: int = 0, progress: Progress | None = None,
              save: bool = True, statistic: str = "median", clock: str = "wall") -> Calibration:
    """Measure this machine for ``target`` on ``backend`` and (by default) save the calibration file."""
    backend = backend or target.default_backend
    settings = Settings(budget_s=budget_s if budget_s is not None else (30.0 if quick else 480.0), quick=quick,
                        threads=threads, seed=seed, statistic=statistic, clock=clock)
    calibration = Calibrator(target, backend, settings, progress).run()
    if save:
        calibration.save()
    return calibration
