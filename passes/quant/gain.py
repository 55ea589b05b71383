"""Per-layer INT8 gain: measured with ONNX Runtime on this machine, or predicted by a cost model.

A layer pays in INT8 only if its INT8 kernel beats FP32 by more than the
QuantizeLinear/DequantizeLinear it forces at its boundaries. So each layer
gets two figures, its FP32 time and its *interior* INT8 time (the kernel with
INT8 data on both sides), and a tensor's Q (or DQ) cost is paid only where
its producer (or a consumer) stays FP32. :func:`predicted_total` adds these
up for a set of INT8 layers and :func:`choose_layers` searches that set.

Measurement times single-layer micro-models (the layer and its fused
activation, with and without Q/DQ) in ORT with all optimizations on; on
AVX2 without VNNI many INT8 kernels lose, which is exactly what it finds.
Prediction asks ``ctx.cost`` when the driver set one, else a roofline on the
"costs" analysis that knows the ISA.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

from edgeopt.passes.quant.calibrators import QuantParams
from edgeopt.passes.quant.placement import WEIGHT_OPS, QdqPlan, RuleSet, layer_tail, plan_qdq
from edgeopt.passes.quant.qdq import apply_plan


@dataclass
class LayerTimes:
    fp32: dict[str, float] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)  # interior: INT8 data in and out
    q_per_element: tuple[float, float] = (0.0, 0.0)  # (fixed, per element) seconds
    dq_per_element: tuple[float, float] = (0.0, 0.0)
    sizes: dict[str, int] = field(default_factory=dict)  # elements per tensor
    source: str = "predicted"

    def q(self, tensor: str) -> float:
        return self.q_per_element[0] + self.q_per_element[1] * self.sizes.get(tensor, 0)

    def dq(self, tensor: str) -> float:
        return self.dq_per_element[0] + self.dq_per_element[1] * self.sizes.get(tensor, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "fp32_s": dict(self.fp32), "int8_s": dict(self.int8)}


def timing_session(model: bytes | str, threads: int) -> ort.InferenceSession:
    """An ORT session (all optimizations, ``threads`` intra-op threads) for the timings of this module."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # No spin-waiting: sessions here are timed round-robin, and each session's idle pool threads
    # spinning after its run took the cores from the next one (ResNet-18 FP32 timed 29.9 ms
    # beside three INT8 sessions, 9.3 ms without spinning, 8.8-9.0 ms alone).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def time_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], budget: float = 0.15,
                 min_runs: int = 5) -> float:
    """Seconds per run (20th percentile after warm-up: robust to other processes sharing the CPU)."""
    for _ in range(2):
        session.run(None, dict(feeds))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget and len(times) < 200):
        began = time.perf_counter()
        session.run(None, dict(feeds))
        times.append(time.perf_counter() - began)
    return float(np.percentile(times, 20))


def interleaved_runs(sessions: list[ort.InferenceSession], feeds: list[Mapping[str, np.ndarray]],
                     budget: float = 1.0, min_runs: int = 5) -> list[list[float]]:
    """Seconds of every run of each session, timed round-robin (the order reverses every other round).

    Timing models one after another lets a burst of load from other processes land on one of them only;
    round-robin spreads it over all, so their *comparison* stays fair on a shared machine. Reversing the
    order cancels what running first or second in a round does (caches, the other model's threads).
    """
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(2):
            session.run(None, dict(feed))
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    start = time.perf_counter()
    while len(times[0]) < min_runs or (time.perf_counter() - start < budget and len(times[0]) < 200):
        for index in order:
            began = time.perf_counter()
            sessions[index].run(None, dict(feeds[index]))
            times[index].append(time.perf_counter() - began)
        order.reverse()
    return times


def time_interleaved(sessions: list[ort.InferenceSession], feeds: list[Mapping[str, np.ndarray]],
                     budget: float = 1.0, min_runs: int = 5) -> list[float]:
    """Seconds per run of each session, timed round-robin (20th percentile of each; see :func:`interleaved_runs`)."""
    return [float(np.percentile(t, 20)) for t in interleaved_runs(sessions, feeds, budget, min_runs)]


