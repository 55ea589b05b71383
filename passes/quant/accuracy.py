"""Accuracy of a quantized model: agreement with the original on held-back samples, or a user evaluator.

Agreement is top-1 for classifier-like outputs (rank 2, more than one class)
and cosine similarity otherwise. ``drop`` is the single number budgets use:
1 - top-1 agreement for classifiers, 1 - cosine otherwise. A user evaluator
(registered with :func:`register_evaluator`, named by ``evaluator=NAME``)
returns a real metric where higher is better; its drop is original minus
quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.ir.errors import UserError

Evaluator = Callable[[ort.InferenceSession], float]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(name: str) -> Callable[[Evaluator], Evaluator]:
    """Register ``fn(session) -> metric`` (higher is better) as ``evaluator=NAME``."""

    def decorate(fn: Evaluator) -> Evaluator:
        _EVALUATORS[name] = fn
        return fn

    return decorate


def get_evaluator(name: str) -> Evaluator:
    if name not in _EVALUATORS:
        known = ", ".join(sorted(_EVALUATORS)) or "none registered"
        raise UserError(f"evaluator '{name}' is not registered (known: {known})")
    return _EVALUATORS[name]


@dataclass(frozen=True)
class Agreement:
    samples: int
    top1: float | None
    cosine: float
    snr_db: float

    @property
    def drop(self) -> float:
        return 1.0 - self.top1 if self.top1 is not None else 1.0 - self.cosine

    def to_dict(self) -> dict[str, float | int | None]:
        return {"samples": self.samples, "top1_agreement": self.top1, "cosine": self.cosine,
                "snr_db": self.snr_db, "drop": self.drop}


def cpu_session(model: ir.Model, threads: int | None = None,
                level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                ) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_outputs(session: ort.InferenceSession, samples: Iterable[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    names = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in s.items() if k in names}) for s in samples]


def agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> Agreement:
    """Top-1 agreement (first classifier-like output), cosine and SNR over all float outputs."""
    top_hits = top_total = 0
    dots = norms_a = norms_b = noise = signal = 0.0
    for ref_outputs, cand_outputs in zip(reference, candidate, strict=True):
        for index, (ref, cand) in enumerate(zip(ref_outputs, cand_outputs, strict=True)):
            if not np.issubdtype(np.asarray(ref).dtype, np.floating):
                continue
            a, b = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
            if index == 0 and a.ndim == 2 and a.shape[-1] > 1:
                top_hits += int(np.sum(a.argmax(-1) == b.argmax(-1)))
                top_total += a.shape[0]
            dots += float(np.sum(a * b))
            norms_a += float(np.sum(a * a))
            norms_b += float(np.sum(b * b))
            noise += float(np.sum((a - b) ** 2))
            signal += float(np.sum(a * a))
    cosine = dots / np.sqrt(norms_a * norms_b) if norms_a > 0 and norms_b > 0 else 1.0
    snr = 10 * np.log10(signal / noise) if noise > 0 and signal > 0 else float("inf")
    return Agreement(len(reference), top_hits / top_total if top_total else None, float(cosine), float(snr))
