"""The pass manager: runs bound passes in order and lets instruments watch.

The manager knows only the hook protocol. Timing, deltas, IR checks,
verification, print-after and reproducers are all instruments
(``edgeopt.passes.instruments``). Before each pass it keeps a cheap snapshot
(onnx-ir's clone shares tensors), so an instrument may veto a pass, which is
then rolled back and reported by name, and a pass that raises leaves an
intact "model before" for the reproducer.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes import PreconditionError

from edgeopt.ir.errors import EdgeoptError, PassFailedError
from edgeopt.ir.model_io import model_bytes
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import options_to_text
from edgeopt.passes.pipeline import PassSpec, pipeline_text


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    params: int
    bytes: int

    @staticmethod
    def of(model: ir.Model) -> GraphStats:
        nodes = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
        params = sum(
            int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None
        )
        return GraphStats(nodes, params, model_bytes(model))


@dataclass
class PassRecord:
    """What one step did; the report's row."""

    name: str
    step: str
    status: str = "pending"  # applied | unchanged | rolled back | skipped | failed
    seconds: float = 0.0
    modified: bool = False
    before: GraphStats | None = None
    after: GraphStats | None = None
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verify: dict[str, Any] | None = None
    reason: str | None = None
    reproducer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Instrument:
    """Hooks around a pipeline; override what you need. Returning a reason from
    ``after_pass`` vetoes the pass: the manager rolls it back."""

    def enter_pipeline(self, model: ir.Model, ctx: PassContext) -> None: ...

    def exit_pipeline(self, model: ir.Model, ctx: PassContext, records: list[PassRecord]) -> None: ...

    def before_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None: ...

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> str | None:
        return None

    def on_error(self, pass_: Pass, model_before: ir.Model, record: PassRecord, error: BaseException,
                 pipeline: str) -> None: ...


@dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord]
    pipeline: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "seconds": self.seconds,
                "passes": [r.to_dict() for r in self.records]}


class PassManager:
    """Runs ``passes`` on a model with ``instruments`` watching each step."""

    def __init__(self, passes: list[Pass], instruments: list[Instrument] | None = None,
                 ctx: PassContext | None = None) -> None:
        self.passes = passes
        self.instruments = list(instruments or [])
        self.ctx = ctx if ctx is not None else (passes[0].ctx if passes else PassContext())
        self.pipeline = pipeline_text(passes)

    def run(self, model: ir.Model) -> PipelineResult:
        start = time.perf_counter()
        for instrument in self.instruments:
            instrument.enter_pipeline(model, self.ctx)
        records: list[PassRecord] = []
        for pass_ in self.passes:
            record = PassRecord(pass_.name, PassSpec(pass_.name, options_to_text(pass_.options)).to_text())
            records.append(record)
            model = self._run_one(pass_, model, record)
        for instrument in self.instruments:
            instrument.exit_pipeline(model, self.ctx, records)
        return PipelineResult(model, records, self.pipeline, time.perf_counter() - start)

    def _run_one(self, pass_: Pass, model: ir.Model, record: PassRecord) -> ir.Model:
        snapshot = model.clone()
        for instrument in self.instruments:
            instrument.before_pass(pass_, model, record)
        began = time.perf_counter()
        try:
            result = pass_(model)
        except PreconditionError as error:
            # Not legal here (opset range): the pass never touched the model.
            record.status, record.reason = "skipped", str(error)
            return model
        except BaseException as error:
            record.seconds = time.perf_counter() - began
            record.status = "failed"
            record.reason = f"{type(error).__name__}: {error}"
            for instrument in self.instruments:
                instrument.on_error(pass_, snapshot, record, error, self.pipeline)
            if isinstance(error, KeyboardInterrupt):
                raise
            where = f"; reproducer written to {record.reproducer}" if record.reproducer else ""
            message = f"pass '{pass_.name}' failed: {record.reason.splitlines()[0]}{where}"
            failure = PassFailedError(message, reproducer=record.reproducer)
            failure.details = "".join(traceback.format_exception(error))  # type: ignore[attr-defined]
            if isinstance(error, EdgeoptError) and not isinstance(error, PassFailedError):
                # A user error raised inside a pass (bad calibration folder...) stays one.
                raise error
            raise failure from error
        record.seconds = time.perf_counter() - began
        if isinstance(result, PassResult):
            record.counts = dict(result.counts)
            record.notes = list(result.notes)
        record.modified = bool(result.modified)
        model = result.model
        if record.modified:
            self.ctx.analyses.invalidate(model, pass_.preserves)
        record.status = "applied" if record.modified else "unchanged"
        for instrument in self.instruments:
            veto = instrument.after_pass(pass_, model, record)
            if veto is not None:
                record.status, record.reason = "rolled back", veto
                return snapshot
        return model
