"""The reference executor: run any IR state in ONNX Runtime and compare two states.

Every pass is checked against this: the input model's outputs are the
reference, and a rewritten model must agree within tolerance. ORT's own graph
optimizations are off so the run reflects the graph as written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.ir.model_io import PROTOBUF_LIMIT, model_bytes, save_model
from edgeopt.ir.shapes import bind_shape

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    max_rel: float  # max |a-b| over max |a|: stable when the reference has zeros
    cosine: float
    top1: float | None  # argmax agreement over the last axis, for score-like outputs
    within: bool  # every element within atol + rtol * |reference|
    shape_match: bool = True


@dataclass(frozen=True)
class Comparison:
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.within and o.shape_match for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def top1(self) -> float | None:
        values = [o.top1 for o in self.outputs if o.top1 is not None]
        return min(values) if values else None

    def summary(self) -> dict[str, float | bool | None]:
        return {"ok": self.ok, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "cosine": self.cosine, "top1": self.top1}

    def worst(self) -> str:
        if not self.outputs:
            return "no outputs"
        worst = max(self.outputs, key=lambda o: (not o.shape_match, o.max_abs))
        if not worst.shape_match:
            return f"output '{worst.name}' changed shape"
        return f"output '{worst.name}' max abs error {worst.max_abs:.3g} (rel {worst.max_rel:.3g})"


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray,
                   atol: float = 1e-5, rtol: float = 1e-4) -> OutputComparison:
    if reference.shape != candidate.shape:
        return OutputComparison(name, float("inf"), float("inf"), 0.0, None, False, False)
    ref = reference.astype(np.float64) if reference.dtype != np.bool_ else reference.astype(np.int8)
    cand = candidate.astype(np.float64) if candidate.dtype != np.bool_ else candidate.astype(np.int8)
    if ref.size == 0:
        return OutputComparison(name, 0.0, 0.0, 1.0, None, True)
    finite = np.isfinite(ref) & np.isfinite(cand)
    same_nonfinite = bool(np.all((ref == cand) | finite | (np.isnan(ref) & np.isnan(cand))))
    diff = np.abs(ref - cand)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    a, b = ref[finite].ravel(), cand[finite].ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.dot(a, b) / norm) if norm > 0 else (1.0 if np.array_equal(a, b) else 0.0)
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] > 1 and np.issubdtype(reference.dtype, np.floating):
        top1 = float(np.mean(ref.argmax(-1) == cand.argmax(-1)))
    within = same_nonfinite and bool(np.all(np.abs(ref - cand)[finite] <= atol + rtol * np.abs(ref[finite])))
    return OutputComparison(name, max_abs, max_rel, cosine, top1, within)


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    atol: float = 1e-5, rtol: float = 1e-4) -> Comparison:
    """Compare two runs output by output (outputs are matched by position order of ``reference``)."""
    results = []
    cand_values = list(candidate.values())
    for index, (name, ref) in enumerate(reference.items()):
        cand = candidate.get(name, cand_values[index] if index < len(cand_values) else None)
        if cand is None:
            results.append(OutputComparison(name, float("inf"), float("inf"), 0.0, None, False, False))
        else:
            results.append(compare_arrays(name, np.asarray(ref), np.asarray(cand), atol, rtol))
    return Comparison(results)


def _gather_bound(model: ir.Model, value: ir.Value) -> int | None:
    """If ``value`` indexes a constant table (Gather indices), the table's length."""
    bounds = []
    for consumer, index in value.uses():
        if consumer.op_type == "Gather" and index == 1:
            data = consumer.inputs[0]
            if data is not None and data.const_value is not None:
                axis = consumer.attributes.get_int("axis", 0)
                bounds.append(int(data.const_value.shape[axis]))
    return min(bounds) if bounds else None


class ReferenceExecutor:
    """Runs IR snapshots in ONNX Runtime on the CPU with graph optimizations off."""

    def __init__(self, threads: int | None = None, providers: Iterable[str] = ("CPUExecutionProvider",),
                 optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> None:
        self.threads = threads
        self.providers = list(providers)
        self.optimization = optimization

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = self.optimization
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        return options

    def session(self, model: ir.Model) -> ort.InferenceSession:
        options = self._options()
        if model_bytes(model) < PROTOBUF_LIMIT - 64 * 2**20:
            payload = ir.serde.serialize_model(model).SerializeToString()
            return ort.InferenceSession(payload, options, providers=self.providers)
        with tempfile.TemporaryDirectory(prefix="edgeopt-ref-") as folder:
            path = Path(folder) / "model.onnx"
            save_model(model, path, external_data=True)
            return ort.InferenceSession(str(path), options, providers=self.providers)

    def generate_inputs(self, model: ir.Model, bindings: Mapping[str, int] | None = None,
                        seed: int = 0) -> Feeds:
        """Random inputs for every graph input; symbolic dims bound to ``bindings`` (else 1)."""
        rng = np.random.default_rng(seed)
        feeds: Feeds = {}
        initializers = set(model.graph.initializers)
        for value in model.graph.inputs:
            if value.name in initializers:
                continue
            if value.dtype is None or value.shape is None:
                raise ValueError(f"graph input '{value.name}' has no dtype or shape; pass inputs explicitly")
            dims = bind_shape(value.shape, bindings)
            dtype = value.dtype.numpy()
            if value.dtype.is_floating_point():
                feeds[value.name] = rng.standard_normal(dims).astype(dtype)
            elif dtype == np.bool_:
                feeds[value.name] = rng.random(dims) > 0.5
            else:
                high = _gather_bound(model, value) or 2
                feeds[value.name] = rng.integers(0, high, size=dims).astype(dtype)
        return feeds

    def session_from_file(self, path: Path) -> ort.InferenceSession:
        """A session on a model already saved (saves serializing the IR again)."""
        return ort.InferenceSession(str(path), self._options(), providers=self.providers)

    def run(self, model: ir.Model | Path, inputs: Mapping[str, np.ndarray],
            extra_outputs: Iterable[str] = ()) -> Feeds:
        """Outputs by name; ``model`` may be a saved file; ``extra_outputs`` names intermediate values too."""
        if isinstance(model, Path):
            if extra_outputs:
                raise ValueError("extra_outputs needs the IR, not a saved file")
            return self._run(self.session_from_file(model), inputs)
        extra = [name for name in extra_outputs]
        if extra:
            model = _with_outputs(model, extra)
        return self._run(self.session(model), inputs)

    @staticmethod
    def _run(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> Feeds:
        names = [output.name for output in session.get_outputs()]
        allowed = {i.name for i in session.get_inputs()}
        feeds = {name: array for name, array in inputs.items() if name in allowed}
        return dict(zip(names, session.run(names, feeds), strict=True))


def _with_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A clone of ``model`` whose graph also outputs the named intermediate values."""
    clone = model.clone()
    wanted = set(names)
    present = {v.name for v in clone.graph.outputs} | {v.name for v in clone.graph.inputs}
    for node in clone.graph:
        for value in node.outputs:
            if value.name in wanted and value.name not in present:
                clone.graph.outputs.append(value)
                present.add(value.name)
    return clone
