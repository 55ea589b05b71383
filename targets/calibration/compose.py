"""Fitting how isolated kernel times add up inside a model (the terms of ``cost.composition``).

Two fits: on network totals alone (``fit_composition``: a shared scale and dispatch always,
further terms only where leave-one-out error says the networks support them), and, where the
backend profiled each network's kernels, a scale per kernel class read off those profiles with
only the dispatch fitted on the totals (``fit_profiled_composition``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edgeopt.targets.cost.composition import CompositionTerms

MAX_DISPATCH_CREDIT_S = 5e-6  # how far below zero the fitted per-kernel dispatch may go

COMPOSITION_TERMS = ("scale", "per_kernel_s", "layout_s_per_byte", "depthwise_scale", "weight_stream", "gemm_scale",
                     "vector_stream")
_ALWAYS = (0, 1)  # scale and per-kernel dispatch; the others are chosen (fit_composition)
# A term left out takes its parent's value (a class scale the shared scale, vector streaming the
# other streaming) or, without a parent, its neutral value (no layout or streaming cost).
_PARENT = {2: None, 3: 0, 4: None, 5: 0, 6: 4}
_NEUTRAL = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
# 1e-8 s/B: a conversion at 100 MB/s, far below any DRAM; weight streaming up to 4x slower than the
# target's bandwidth figure (one thread of a multi-core CPU reaches a fraction of it).
_LOWER = np.array([0.5, -MAX_DISPATCH_CREDIT_S, 0.0, 0.5, 0.0, 0.5, 0.0])
_UPPER = np.array([2.0, 1e-3, 1e-8, 3.0, 4.0, 3.0, 4.0])
MIN_GAIN = 0.0025  # a term joins the fit only if it cuts the leave-one-out error by a quarter point
# Not the layout term: it would join on most calibrations (the random networks' SiLU and SE
# boundaries favour it), but its byte count overstates ONNX Runtime's reorders on SE/SiLU graphs:
# an EfficientNet-B0 profile shows 0.68 ms of ReorderInput/Output where the fitted term charged
# 2.6 ms (+40 % on the model). It stays at zero until layout_boundary_bytes knows which of
# those ops ORT runs in NCHWc.
_CANDIDATES = (3, 4, 5, 6)


def fit_composition(rows: Sequence[tuple[CompositionTerms, float, float]], run_overhead_s: float
                    ) -> dict[str, float]:
    """The composition terms (``edgeopt.targets.cost.composition``) fitted on whole networks.

    ``rows`` are (the network's kernels summed per term, its measured seconds, its layout-
    conversion bytes). The run overhead is the measured time of an empty model (fitting it
    too lets a few noisy networks push it to milliseconds); the rest is fitted by bounded
    least squares on relative error so small and large networks weigh alike. The dispatch
    term may go slightly negative: a lone kernel timed again and again pays its dispatch
    with cold code paths that a model running kernel after kernel keeps warm.

    Beyond the shared scale and the dispatch term, terms join by forward selection on the
    networks' leave-one-out error, each only if it cuts that error by ``MIN_GAIN`` (the layout
    term is not offered, see ``_CANDIDATES``): with all seven fitted at once, networks timed on
    a shared machine traded the layout and depthwise terms against each other (the depthwise
    scale came out 0.5 in one calibration and 2.4 in the next, the layout term 1e-18 or 7e-11
    s/B), and an EfficientNet-B0 swung from -3 % to +52 %. A term no network exercises keeps
    its neutral (or parent's) value.
    """
    fallback = {"run_overhead_s": run_overhead_s, **dict(zip(COMPOSITION_TERMS, _NEUTRAL.tolist(), strict=True))}
    if len(rows) < 2:
        return fallback
    a = np.array([[t.isolated_s, t.dispatching, b, t.depthwise_s, t.weight_stream_s, t.gemm_s, t.vector_stream_s]
                  for t, _, b in rows], dtype=np.float64)
    measured = np.array([m for _, m, _ in rows])
    chosen = _select_terms(a, measured, run_overhead_s)
    coef = _solve(a, measured, run_overhead_s, chosen)
    if not math.isfinite(coef[0]) or coef[0] <= 0.05:
        return fallback
    return {"run_overhead_s": run_overhead_s, **dict(zip(COMPOSITION_TERMS, (float(c) for c in coef), strict=True))}


def _select_terms(a: np.ndarray, measured: np.ndarray, run_overhead_s: float) -> set[int]:
    """Forward selection: add the candidate that cuts the leave-one-out error most, while it cuts ``MIN_GAIN``."""
    chosen = set(_ALWAYS)
    if len(a) < 3:  # two networks leave one to fit on: the shared scale and dispatch only
        return chosen
    best = _loo_error(a, measured, run_overhead_s, chosen)
    while True:
        scored = [(_loo_error(a, measured, run_overhead_s, chosen | {c}), c) for c in _CANDIDATES
                  if c not in chosen and np.abs(a[:, c]).max() > 0]
        if not scored or min(scored)[0] > best - MIN_GAIN:
            return chosen
        best, term = min(scored)
        chosen.add(term)


def _solve(a: np.ndarray, measured: np.ndarray, run_overhead_s: float, chosen: set[int]) -> np.ndarray:
    """Bounded least squares on relative error over the ``chosen`` terms; the rest tied or neutral."""
    from scipy.optimize import lsq_linear

    free = sorted(chosen)

    def owner(column: int) -> int | None:  # the fitted term a column's seconds count towards
        while column is not None and column not in chosen:
            column = _PARENT.get(column)
        return column

    design = np.zeros((len(a), len(free)))
    for column in range(a.shape[1]):
        if (into := owner(column)) is not None:
            design[:, free.index(into)] += a[:, column]
    y = measured - run_overhead_s
    w = 1.0 / measured
    used = np.abs(design).max(0) > 0
    norm = np.where(used, np.abs(design).max(0), 1.0)  # columns differ by 1e9 (seconds vs bytes)
    solved = _NEUTRAL[free].copy()
    if used.any():
        columns = np.flatnonzero(used)
        lower, upper = _LOWER[free][columns] * norm[columns], _UPPER[free][columns] * norm[columns]
        fitted = lsq_linear((design * w[:, None] / norm)[:, columns], y * w, bounds=(lower, upper)).x
        solved[columns] = fitted / norm[columns]
    coef = _NEUTRAL.copy()
    for column in range(len(coef)):
        if (into := owner(column)) is not None:
            coef[column] = solved[free.index(into)]
    return coef


def _loo_error(a: np.ndarray, measured: np.ndarray, run_overhead_s: float, chosen: set[int]) -> float:
    """Mean |relative error| of each network predicted by a fit on the others."""
    errors = []
    for i in range(len(a)):
        keep = np.arange(len(a)) != i
        coef = _solve(a[keep], measured[keep], run_overhead_s, chosen)
        errors.append(abs((a[i] @ coef + run_overhead_s) / measured[i] - 1.0))
    return float(np.mean(errors))


# A class's scale is read off the networks where it takes at least this share of the isolated
# time (below it, a few microseconds of noise swing the ratio), and only from enough of them.
PROFILE_MIN_SHARE = 0.01
PROFILE_MIN_NETWORKS = 5
_SCALE_BOUNDS = (0.25, 4.0)


def fit_profiled_composition(rows: Sequence[tuple[CompositionTerms, float, float]],
                             profiles: Sequence[Mapping[str, tuple[float, float]]], run_overhead_s: float
                             ) -> dict[str, float]:
    """The composition from kernels timed inside the networks (the backend's profiler).

    ``profiles`` holds, per network, each kernel class's (isolated seconds predicted, seconds
    profiled inside the network). Each class's scale is the median over the networks of that
    ratio; the dispatch term is then fitted on the networks' measured totals. Fitting scales
    on totals alone (``fit_composition``) cannot tell the classes apart: on 45 networks timed
    here it put the depthwise scale at 2.2 where ORT's profiler showed depthwise kernels
    running at 0.95-1.07x their isolated time, in the networks as in MobileNetV2/V3 and
    EfficientNet-B0, and a bootstrap over the networks moved its MobileNetV3 figure by ±24 %.
    With the networks' kernels among the predictor's training samples the scales come out
    near 1; they correct what the predictor's fit leaves per class.
    """
    if len(profiles) < 2 or len(profiles) != len(rows):
        return fit_composition(rows, run_overhead_s)
    ratios: dict[str, list[float]] = {}
    overall = []
    for profile in profiles:
        total_iso = sum(i for i, _ in profile.values())
        total_in = sum(p for _, p in profile.values())
        if total_iso <= 0 or total_in <= 0:
            continue
        overall.append(total_in / total_iso)
        for cls, (iso, inside) in profile.items():
            if iso >= PROFILE_MIN_SHARE * total_iso and inside > 0:
                ratios.setdefault(cls, []).append(inside / iso)
    if len(overall) < 2:
        return fit_composition(rows, run_overhead_s)
    scale = float(np.clip(np.median(overall), *_SCALE_BOUNDS))
    scales = {f"{cls}_scale": float(np.clip(np.median(r), *_SCALE_BOUNDS)) for cls, r in ratios.items()
              if len(r) >= PROFILE_MIN_NETWORKS}
    # What the scaled kernels leave of each network's measured time is run overhead plus a
    # dispatch per kernel (and the layout reorders, which grow with the kernel count):
    # least squares on relative error, closed form for the one term.
    measured = np.array([m for _, m, _ in rows])
    dispatching = np.array([t.dispatching for t, _, _ in rows], dtype=np.float64)
    body = np.array([sum(scales.get(f"{cls}_scale", scale) * iso for cls, (iso, _) in profile.items())
                     for profile in profiles])
    rest, weight = measured - run_overhead_s - body, 1.0 / measured ** 2
    per_kernel = float(np.sum(weight * rest * dispatching) / max(np.sum(weight * dispatching ** 2), 1e-30))
    per_kernel = float(np.clip(per_kernel, -MAX_DISPATCH_CREDIT_S, _UPPER[1]))
    return {"run_overhead_s": run_overhead_s, "scale": scale, "per_kernel_s": per_kernel, "layout_s_per_byte": 0.0,
            "weight_stream": 0.0, "vector_stream": 0.0,
            "depthwise_scale": scales.get("depthwise_scale", scale), "gemm_scale": scales.get("gemm_scale", scale),
            **scales}
