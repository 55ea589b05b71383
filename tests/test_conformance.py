"""Conformance on a suite no one here wrote: the default pipeline over the onnx package's node tests.

The onnx wheel ships the node test definitions (onnx.backend.test.case.node:
model + inputs + expected outputs computed by onnx); the prebuilt
``data/node/*/model.onnx`` files are used when present, else the same cases
are taken from the definitions. For each case the model is written, loaded
with edgeopt's loader, run through the default pipeline, and the optimized
model is run in ONNX Runtime against the expected outputs. Outcomes:

- unchanged: nothing to optimize, ORT runs it;
- optimized: rewritten and still matching (the expected outputs, or ORT's
  run of the original where ORT itself disagrees with onnx's expectation);
- rejected: a clear UserError (opset out of range, invalid graph...);
- not comparable: ORT cannot run the original (or the data is not tensors,
  or the op is random), so only "no crash" is checked;
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


def _run(model: onnx.ModelProto, inputs: list[object]) -> list[np.ndarray] | None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        declared = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        feeds = dict(zip(declared, inputs, strict=False))
        return session.run(None, {n: feeds[n] for n in names})
    except Exception:
        return None


def _close(expected: object, got: object, rtol: float, atol: float) -> bool:
    if isinstance(expected, (list, tuple)) or isinstance(got, (list, tuple)):  # sequence outputs
        return (isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(expected) == len(got)
                and all(_close(e, g, rtol, atol) for e, g in zip(expected, got, strict=True)))
    if expected is None or got is None:
        return expected is got
    expected = np.asarray(expected)
    got = np.asarray(got)
    if expected.shape != got.shape:
        return False
    if expected.dtype.kind in "fc" and got.dtype.kind in "fc":
        return bool(np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(got, expected))


def _all_close(expected: list[object], got: list[np.ndarray], rtol: float, atol: float) -> bool:
    return len(expected) == len(got) and all(_close(e, g, rtol, atol) for e, g in zip(expected, got, strict=True))


def run_case(case: Case, folder: Path) -> str:
    """Outcome of one case: unchanged | optimized | rejected | not comparable | wrong | crash."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    original = case.model()
    onnx.save(original, str(path))
    try:
        model = load_model(path)
        ctx = PassContext()
        result = PassManager(instantiate(parse_pipeline(DEFAULT_PIPELINE), ctx), [], ctx).run(model)
        optimized = ir.serde.serialize_model(result.model)
    except UserError:
        return "rejected"
    except Exception:
        return "crash"
    modified = any(record.modified for record in result.records)
    inputs, expected = case.inputs(), case.outputs()
    if any(i is None or not isinstance(i, np.ndarray) for i in inputs):
        return "not comparable"
    reference = _run(original, inputs)
    if reference is None or (again := _run(original, inputs)) is None or not _all_close(reference, again, 0, 0):
        return "not comparable"  # ORT cannot run it, or the op is random
    got = _run(optimized, inputs)
    if got is None:
        return "wrong"
    expected_ok = _all_close(expected, reference, 1e-3, 1e-5)
    matches = _all_close(expected, got, 1e-3, 1e-5) if expected_ok else _all_close(reference, got, 1e-5, 1e-6)
    if not matches:
        return "wrong"
    return "optimized" if modified else "unchanged"


def run_suite(cases: list[Case], workdir: Path) -> tuple[Counter[str], dict[str, list[str]]]:
    counts: Counter[str] = Counter()
    which: dict[str, list[str]] = {}
    for index, case in enumerate(cases):
        outcome = run_case(case, workdir / f"{index:04d}")
        counts[outcome] += 1
        which.setdefault(outcome, []).append(case.name)
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
    assert counts["optimized"] > 0 and counts["unchanged"] > 0, report


def test_default_pipeline_on_sampled_onnx_node_tests(tmp_path: Path) -> None:
    cases = node_cases()
    assert len(cases) > 1000  # the suite is really there
    _check(cases[::SAMPLE_EVERY], tmp_path)


@pytest.mark.slow
def test_default_pipeline_on_all_onnx_node_tests(tmp_path: Path) -> None:
    _check(node_cases(), tmp_path)
