"""Analyses computed on demand and cached until a pass invalidates them.

An analysis is a function ``(model, manager) -> result`` registered under a
name. The pass manager calls :meth:`AnalysisManager.invalidate` after every
pass that changed the model, keeping only what that pass declares it
preserves, so a pass never reads a stale shape table.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import onnx_ir as ir

AnalysisFn = Callable[[ir.Model, "AnalysisManager"], Any]

_ANALYSES: dict[str, AnalysisFn] = {}

# Declared by a pass that keeps every cached analysis valid (e.g. a pass that
# only renames metadata).
ALL = "*"


def register_analysis(name: str) -> Callable[[AnalysisFn], AnalysisFn]:
    """Register ``fn`` as the analysis called ``name``."""

    def decorate(fn: AnalysisFn) -> AnalysisFn:
        _ANALYSES[name] = fn
        return fn

    return decorate


def analysis_names() -> list[str]:
    return sorted(_ANALYSES)


class AnalysisManager:
    """Per-model cache of analysis results (weakly keyed: dropping a model frees them)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[ir.Model, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self.computed: dict[str, int] = {}  # how often each was (re)computed

    def get(self, model: ir.Model, name: str) -> Any:
        if name not in _ANALYSES:
            raise KeyError(f"unknown analysis '{name}' (known: {', '.join(analysis_names())})")
        results = self._cache.setdefault(model, {})
        if name not in results:
            results[name] = _ANALYSES[name](model, self)
            self.computed[name] = self.computed.get(name, 0) + 1
        return results[name]

    def cached(self, model: ir.Model) -> set[str]:
        return set(self._cache.get(model, {}))

    def invalidate(self, model: ir.Model, preserved: Iterable[str] = ()) -> None:
        preserved = set(preserved)
        if ALL in preserved:
            return
        results = self._cache.get(model)
        if results is None:
            return
        for name in list(results):
            if name not in preserved:
                del results[name]
