"""The emitter API and registry (plugins register emitters the same way).

An emitter takes the final IR and the target's options, writes its artifact
into the compile folder, lists ops its backend lacks before doing any work,
and validates the artifact against the reference run where its runtime is
installed.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import TargetError, UserError
from edgeopt.passes.options import NoOptions, convert_values


@dataclass
class EmitResult:
    backend: str
    artifact: Path  # the file (or folder) a user deploys
    files: list[Path] = field(default_factory=list)
    validation: dict[str, Any] | None = None  # Comparison.summary() against the reference
    latency_ms: float | None = None  # measured on this machine, when the backend runs here
    notes: list[str] = field(default_factory=list)


class Emitter:
    """Base of every backend emitter."""

    backend: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions  # a dataclass; filled from [backend_options.<backend>]

    def options(self, raw: Mapping[str, Any]) -> Any:
        """``raw`` (target file values or ``--backend-option`` text) as this emitter's Options."""
        return build_emitter_options(self.backend, self.Options, raw)

    def unsupported_ops(self, model: ir.Model) -> list[str]:
        """Op types (domain::op for custom domains) this backend cannot run; [] if all are fine."""
        return []

    def check(self, model: ir.Model) -> None:
        missing = self.unsupported_ops(model)
        if missing:
            contrib = any(op.startswith("com.microsoft::") for op in missing)
            raise UserError(
                f"backend '{self.backend}' cannot run op(s) {', '.join(sorted(missing))};"
                + (" com.microsoft ops are ONNX Runtime contrib ops (fuse-ort makes them), only --backend"
                   " onnxruntime runs them" if contrib else " choose another --backend or a pipeline that"
                   " removes them")
            )

    def emit(self, model: ir.Model, folder: Path, options: Mapping[str, Any]) -> EmitResult:
        raise NotImplementedError

    def validate(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], *, measure: bool = True) -> None:
        """Run the artifact on ``inputs`` and record its agreement with ``reference``.

        Backends that cannot run here leave ``result.validation`` as None and add a note.
        """


def build_emitter_options(backend: str, options_type: type, raw: Mapping[str, Any]) -> Any:
    """Instantiate an emitter's Options dataclass; an unknown key or bad value is a one-line error."""
    if not dataclasses.is_dataclass(options_type):
        return options_type()
    return options_type(**convert_values(f"backend '{backend}'", options_type, raw, UserError))


_EMITTERS: dict[str, type[Emitter]] = {}


def register_emitter(backend: str) -> Callable[[type[Emitter]], type[Emitter]]:
    def decorate(cls: type[Emitter]) -> type[Emitter]:
        cls.backend = backend
        _EMITTERS[backend] = cls
        return cls

    return decorate


def _ensure_builtins() -> None:
    import edgeopt.targets.emitters.onnxruntime
    import edgeopt.targets.emitters.openvino
    import edgeopt.targets.emitters.tensorrt
    import edgeopt.targets.emitters.tvm  # noqa: F401


def registered_emitters() -> dict[str, type[Emitter]]:
    _ensure_builtins()
    return dict(sorted(_EMITTERS.items()))


def get_emitter(backend: str) -> Emitter:
    _ensure_builtins()
    if backend not in _EMITTERS:
        close = difflib.get_close_matches(backend, _EMITTERS, n=3)
        known = ", ".join(sorted(_EMITTERS))
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TargetError(f"no emitter for backend '{backend}' ({hint}available: {known})")
    return _EMITTERS[backend]()
