"""Instruments: deltas, IR checks, verification, print-after, reproducers.

Each is an object with the manager's hooks; the CLI switches them on with
flags (``--verify``, ``--print-after``...). None is special-cased in the manager.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from edgeopt.ir.model_io import save_model
from edgeopt.ir.reference import ReferenceExecutor, compare_outputs
from edgeopt.passes.base import Pass, PassContext
from edgeopt.passes.manager import GraphStats, Instrument, PassRecord


class DeltaInstrument(Instrument):
    """Records node, parameter and byte counts before and after each pass."""

    def before_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        record.before = GraphStats.of(model)

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> str | None:
        record.after = GraphStats.of(model) if record.modified else record.before
        return None


def topological_violation(graph: ir.Graph) -> str | None:
    """The first node that uses a value produced later (or never), else None."""
    defined = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    for node in graph:
        for value in node.inputs:
            if value is None or id(value) in defined:
                continue
            if value.producer() is None and value.graph is not graph:
                continue  # captured from an outer scope (subgraph)
            return f"node '{node.name}' ({node.op_type}) uses '{value.name}' before it is produced"
        defined.update(id(v) for v in node.outputs)
    return None


class IRCheckInstrument(Instrument):
    """After each changing pass: onnx.checker and topological order, or roll back."""

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> str | None:
        if not record.modified:
            return None
        problem = topological_violation(model.graph)
        if problem:
            return f"broke topological order: {problem}"
        try:
            # onnx-ir's checker pass strips large initializers first, so this scales.
            CheckerPass(full_check=True)(model)
        except Exception as error:  # checker failures come wrapped by onnx-ir
            cause = error.__cause__ or error
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            return f"broke the ONNX checker: {first}"
        return None


class VerifyInstrument(Instrument):
    """Compares each changed model against the input model's outputs; vetoes a mismatch.

    Passes that declare ``numerics = "lossy"`` (quantization) are held to a
    cosine bound instead of element-wise tolerance.
    """

    def __init__(self, inputs: Mapping[str, np.ndarray] | None = None, atol: float = 1e-4,
                 rtol: float = 1e-3, min_cosine: float = 0.99, seed: int = 0) -> None:
        self.inputs = dict(inputs) if inputs is not None else None
        self.atol, self.rtol, self.min_cosine, self.seed = atol, rtol, min_cosine, seed
        self.executor = ReferenceExecutor()
        self.reference: dict[str, np.ndarray] = {}

    def enter_pipeline(self, model: ir.Model, ctx: PassContext) -> None:
        if self.inputs is None:
            self.inputs = dict(ctx.reference_inputs) if ctx.reference_inputs else \
                self.executor.generate_inputs(model, seed=self.seed)
        self.reference = self.executor.run(model, self.inputs)

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> str | None:
        if not record.modified:
            return None
        try:
            outputs = self.executor.run(model, self.inputs or {})
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            record.verify = {"ok": False, "error": first}
            return f"model no longer runs in ONNX Runtime: {first}"
        comparison = compare_outputs(self.reference, outputs, self.atol, self.rtol)
        record.verify = comparison.summary()
        lossy = getattr(pass_, "numerics", "exact") == "lossy"
        shapes_ok = all(o.shape_match for o in comparison.outputs)
        ok = shapes_ok and comparison.cosine >= self.min_cosine if lossy else comparison.ok
        record.verify["ok"] = ok
        if not ok:
            bound = f"cosine >= {self.min_cosine}" if lossy else f"atol={self.atol:g}, rtol={self.rtol:g}"
            return f"outputs differ from the input model ({comparison.worst()}; tolerance {bound})"
        return None


class PrintAfterInstrument(Instrument):
    """Prints the IR after the named passes (or all) changed it."""

    def __init__(self, names: set[str] | None = None, stream: TextIO | None = None) -> None:
        self.names = names
        self.stream = stream or sys.stderr

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> str | None:
        if record.modified and (self.names is None or pass_.name in self.names):
            print(f"// ----- IR after {record.step} -----", file=self.stream)
            print(model.graph, file=self.stream)
        return None


class ReproducerInstrument(Instrument):
    """When a pass raises: writes the model before it, the pipeline and the error."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_error(self, pass_: Pass, model_before: ir.Model, record: PassRecord,
                 error: BaseException, pipeline: str) -> None:
        index = 0
        while (target := self.folder / f"{pass_.name}-{index}").exists():
            index += 1
        target.mkdir(parents=True)
        try:
            save_model(model_before, target / "model.onnx")
        except Exception as save_error:  # the reproducer must not hide the original error
            (target / "model.onnx.error.txt").write_text(f"could not save the model: {save_error}\n")
        (target / "pipeline.txt").write_text(f"{pipeline}\n")
        (target / "failing_step.txt").write_text(f"{record.step}\n")
        (target / "error.txt").write_text("".join(traceback.format_exception(error)))
        (target / "replay.sh").write_text(
            "#!/bin/sh\n# Re-run the failing pass on the model it received.\n"
            f"edgeopt compile model.onnx --target host-cpu --passes '{record.step}' -o replay-out --debug\n"
        )
        record.reproducer = str(target)


def check_model_proto(model: ir.Model) -> None:
    """Full onnx.checker on a serialized model (small models; tests and the driver)."""
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
