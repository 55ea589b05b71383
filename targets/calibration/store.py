"""Calibration files: where they live, what they hold, loading, validation and import.

A calibration is JSON in ``~/.cache/edgeopt/calibration/<target>-<backend>-<fingerprint>.json``
(``$EDGEOPT_CACHE_DIR/calibration/`` when that variable is set). ``fingerprint``
identifies the machine that measured it (edgeopt.targets.host.fingerprint): a
host-cpu calibration is used only on the machine that made it; a calibration of a
device target (a Jetson that ran ``edgeopt calibrate`` itself) is used wherever it
was imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.ir.errors import TargetError, UserError
from edgeopt.targets.catalog import BACKENDS, Target
from edgeopt.targets.cost.composition import EXTRA_CLASSES
from edgeopt.targets.cost.features import KernelSample
from edgeopt.targets.cost.kernels import CLASSES, PRECISIONS

SCHEMA = "edgeopt-calibration/1"


class CalibrationError(UserError):
    """A calibration file that is missing, malformed or made for another target."""


def cache_dir() -> Path:
    root = os.environ.get("EDGEOPT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "edgeopt"
    return base / "calibration"


def host_fingerprint() -> str:
    from edgeopt.targets.host import fingerprint

    return fingerprint()[:16]


def calibration_path(target: str, backend: str, fingerprint: str) -> Path:
    return cache_dir() / f"{target}-{backend}-{fingerprint}.json"


@dataclass
class Calibration:
    target: str
    backend: str
    fingerprint: str
    method: str
    factors: dict[str, list[float]]
    composition: dict[str, float]
    samples: list[KernelSample] = field(default_factory=list)
    device_kind: str = "cpu"
    threads: int | None = None
    clock: str = "wall"  # "cpu": one-thread CPU time, the latency on an unshared core (runners.py)
    runtime: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    wall_s: float = 0.0
    device: str = ""
    reference_s: float = 0.0  # the reference networks' time at calibration (reference.py); 0: not probed
    path: Path | None = None

    def predictor(self, target: Target):
        return _predictor(self, target)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "target": self.target, "backend": self.backend,
                "fingerprint": self.fingerprint, "device": self.device, "device_kind": self.device_kind,
                "created": self.created, "runtime": self.runtime, "threads": self.threads,
                "clock": self.clock, "method": self.method, "validation": self.validation, "factors": self.factors,
                "composition": self.composition, "wall_s": self.wall_s, "reference_s": self.reference_s,
                "samples": [s.to_dict() for s in self.samples]}

    def save(self, path: Path | None = None) -> Path:
        path = path or calibration_path(self.target, self.backend, self.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.path = path
        return path


FIT_VERSION = 7  # bump when features.py / fit.py change what a fitted predictor computes


def _predictor(calibration: Calibration, target: Target):
    """The fitted predictor: from memory, else from the cache folder's fit file, else fitted (and stored).

    A fit is keyed by a hash of the calibration's content (validation left out), the target's
    figures the roofline reads, the scikit-learn version and FIT_VERSION; any other key, or a
    file that does not load, means a refit and a rewrite. Fits are kept only under the cache
    folder (``fitted/<calibration name>.pkl``), never next to a file given by path: a pickle
    runs code when loaded, so only files this machine wrote are read.
    """
    content = json.dumps({k: v for k, v in calibration.to_dict().items() if k != "validation"}, sort_keys=True)
    key = _fit_key(content, target)
    cached = _MEMORY.get(key)
    if cached is not None:
        return cached
    stored = _fit_path(calibration)
    predictor = _load_fit(stored, key) if stored is not None else None
    if predictor is None:
        from edgeopt.targets.calibration import fit

        predictor = fit.fit_predictor(calibration.samples, target, calibration.device_kind, calibration.method,
                                      calibration.factors)
        if stored is not None:
            _save_fit(stored, key, predictor)
    if len(_MEMORY) >= 8:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[key] = predictor
    return predictor


_MEMORY: dict[str, Any] = {}


def _fit_key(content: str, target: Target) -> str:
    import sklearn

    figures = {"peaks": {p: target.peak(p) for p in PRECISIONS}, "bandwidth": target.bandwidth}
    text = json.dumps({"calibration": content, "target": figures, "sklearn": sklearn.__version__,
                       "fit_version": FIT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fit_path(calibration: Calibration) -> Path | None:
    if calibration.path is None:
        return None
    return cache_dir() / "fitted" / f"{calibration.path.stem}.pkl"


def _load_fit(path: Path, key: str) -> Any:
    try:
        with path.open("rb") as handle:
            data = pickle.load(handle)  # only files _save_fit wrote in this user's cache folder
    except Exception:  # missing, truncated or from an incompatible library version: refit
        return None
    return data.get("predictor") if isinstance(data, dict) and data.get("key") == key else None


def _save_fit(path: Path, key: str, predictor: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            pickle.dump({"key": key, "predictor": predictor}, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next run a refit


def _require(data: Any, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise CalibrationError(f"{where}: not an edgeopt calibration (missing '{key}')")
    if not isinstance(data[key], kind):
        raise CalibrationError(f"{where}: '{key}' has the wrong type ({type(data[key]).__name__})")
    return data[key]


def parse_calibration(data: Any, where: Path) -> Calibration:
    """Validate a decoded calibration file; every problem is one line naming the file."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{where}: not an edgeopt calibration (expected a JSON object)")
    schema = _require(data, "schema", str, where)
    if schema != SCHEMA:
        raise CalibrationError(f"{where}: unsupported calibration schema '{schema}' (expected '{SCHEMA}')")
    backend = _require(data, "backend", str, where)
    if backend not in BACKENDS:
        raise CalibrationError(f"{where}: unknown backend '{backend}'")
    method = _require(data, "method", str, where)
    from edgeopt.targets.calibration.fit import METHODS, RECURRENT_TERMS

    if method not in METHODS:
        raise CalibrationError(f"{where}: unknown method '{method}' (known: {', '.join(METHODS)})")
    factors = _require(data, "factors", dict, where)
    for key, value in factors.items():
        if key.startswith("recurrent/") and key.endswith("/terms"):  # fit.recurrent_terms' coefficients
            if not (isinstance(value, list) and len(value) == RECURRENT_TERMS and all(
                    isinstance(v, (int, float)) and v >= 0 for v in value)):
                raise CalibrationError(f"{where}: factors['{key}'] must be {RECURRENT_TERMS} non-negative numbers")
            continue
        if key.split("/")[0] not in CLASSES or not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and v > 0 for v in value)):
            raise CalibrationError(f"{where}: factors['{key}'] must be three positive numbers for a known class")
    composition = _require(data, "composition", dict, where)
    clock = data.get("clock", "wall")
    if clock not in ("wall", "cpu"):
        raise CalibrationError(f"{where}: unknown clock '{clock}' (expected wall or cpu)")
    # older files lack these; a profiled calibration has a scale per kernel class
    class_scales = [f"{cls}_scale" for cls in (*CLASSES, *EXTRA_CLASSES) if f"{cls}_scale" in composition]
    optional = [key for key in ("weight_stream", "vector_stream", *class_scales) if key in composition]
    for key in ("run_overhead_s", "scale", "per_kernel_s", *optional):
        value = composition.get(key)
        # per_kernel_s may be slightly negative (compose.fit_composition); the others may not.
        if not isinstance(value, (int, float)) or value < (-1e-4 if key == "per_kernel_s" else 0):
            raise CalibrationError(f"{where}: composition.{key} must be a non-negative number")
    samples = []
    for i, raw in enumerate(_require(data, "samples", list, where)):
        try:
            sample = KernelSample.from_dict(raw)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CalibrationError(f"{where}: samples[{i}] is malformed") from None
        if sample.kind not in CLASSES or sample.precision not in PRECISIONS or not sample.seconds or \
                sample.seconds <= 0:
            raise CalibrationError(f"{where}: samples[{i}] has an unknown class/precision or no time")
        samples.append(sample)
    return Calibration(
        target=_require(data, "target", str, where), backend=backend,
        fingerprint=_require(data, "fingerprint", str, where), method=method,
        factors={k: [float(x) for x in v] for k, v in factors.items()},
        composition={**{k: float(composition.get(k, 0.0)) for k in
                        ("run_overhead_s", "scale", "per_kernel_s", "layout_s_per_byte", "weight_stream")},
                     # files from before the depthwise and GEMM terms: those kernels compose like the rest
                     **{key: float(composition.get(key, composition["scale"]))
                        for key in ("depthwise_scale", "gemm_scale")},
                     "vector_stream": float(composition.get("vector_stream", composition.get("weight_stream", 0.0))),
                     **{key: float(composition[key]) for key in class_scales}},
        samples=samples, device_kind=str(data.get("device_kind", "cpu")), threads=data.get("threads"),
        clock=str(clock), runtime=dict(data.get("runtime") or {}), validation=dict(data.get("validation") or {}),
        created=str(data.get("created", "")), wall_s=float(data.get("wall_s") or 0.0),
        device=str(data.get("device", "")), reference_s=float(data.get("reference_s") or 0.0), path=where)