def paired_ratios(runs: list[list[float]]) -> list[float]:
    """Median over rounds of each session's time divided by session 0's time in the same round.

    Runs of one round are adjacent in time, so a load burst scales both sides of a ratio alike: the
    median ratio sees a 3-5 % difference that the spread of absolute times on a shared machine hides.
    """
    base = np.asarray(runs[0])
    return [float(np.median(np.asarray(r) / base)) for r in runs]


def _sessions(models: list[ir.Model | onnx.ModelProto], threads: int) -> list[ort.InferenceSession]:
    protos = [ir.serde.serialize_model(m) if isinstance(m, ir.Model) else m for m in models]
    return [timing_session(p.SerializeToString(), threads) for p in protos]


def time_models(models: list[ir.Model | onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int = 2,
                budget: float = 1.0, min_runs: int = 5) -> list[float]:
    """:func:`time_interleaved` on in-memory models fed the same inputs."""
    sessions = _sessions(models, threads)
    return time_interleaved(sessions, [feeds] * len(sessions), budget, min_runs)


def compare_models(models: list[ir.Model | onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int = 2,
                   budget: float = 1.0, min_runs: int = 5) -> tuple[list[float], list[float]]:
    """(20th-percentile seconds, paired ratio to ``models[0]``) of each model, timed round-robin."""
    sessions = _sessions(models, threads)
    runs = interleaved_runs(sessions, [feeds] * len(sessions), budget, min_runs)
    return [float(np.percentile(r, 20)) for r in runs], paired_ratios(runs)


def time_model(model: ir.Model | onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 2,
               budget: float = 0.15) -> float:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    return time_session(timing_session(proto.SerializeToString(), threads), feeds, budget)


def _micro_model(model: ir.Model, proto: onnx.ModelProto, layer: ir.Node, rules: RuleSet,
                 shapes: Mapping[str, tuple[int, ...]]) -> tuple[ir.Model, dict[str, np.ndarray]] | None:
    """The layer and its fused tail as a model of their own, fed at the calibrated shapes."""
    chain = [layer]
    tail = layer_tail(layer, rules)
    while chain[-1] is not tail:
        chain.append(next(iter(chain[-1].outputs[0].uses())).node)
    protos = {n.name: n for n in proto.graph.node}
    inits = {t.name: t for t in proto.graph.initializer}
    produced = {v.name for n in chain for v in n.outputs}
    inputs, feeds, initializers, extra = [], {}, [], []
    for node in chain:
        for value in node.inputs:
            if value is None or value.name in produced or value.name in feeds:
                continue
            if value.name in inits:
                initializers.append(inits[value.name])
                continue
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant":
                extra.append(protos[producer.name])
                continue
            shape = shapes.get(value.name)
            if shape is None:
                return None
            # Calibration records shapes of float tensors only; a value without a dtype (a pass left no
            # inference behind) is one of those.
            dtype = value.dtype or ir.DataType.FLOAT
            feeds[value.name] = np.random.default_rng(0).standard_normal(shape).astype(dtype.numpy())
            inputs.append(helper.make_tensor_value_info(value.name, int(dtype), list(shape)))
    output = tail.outputs[0]
    # An Identity keeps the layer's output internal, so it can be quantized as in the full model.
    copy = helper.make_node("Identity", [output.name], ["micro_output"], name="micro_output")
    graph = helper.make_graph([*extra, *(protos[n.name] for n in chain), copy], f"micro_{layer.name}", inputs,
                              [helper.make_tensor_value_info("micro_output", int(output.dtype or 1), None)],
                              initializers)
    micro = helper.make_model(graph, opset_imports=list(proto.opset_import))
    micro.ir_version = proto.ir_version
    return ir.serde.deserialize_model(micro), feeds


def _fit_conversion(op: str, threads: int) -> tuple[float, float]:
    """Seconds of a lone QuantizeLinear/DequantizeLinear as fixed + per-element cost."""
    points = []
    for size in (4096, 1 << 20):
        if op == "QuantizeLinear":
            x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size])
            y = helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [size])
            feeds = {"x": np.random.default_rng(0).standard_normal(size).astype(np.float32)}
            zero = helper.make_tensor("z", onnx.TensorProto.UINT8, [], [128])
        else:
            x = helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [size])
            y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size])
            feeds = {"x": np.random.default_rng(0).integers(0, 255, size).astype(np.uint8)}
            zero = helper.make_tensor("z", onnx.TensorProto.UINT8, [], [128])
        scale = helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [0.05])
        nodes = [helper.make_node(op, ["x", "s", "z"], ["y"])]
        if op == "Transpose":  # ORT's NHWC INT8 kernels add one (uint8) at each float/INT8 border
            x = helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, 64, size // 64])
            y = helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [1, size // 64, 64])
            nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])]
            feeds = {"x": feeds["x"].reshape(1, 64, size // 64)} if feeds["x"].dtype == np.uint8 else \
                {"x": np.zeros((1, 64, size // 64), np.uint8)}
        graph = helper.make_graph(nodes, "conversion", [x], [y], [scale, zero])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        points.append((size, time_model(model, feeds, threads, budget=0.05)))
    (n0, t0), (n1, t1) = points
    per = max((t1 - t0) / (n1 - n0), 0.0)
    return max(t0 - per * n0, 0.0), per


def _session_overhead(threads: int) -> float:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return time_model(model, {"x": np.zeros(1, np.float32)}, threads, budget=0.05)


def measure_layers(model: ir.Model, rules: RuleSet, layers: Iterable[ir.Node], shapes: Mapping[str, tuple[int, ...]],
                   params: Callable[[str], QuantParams], threads: int = 2, reduce_range: bool = False,
                   progress: Callable[[str], None] | None = None) -> LayerTimes:
    """FP32 and interior INT8 times of each layer from micro-models timed in ORT."""
    times = LayerTimes(source="measured")
    transpose = _fit_conversion("Transpose", threads)
    q, dq = _fit_conversion("QuantizeLinear", threads), _fit_conversion("DequantizeLinear", threads)
    overhead = _session_overhead(threads)  # a run's fixed cost, paid once per model, not per layer
    fixed = max(q[0] + transpose[0] - 2 * overhead, 0.0), max(dq[0] + transpose[0] - 2 * overhead, 0.0)
    times.q_per_element = (fixed[0], q[1] + transpose[1])
    times.dq_per_element = (fixed[1], dq[1] + transpose[1])
    times.sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    proto = ir.serde.serialize_model(model)
    for layer in layers:
        built = _micro_model(model, proto, layer, rules, shapes)
        if built is None:
            continue
        micro, feeds = built
        fp32 = max(time_model(micro, feeds, threads) - overhead, 0.0)
        plan = plan_qdq(micro, rules, [layer.name])
        tail_output = layer_tail(layer, rules).outputs[0].name
        quantize_output = rules.quantize_outputs and tail_output in shapes
        if not quantize_output:  # a graph output of the full model stays float there
            plan.activations.pop(tail_output, None)
        apply_plan(micro, plan, params, reduce_range)
        isolated = max(time_model(micro, feeds, threads) - overhead, 0.0)
        boundary = sum(times.q(t) for t in feeds) + (times.dq(tail_output) if quantize_output else 0.0)
        times.fp32[layer.name] = fp32
        times.int8[layer.name] = max(isolated - boundary, 0.0)
        if progress is not None:
            progress(f"{layer.name}: fp32 {fp32 * 1e6:.0f} us, int8 {isolated * 1e6:.0f} us with Q/DQ")
    return times


def _isa_int8_factor(target: Any, op: str, depthwise: bool) -> float:
    """INT8 speed-up over FP32 for a compute-bound layer, from the target's ISA flags."""
    isa = {flag.lower() for flag in (getattr(target, "isa", ()) or ())}
    kind = getattr(target, "kind", "cpu")
    if kind != "cpu":
        return 2.0 if not depthwise else 1.0
    if isa & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni", "asimddp", "i8mm"}:
        return 2.5 if not depthwise else 1.0
    if "avx2" in isa:
        # vpmaddubsw + vpmaddwd: ~1.3x on large dense kernels; depthwise INT8 kernels lose.
        return 1.3 if not depthwise else 0.6
    return 0.8


def predict_layers(model: ir.Model, layers: Iterable[ir.Node], target: Any, cost: Any, costs: Any,
                   sizes: Mapping[str, int]) -> LayerTimes:
    """FP32 and INT8 layer times from ``ctx.cost`` or, without one, a roofline on the costs analysis."""
    layers = list(layers)
    times = LayerTimes(sizes=dict(sizes))
    bandwidth = getattr(target, "bandwidth", None) or 10e9
    peak = None
    if target is not None and hasattr(target, "peak"):
        peak = target.peak("fp32")
    peak = peak or 50e9
    # A Q or DQ reads 4 bytes and writes 1 (or the reverse) per element.
    times.q_per_element = times.dq_per_element = (2e-6, 5.0 / bandwidth)
    if cost is not None:
        names = [layer.name for layer in layers]
        fp32 = cost.layer_latency(model, {name: "fp32" for name in names})
        int8 = cost.layer_latency(model, {name: "int8" for name in names})
        times.fp32 = {n: float(fp32.get(n, 0.0)) for n in names}
        times.int8 = {n: float(int8.get(n, fp32.get(n, 0.0))) for n in names}
        times.source = "cost model"
        return times
    per_node = getattr(costs, "per_node", {})
    for layer in layers:
        node_cost = per_node.get(layer)
        if node_cost is None:
            continue
        group = layer.attributes.get_int("group", 1) if layer.op_type == "Conv" else 1
        depthwise = group > 1
        compute = node_cost.flops / (peak * 0.5)
        memory = node_cost.bytes / bandwidth
        times.fp32[layer.name] = max(compute, memory) + 2e-6
        # Only layers with a weight have an INT8 compute kernel; the rest just move a quarter of the bytes.
        factor = _isa_int8_factor(target, layer.op_type, depthwise) if layer.op_type in WEIGHT_OPS else 1.0
        # INT8 moves a quarter of the bytes.
        times.int8[layer.name] = max(compute / factor, memory / 4) + 2e-6
    times.source = "roofline"
    return times


def predicted_total(model: ir.Model, rules: RuleSet, chosen: set[str], times: LayerTimes,
                    plan: QdqPlan | None = None) -> float:
    """Predicted time of the candidate layers plus the conversions ``chosen`` forces."""
    total = sum(times.int8[n] if n in chosen else times.fp32[n] for n in times.fp32)
    plan = plan or plan_qdq(model, rules, chosen)
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    layer_nodes = {n.name: n for n in model.graph if n.name in chosen}
    tails = {layer_tail(node, rules).outputs[0].name for node in layer_nodes.values()}
    for name, root in plan.activations.items():
        if name == root and root not in tails:  # a shared-scale tensor reuses its root's Q
            total += times.q(name)
        value = values.get(name)
        if value is None:
            continue
        for use in value.uses():
            consumer = use.node
            if consumer.name in chosen:
                continue
            if consumer.op_type in rules.passthrough_ops and consumer.outputs[0].name in plan.activations:
                continue
            total += times.dq(name)
            break
    return total


def choose_layers(model: ir.Model, rules: RuleSet, times: LayerTimes, allowed: Iterable[str] | None = None,
                  max_rounds: int = 4) -> set[str]:
    """Local search over the INT8 set, flipping single layers while it pays.

    Single flips get stuck where a run of layers pays only as a whole (each flip alone adds a Q/DQ pair),
    so the search starts from three sets: layers whose interior is faster, every layer, and none; the
    best end point wins.
    """
    names = [n for n in times.fp32 if allowed is None or n in set(allowed)]
    starts = [{n for n in names if times.int8[n] < times.fp32[n]}, set(names), set()]
    best_set, best_total = set(), predicted_total(model, rules, set(), times)
    for start in starts:
        chosen, best = set(start), predicted_total(model, rules, start, times)
        for _ in range(max_rounds):
            improved = False
            for name in names:
                trial = chosen ^ {name}
                total = predicted_total(model, rules, trial, times)
                if total < best * (1 - 1e-4):
                    chosen, best, improved = trial, total, True
            if not improved:
                break
        if best < best_total * (1 - 1e-4):
            best_set, best_total = chosen, best
    return best_set
