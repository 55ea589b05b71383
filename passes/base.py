"""The pass API: a pass, its result, and the context every pass receives.

A pass is an onnx-ir ``InPlacePass`` (so onnx-ir's own passes and ours compose
both ways) with what a compiler needs on top: a registered name, a one-line
doc, typed options, the opset range where it is legal, the analyses it needs
and those it keeps valid, and a result that says what it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PreconditionError
from onnx_ir.passes import PassResult as _IrPassResult

from edgeopt.ir.analysis import AnalysisManager
from edgeopt.ir.model_io import default_opset
from edgeopt.passes.options import NoOptions


class CostQuery(Protocol):
    """What a target's cost model offers passes (implemented in edgeopt.targets).

    ``precision`` maps node names to "fp32" | "fp16" | "int8" | "int4" (nodes not
    named run at the model's own precision). Times are seconds.
    """

    def latency(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> float: ...

    def layer_latency(self, model: ir.Model, precision: Mapping[str, str] | None = None) -> dict[str, float]: ...


@dataclass
class PassContext:
    """Everything a pass may need, so pass signatures stay short.

    ``target`` and ``cost`` are handed in by the driver from edgeopt.targets;
    passes never import that layer.
    """

    target: Any = None
    cost: CostQuery | None = None
    # The backend the result is emitted for ("onnxruntime", "tvm"...); None while unknown
    # (`--backend auto` picks it after the pipeline). Runtime-specific passes (fuse-ort) check it.
    backend: str | None = None
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    calibration_data: Callable[[], Any] | None = None
    reference_inputs: Mapping[str, np.ndarray] | None = None
    workdir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("edgeopt.passes"))


@dataclass
class PassResult(_IrPassResult):
    """onnx-ir's result plus what changed: counts by kind and free-text notes."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Pass(InPlacePass):
    """Base of every edgeopt pass; subclasses implement :meth:`run`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    min_opset: ClassVar[int | None] = None
    max_opset: ClassVar[int | None] = None
    requires_analyses: ClassVar[tuple[str, ...]] = ()
    preserves: ClassVar[tuple[str, ...]] = ()  # analyses still valid after the pass; "*" = all

    def __init__(self, options: Any = None, ctx: PassContext | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.ctx = ctx if ctx is not None else PassContext()

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring: what ``edgeopt passes`` prints."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def requires(self, model: ir.Model) -> None:
        opset = default_opset(model)
        if self.min_opset is not None and opset < self.min_opset:
            raise PreconditionError(f"pass '{self.name}' needs opset >= {self.min_opset}, model has {opset}")
        if self.max_opset is not None and opset > self.max_opset:
            raise PreconditionError(f"pass '{self.name}' supports opset <= {self.max_opset}, model has {opset}")

    def call(self, model: ir.Model) -> PassResult:
        for name in self.requires_analyses:
            self.ctx.analyses.get(model, name)
        return self.run(model, self.ctx)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")