def read_calibration(path: Path) -> Calibration:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except OSError as error:
        raise CalibrationError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CalibrationError(f"{path}: not valid JSON: {error}") from None
    return parse_calibration(data, path)


def load_calibration(path: Path, target: Target) -> Calibration:
    calibration = read_calibration(path)
    if calibration.target not in (target.name, *target.aliases):
        raise CalibrationError(f"{path}: calibration is for target '{calibration.target}', not '{target.name}'")
    return calibration


def find_calibration(target: Target, backend: str) -> Calibration | None:
    """This machine's calibration for host-cpu; the newest imported one for a device target."""
    folder = cache_dir()
    if not folder.is_dir():
        return None
    if target.detect == "host":
        candidates = [calibration_path(target.name, backend, host_fingerprint())]
    else:
        candidates = sorted(folder.glob(f"{target.name}-{backend}-*.json"), key=lambda p: p.stat().st_mtime,
                            reverse=True)
    for path in candidates:
        if path.is_file():
            try:
                return load_calibration(path, target)
            except CalibrationError:
                continue  # a corrupt cache file must not break estimates; `calibrate` rewrites it
    return None


def import_calibration(source: Path, target: Target) -> Path:
    """Validate ``source`` for ``target`` and copy it into the cache folder; returns the new path."""
    calibration = load_calibration(source, target)
    if calibration.backend not in target.backends:
        raise CalibrationError(f"{source}: backend '{calibration.backend}' is not one of target "
                               f"'{target.name}' backends ({', '.join(target.backends)})")
    calibration.target = target.name
    if target.detect == "host" and calibration.fingerprint != host_fingerprint():
        raise TargetError(f"{source}: host-cpu calibration was made on another machine (fingerprint "
                          f"{calibration.fingerprint}); run `edgeopt calibrate --target host-cpu` here, "
                          "or import it under the device's own target")
    return calibration.save()
