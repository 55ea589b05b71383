"""Conformance on a suite no one here wrote: the default pipeline over the onnx package's node tests.

The onnx wheel ships the node test definitions (onnx.backend.test.case.node:
model + inputs + expected outputs computed by onnx); the prebuilt
``data/node/*/model.onnx`` files are used when present, else the same cases
are taken from the definitions. For each case the model is written, loaded
with edgeopt's loader, run through the default pipeline, and the optimized
model is run in ONNX Runtime (onnx's reference evaluator where ORT cannot
run the original) against the expected outputs. Outcomes:

- unchanged: nothing to optimize, ORT runs it;
- optimized: rewritten and still matching (the expected outputs, or ORT's
  run of the original where ORT itself disagrees with onnx's expectation);
- rejected: a clear UserError (opset out of range, invalid graph...);
- not comparable: neither runtime runs the original (or the input data is not
  tensors or sequences of tensors, or the op is random), so only "no crash"
  is checked;
- wrong / crash: the bar is zero of each.

The default run takes every 10th case (deterministic); ``-m slow`` runs all.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgeopt.driver import DEFAULT_PIPELINE
from edgeopt.ir import UserError, load_model
from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline

NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
SAMPLE_EVERY = 10


@dataclass
class Case:
    name: str
    model: Callable[[], onnx.ModelProto]
    inputs: Callable[[], list[object]]
    outputs: Callable[[], list[object]]


def _from_files(folder: Path) -> Case:
    def tensors(kind: str) -> list[object]:
        files = sorted((folder / "test_data_set_0").glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        arrays: list[object] = []
        for path in files:
            try:
                arrays.append(numpy_helper.to_array(onnx.load_tensor(str(path))))
            except Exception:  # sequence / optional / map data: not comparable here
                arrays.append(None)
        return arrays

    return Case(folder.name, lambda: onnx.load(str(folder / "model.onnx")),
                lambda: tensors("input"), lambda: tensors("output"))


@functools.cache
def node_cases() -> list[Case]:
    """Every onnx node test case, sorted by name."""
    if NODE_DATA.is_dir() and any(NODE_DATA.glob("*/model.onnx")):
        return [_from_files(p.parent) for p in sorted(NODE_DATA.glob("*/model.onnx"))]
    from onnx.backend.test.case import node

    cases = []
    for case in node.collect_testcases(None):
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        cases.append(Case(case.name, lambda m=case.model: m, lambda i=inputs: list(i), lambda o=outputs: list(o)))
    return sorted(cases, key=lambda c: c.name)


def _as_data(value: object) -> object:
    """Case data as ORT takes it: arrays, lists of arrays (sequences); None for what it cannot take.

    The case definitions hold numpy scalars (Clip's bounds, CumSum's axis) and
    TensorProtos (types numpy lacks) as well as arrays; all of them are tensors.
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        items = [_as_data(item) for item in value]
        return items if all(isinstance(item, np.ndarray) for item in items) else None
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _run_ort(model: onnx.ModelProto, inputs: list[object]) -> tuple[list[np.ndarray] | None, str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        declared = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        feeds = dict(zip(declared, inputs, strict=False))
        return session.run(None, {n: feeds[n] for n in names}), ""
    except Exception as error:
        return None, _first_line(error)


def _run_reference(model: onnx.ModelProto, inputs: list[object]) -> tuple[list[np.ndarray] | None, str]:
    """onnx's reference evaluator: it runs what ORT has no kernel for (float8/int4 data, RoiAlign...)."""
    try:
        evaluator = ReferenceEvaluator(model)
        initializers = {t.name for t in model.graph.initializer}
        declared = [i.name for i in model.graph.input if i.name not in initializers]
        return list(evaluator.run(None, dict(zip(declared, inputs, strict=False)))), ""
    except Exception as error:
        return None, _first_line(error)


RUNTIMES: tuple[tuple[str, Callable[[onnx.ModelProto, list[object]], tuple[list[np.ndarray] | None, str]]], ...] = (
    ("ORT", _run_ort), ("the onnx reference evaluator", _run_reference))


def _comparable(array: np.ndarray) -> np.ndarray:
    """ml_dtypes arrays (float8, int4, bfloat16: numpy kind 'V') as float32, so NaN compares equal to NaN."""
    return array.astype(np.float32) if array.dtype.kind == "V" else array


def _close(expected: object, got: object, rtol: float, atol: float) -> bool:
    if isinstance(expected, (list, tuple)) or isinstance(got, (list, tuple)):  # sequence outputs
        return (isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(expected) == len(got)
                and all(_close(e, g, rtol, atol) for e, g in zip(expected, got, strict=True)))
    if expected is None or got is None:
        return expected is got
    expected = _comparable(np.asarray(expected))
    got = _comparable(np.asarray(got))
    if expected.shape != got.shape:
        return False
    if expected.dtype.kind in "fc" and got.dtype.kind in "fc":
        return bool(np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(got, expected))


def _all_close(expected: list[object], got: list[np.ndarray], rtol: float, atol: float) -> bool:
    return len(expected) == len(got) and all(_close(e, g, rtol, atol) for e, g in zip(expected, got, strict=True))


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Outcome of one case (unchanged | optimized | rejected | not comparable | wrong | crash) and why."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    original = case.model()
    onnx.save(original, str(path))
    try:
        model = load_model(path)
        ctx = PassContext()
        result = PassManager(instantiate(parse_pipeline(DEFAULT_PIPELINE), ctx), [], ctx).run(model)
        optimized = ir.serde.serialize_model(result.model)
    except UserError as error:
        return "rejected", str(error)
    except Exception as error:
        return "crash", f"{type(error).__name__}: {error}"
    modified = any(record.modified for record in result.records)
    inputs, expected = [_as_data(i) for i in case.inputs()], [_as_data(o) for o in case.outputs()]
    if any(i is None for i in inputs):
        return "not comparable", "input data is neither tensors nor sequences of tensors"
    # ORT first; where it cannot run the original, onnx's reference evaluator (it made the expected outputs).
    errors = []
    for runtime, run in RUNTIMES:
        reference, error = run(original, inputs)
        if reference is not None:
            break
        errors.append(f"{runtime}: {error}")
    else:
        return "not comparable", "no runtime runs the original: " + "; ".join(errors)
    again, _ = run(original, inputs)
    if again is None or not _all_close(reference, again, 0, 0):
        return "not comparable", f"{runtime} gives different results on two runs of the original (random op)"
    got, error = run(optimized, inputs)
    if got is None:
        return "wrong", f"{runtime} cannot run the optimized model: {error}"
    expected_ok = _all_close(expected, reference, 1e-3, 1e-5)
    matches = _all_close(expected, got, 1e-3, 1e-5) if expected_ok else _all_close(reference, got, 1e-5, 1e-6)
    if not matches:
        return "wrong", "outputs differ"
    return ("optimized" if modified else "unchanged"), ""


def run_suite(cases: list[Case], workdir: Path) -> tuple[Counter[str], dict[str, list[str]]]:
    """Outcome counts, and per outcome the cases with their reasons (``name: reason``)."""
    counts: Counter[str] = Counter()
    which: dict[str, list[str]] = {}
    for index, case in enumerate(cases):
        outcome, detail = run_case(case, workdir / f"{index:04d}")
        counts[outcome] += 1
        which.setdefault(outcome, []).append(f"{case.name}: {detail}" if detail else case.name)
    return counts, which


def _report(counts: Counter[str], which: dict[str, list[str]], total: int) -> str:
    order = ("unchanged", "optimized", "rejected", "not comparable", "wrong", "crash")
    line = ", ".join(f"{k}: {counts.get(k, 0)}" for k in order)
    bad = {k: which.get(k, [])[:20] for k in ("wrong", "crash") if which.get(k)}
    return f"onnx node tests ({total} cases): {line}" + (f"; failing: {bad}" if bad else "")


def _check(cases: list[Case], tmp_path: Path) -> None:
    counts, which = run_suite(cases, tmp_path)
    report = _report(counts, which, len(cases))
    print(report)
    assert counts["crash"] == 0 and counts["wrong"] == 0, report
    # A rejection is only acceptable as a clear one-line error that says what is wrong.
    unclear = [r for r in which.get("rejected", []) if "\n" in r or not r.split(": ", 1)[-1].strip()]
    assert not unclear, f"rejections without a one-line message: {unclear[:5]}"
    assert counts["optimized"] > 0 and counts["unchanged"] > 0, report


def test_default_pipeline_on_sampled_onnx_node_tests(tmp_path: Path) -> None:
    cases = node_cases()
    assert len(cases) > 1000  # the suite is really there
    _check(cases[::SAMPLE_EVERY], tmp_path)


@pytest.mark.slow
def test_default_pipeline_on_all_onnx_node_tests(tmp_path: Path) -> None:
    _check(node_cases(), tmp_path)
