"""Fitting measured kernel times: per-class roofline factors, optionally plus a regressor.

Three predictors are fitted on the same samples (lone kernels timed on their own and, where
the backend profiles kernels, the composition networks' kernels timed inside them) and the
one with the lowest error on held-out samples (k-fold) wins:

- ``factors``: per (class, precision) compute efficiency, memory efficiency and
  overhead, fitted by least squares on log time (scipy.optimize.least_squares); LSTM / GRU
  kernels instead get seconds per unit of input-projection FLOPs, per-step FLOPs and steps
  (``recurrent_terms``) where the calibration timed enough of them;
- ``ridge`` / ``gbr``: the factors plus a correction exp(g(features)) where g is a
  scikit-learn Ridge or GradientBoostingRegressor on roofline and shape features
  (the residual form keeps extrapolation to larger kernels on the roofline).

Calibration files store the samples, not pickled estimators (an imported file is
untrusted data); the regressor is refitted, deterministically, from them, and the fit is
kept in the local cache folder keyed by the file's content (store.py) so a later run
loads it instead of fitting again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edgeopt.targets.catalog import Target
from edgeopt.targets.cost.features import KernelSample, feature_vector
from edgeopt.targets.cost.roofline import (
    Roofline,
    default_factors,
    effective_bandwidth,
    effective_peak,
    factor_time,
    roofline,
)

METHODS = ("factors", "ridge", "gbr")
MIN_SAMPLES_PER_GROUP = 4
MIN_RECURRENT_SAMPLES = 10  # six terms: fewer samples would fit noise


def lines_for(samples: Sequence[KernelSample], target: Target) -> list[Roofline]:
    bandwidth = effective_bandwidth(target)
    return [roofline(s.flops, s.activation_bytes + s.weight_bytes, effective_peak(target, s.precision), bandwidth)
            for s in samples]


def fit_factors(samples: Sequence[KernelSample], lines: Sequence[Roofline], device_kind: str
                ) -> dict[str, list[float]]:
    """(compute eff, memory eff, overhead) per 'class/precision' and per 'class' (pooled)."""
    from scipy.optimize import least_squares

    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(f"{sample.kind}/{sample.precision}", []).append(i)
        groups.setdefault(sample.kind, []).append(i)
    factors: dict[str, list[float]] = {}
    for key, index in groups.items():
        if len(index) < MIN_SAMPLES_PER_GROUP:
            continue
        kind = key.split("/")[0]
        ec0, em0, o0 = default_factors(kind, device_kind)
        measured = np.array([samples[i].seconds for i in index], dtype=np.float64)
        comp = np.array([lines[i].compute_s for i in index])
        mem = np.array([lines[i].memory_s for i in index])

        def residual(p: np.ndarray, comp: np.ndarray = comp, mem: np.ndarray = mem,
                     measured: np.ndarray = measured) -> np.ndarray:
            ec, em, o = np.exp(p)
            pred = np.maximum(comp / ec, mem / em) + o
            return np.log(pred) - np.log(measured)

        start = np.log([ec0, em0, max(o0, 1e-7)])
        fit = least_squares(residual, start, bounds=(np.log([1e-4, 1e-4, 1e-8]), np.log([2.0, 4.0, 5e-3])),
                            loss="soft_l1", f_scale=0.1)
        factors[key] = [float(v) for v in np.exp(fit.x)]
    for precision in sorted({s.precision for s in samples if s.kind == "recurrent"}):
        terms = fit_recurrent([s for s in samples if s.kind == "recurrent" and s.precision == precision])
        if terms is not None:
            factors[f"recurrent/{precision}/terms"] = terms
    return factors


def recurrent_terms(sample: KernelSample) -> np.ndarray:
    """One direction of an LSTM / GRU split into the work that runs at different rates.

    The input projection can run as one GEMM over all time steps; the hidden-state update is a
    GEMV per step that re-reads the recurrent weights. LSTM and GRU each get their own rate for
    both: GRU's step (3 gates, reset applied after the GEMV) costs differently per FLOP, and
    OpenVINO runs GRUSequence on its reference kernel, projection inside the step loop (one
    rate for both cells left its GRUs 20-40 % under). One roofline efficiency for projection
    and steps left ONNX Runtime's LSTMs 25-30 % off even on shapes it was fitted on (a 100-step
    LSTM with 512 inputs ran at 107 GFLOP/s, one with 40 inputs at 48).
    """
    a = sample.attrs
    rows, k, n, gates = a.get("m", 1.0), a.get("k", 0.0), a.get("n", 0.0), a.get("gates", 1.0)
    steps = a.get("steps", rows)  # files from before "steps" was recorded: batch 1
    projection, step = 2.0 * rows * gates * n * k, 2.0 * rows * gates * n * n
    if gates == 3:  # GRU
        return np.array([0.0, projection, 0.0, step, steps, 1.0])
    return np.array([projection, 0.0, step, 0.0, steps, 1.0])


RECURRENT_TERMS = 6  # LSTM and GRU projection FLOPs, LSTM and GRU step FLOPs, steps, one


def fit_recurrent(samples: Sequence[KernelSample]) -> list[float] | None:
    """Seconds per unit of each of ``recurrent_terms``, by non-negative least squares on relative error."""
    from scipy.optimize import nnls

    if len(samples) < MIN_RECURRENT_SAMPLES:
        return None
    terms = np.stack([recurrent_terms(s) for s in samples])
    per_direction = np.array([s.seconds / s.attrs.get("directions", 1.0) for s in samples], dtype=np.float64)
    coefficients, _ = nnls(terms / per_direction[:, None], np.ones(len(samples)))
    return [float(c) for c in coefficients] if coefficients.any() else None


def factor_predict(samples: Sequence[KernelSample], lines: Sequence[Roofline], factors: dict[str, list[float]],
                   device_kind: str) -> np.ndarray:
    out = []
    for sample, line in zip(samples, lines, strict=True):
        per_unit = factors.get(f"recurrent/{sample.precision}/terms") if sample.kind == "recurrent" else None
        if per_unit is not None:
            out.append(float(recurrent_terms(sample) @ np.asarray(per_unit)) * sample.attrs.get("directions", 1.0))
            continue
        params = factors.get(f"{sample.kind}/{sample.precision}") or factors.get(sample.kind) or \
            list(default_factors(sample.kind, device_kind))
        out.append(factor_time(line, *params))
    return np.asarray(out, dtype=np.float64)


def _regressor(method: str):
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    return GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                                     min_samples_leaf=3, random_state=0, loss="huber")


def one_direction(sample: KernelSample, line: Roofline) -> tuple[KernelSample, Roofline, float]:
    """A bidirectional recurrent kernel as one of its directions, and how many directions run.

    ONNX Runtime runs the directions one after the other (measured here: a bidirectional LSTM
    takes 2.0x a forward one of the same shapes). A regressor given ``directions`` as a feature
    learned that from the few bidirectional samples it saw and read a large bidirectional LSTM
    as 2.9x its forward layer; predicting one direction and multiplying keeps it exact.
    """
    directions = sample.attrs.get("directions", 1.0)
    if sample.kind != "recurrent" or directions <= 1:
        return sample, line, 1.0
    attrs = {**sample.attrs, "directions": 1.0, "out_elems": sample.attrs.get("out_elems", 0.0) / directions}
    one = replace(sample, flops=sample.flops / directions, activation_bytes=sample.activation_bytes / directions,
                  weight_bytes=sample.weight_bytes / directions, attrs=attrs,
                  seconds=None if sample.seconds is None else sample.seconds / directions)
    return one, Roofline(line.compute_s / directions, line.memory_s / directions, line.peak, line.bandwidth), \
        directions


def _per_direction(samples: Sequence[KernelSample], lines: Sequence[Roofline]
                   ) -> tuple[list[KernelSample], list[Roofline], np.ndarray]:
    split = [one_direction(s, ln) for s, ln in zip(samples, lines, strict=True)]
    return [s for s, _, _ in split], [ln for _, ln, _ in split], np.array([d for _, _, d in split])


class Predictor:
    """Kernel seconds from roofline, fitted factors and (optionally) a residual regressor."""

    def __init__(self, method: str, factors: dict[str, list[float]], device_kind: str,
                 regressor: object | None = None) -> None:
        self.method = method
        self.factors = factors
        self.device_kind = device_kind
        self.regressor = regressor

    def predict(self, samples: Sequence[KernelSample], lines: Sequence[Roofline]) -> list[float]:
        if not samples:
            return []
        samples, lines, directions = _per_direction(samples, lines)
        base = factor_predict(samples, lines, self.factors, self.device_kind)
        if self.regressor is not None:
            features = np.stack([feature_vector(s, ln.compute_s, ln.memory_s) for s, ln in zip(samples, lines,
                                                                                                 strict=True)])
            # Free / shape kernels are pure dispatch: the regressor saw few and need not touch them.
            correction = np.exp(np.clip(self.regressor.predict(features), -3.0, 3.0))
            dispatch = np.array([s.kind in ("free", "shape") for s in samples])
            base = np.where(dispatch, base, base * correction)
        return [float(v) for v in base * directions]


def fit_predictor(samples: Sequence[KernelSample], target: Target, device_kind: str, method: str,
                  factors: dict[str, list[float]] | None = None) -> Predictor:
    lines = lines_for(samples, target)
    factors = factors if factors is not None else fit_factors(samples, lines, device_kind)
    if method == "factors" or len(samples) < 10:
        return Predictor("factors", factors, device_kind)
    samples, lines, _ = _per_direction(samples, lines)
    base = factor_predict(samples, lines, factors, device_kind)
    measured = np.array([s.seconds for s in samples], dtype=np.float64)
    features = np.stack([feature_vector(s, ln.compute_s, ln.memory_s) for s, ln in zip(samples, lines, strict=True)])
    model = _regressor(method)
    model.fit(features, np.log(measured) - np.log(base))
    return Predictor(method, factors, device_kind, model)


def heldout_errors(samples: Sequence[KernelSample], target: Target, device_kind: str,
                   methods: Sequence[str] = METHODS, folds: int = 5) -> dict[str, np.ndarray]:
    """Per method, the relative error (pred/measured - 1) of each sample from a fit that never saw it.

    The factors of a fold are fitted once and shared by the methods (they all start from them).
    """
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    errors = {method: np.zeros(len(samples)) for method in methods}
    for fold in range(folds):
        test = order[fold::folds]
        held = set(test.tolist())
        train = [samples[i] for i in range(len(samples)) if i not in held]
        if not train or len(test) == 0:
            continue
        factors = fit_factors(train, lines_for(train, target), device_kind)
        tests = [samples[i] for i in test]
        measured = np.array([s.seconds for s in tests])
        for method in methods:
            predictor = fit_predictor(train, target, device_kind, method, factors)
            errors[method][test] = np.array(predictor.predict(tests, lines_for(tests, target))) / measured - 1.0
    return errors


def choose_method(samples: Sequence[KernelSample], target: Target, device_kind: str
                  ) -> tuple[str, dict[str, dict[str, float]]]:
    """The method with the lowest mean |log error| on held-out folds, and every method's scores."""
    scores: dict[str, dict[str, float]] = {}
    for method, errors in heldout_errors(samples, target, device_kind).items():
        scores[method] = {"mean_abs_log_error": float(np.mean(np.abs(np.log1p(errors)))),
                          "within_10pct": float(np.mean(np.abs(errors) <= 0.10)),
                          "mape": float(np.mean(np.abs(errors)))}
    best = min(scores, key=lambda m: scores[m]["mean_abs_log_error"])
    return best, scores
