"""How the quantization benchmark reads a model: ORT sessions, outputs, agreement and latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def top1(session: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return float(np.mean(logits.argmax(-1) == y))


def session(path: Path | str | bytes, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=["CPUExecutionProvider"])


def latency_ms(path: Path, feeds: dict[str, np.ndarray], budget: float = 2.0) -> float:
    from edgeopt.passes.quant.gain import time_session

    return time_session(session(path), feeds, budget=budget, min_runs=10) * 1e3


def latencies(paths: list[Path], feeds: dict[str, np.ndarray], budget: float) -> list[float]:
    """Milliseconds per run of each model, timed round-robin (see ``time_interleaved``)."""
    from edgeopt.passes.quant.gain import time_interleaved, timing_session

    # The pass's own timing sessions (no spin-waiting: they are timed round-robin).
    sessions = [timing_session(str(p), 2) for p in paths]
    return [t * 1e3 for t in time_interleaved(sessions, [feeds] * len(sessions), budget=budget, min_runs=10)]


def latencies_and_ratios(paths: list[Path], feeds: dict[str, np.ndarray], budget: float
                         ) -> tuple[list[float], list[float]]:
    """Milliseconds per run (20th percentile) and median paired ratio to ``paths[0]``, timed round-robin.

    The ratio compares runs of the same round (see ``paired_ratios``): on a loaded machine it separates
    models that differ by a few percent where the absolute times of two identical graphs differ by 20 %.
    """
    from edgeopt.passes.quant.gain import interleaved_runs, paired_ratios, timing_session

    sessions = [timing_session(str(p), 2) for p in paths]
    runs = interleaved_runs(sessions, [feeds] * len(sessions), budget=budget, min_runs=10)
    return [float(np.percentile(r, 20)) * 1e3 for r in runs], paired_ratios(runs)


def agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Top-1 agreement for classifier outputs, else cosine (over all outputs)."""
    from edgeopt.passes.quant.accuracy import agreement as agree

    result = agree(reference, candidate)
    return result.top1 if result.top1 is not None else result.cosine


def cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    from edgeopt.passes.quant.accuracy import agreement as agree

    return agree(reference, candidate).cosine


def run_all(path: Path, samples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    s = session(path)
    names = {i.name for i in s.get_inputs()}
    return [s.run(None, {k: v for k, v in f.items() if k in names}) for f in samples]
