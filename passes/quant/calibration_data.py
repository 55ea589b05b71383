"""Calibration data: a folder of .npy/.npz files or images, a plugin loader, or (loudly) random data.

Samples are produced one at a time (a generator), so nothing holds the whole
set in memory; the statistics collector turns them into fixed-size histograms.

* ``.npz``: one sample per file, arrays keyed by graph input name.
* ``.npy``: one sample per file for a single-input model; a leading axis that
  the input does not have (or a batch axis larger than the model's) is split
  into several samples.
* images (.png/.jpg/.jpeg/.bmp): need Pillow; resized to ``image_size``, scaled
  to [0, 1], normalised by ``mean``/``std`` and laid out NCHW or NHWC.
* ``plugin:NAME``: a callable registered with :func:`register_calibration_loader`
  that returns an iterable of ``{input name: array}``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.ir.reference import ReferenceExecutor

Feeds = dict[str, np.ndarray]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_LOADERS: dict[str, Callable[..., Iterable[Feeds]]] = {}

GENERATED_WARNING = ("WARNING: no calibration data given: calibrated on random generated inputs; "
                     "ranges will not match real data and accuracy figures mean little")


class CalibrationDataError(UserError):
    """Calibration data is missing, unreadable, or does not fit the model's inputs."""


Loader = Callable[..., Iterable[Feeds]]


def register_calibration_loader(name: str) -> Callable[[Loader], Loader]:
    """Register ``fn(model) -> iterable of feeds`` as ``data=plugin:NAME``."""

    def decorate(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return decorate


@dataclass(frozen=True)
class ImageSpec:
    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"


@dataclass
class CalibrationSet:
    """Where samples come from; ``calibration()`` and ``held_back()`` are disjoint streams."""

    factory: Callable[[], Iterator[Feeds]]
    count: int
    generated: bool = False
    source: str = ""
    holdout: int = 0
    notes: list[str] = field(default_factory=list)

    def samples(self) -> Iterator[Feeds]:
        return self.factory()

    def calibration(self) -> Iterator[Feeds]:
        for index, sample in enumerate(self.factory()):
            if index >= self.count - self.holdout:
                return
            yield sample

    def held_back(self) -> Iterator[Feeds]:
        for index, sample in enumerate(self.factory()):
            if index >= self.count - self.holdout:
                yield sample


def _model_inputs(model: ir.Model) -> list[ir.Value]:
    initializers = set(model.graph.initializers)
    return [v for v in model.graph.inputs if v.name not in initializers]


def _fit(path: Path, name: str, array: np.ndarray, value: ir.Value) -> list[np.ndarray]:
    """Split ``array`` into samples shaped like input ``value`` (batch axis kept, size 1)."""
    dtype = value.dtype.numpy() if value.dtype is not None else np.float32
    rank = len(value.shape) if value.shape is not None else array.ndim
    if array.ndim == rank - 1:
        array = array[None]
    if array.ndim != rank:
        raise CalibrationDataError(f"{path}: array for input '{name}' has rank {array.ndim}, the model wants {rank}")
    if value.shape is not None:
        for axis, (got, want) in enumerate(zip(array.shape[1:], list(value.shape)[1:], strict=True), start=1):
            if isinstance(want, int) and got != want:
                raise CalibrationDataError(f"{path}: input '{name}' axis {axis} is {got}, the model wants {want}")
    try:
        array = array.astype(dtype, copy=False)
    except (TypeError, ValueError):
        raise CalibrationDataError(f"{path}: input '{name}' cannot be converted to {dtype}") from None
    return [array[i:i + 1] for i in range(array.shape[0])]


def _read_file(path: Path, inputs: Sequence[ir.Value], image: ImageSpec) -> list[Feeds]:
    names = [v.name or "" for v in inputs]
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                missing = [n for n in names if n not in archive.files]
                if missing and len(names) == 1 and len(archive.files) == 1:
                    arrays = {names[0]: archive[archive.files[0]]}
                elif missing:
                    raise CalibrationDataError(
                        f"{path}: no array for input '{missing[0]}' (has: {', '.join(archive.files)})")
                else:
                    arrays = {n: archive[n] for n in names}
        elif path.suffix == ".npy":
            if len(names) != 1:
                raise CalibrationDataError(f"{path}: .npy holds one array but the model has {len(names)} inputs;"
                                           " use .npz keyed by input name")
            arrays = {names[0]: np.load(path, allow_pickle=False)}
        else:
            if len(names) != 1:
                raise CalibrationDataError(f"{path}: images need a single-input model")
            arrays = {names[0]: _read_image(path, image)}
    except CalibrationDataError:
        raise
    except (OSError, ValueError) as error:
        raise CalibrationDataError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    split = {name: _fit(path, name, arrays[name], value) for name, value in zip(names, inputs, strict=True)}
    counts = {len(v) for v in split.values()}
    if len(counts) != 1:
        raise CalibrationDataError(f"{path}: inputs hold different numbers of samples")
    return [{name: split[name][i] for name in names} for i in range(counts.pop())]


def _read_image(path: Path, spec: ImageSpec) -> np.ndarray:
    if importlib.util.find_spec("PIL") is None:
        raise CalibrationDataError(f"{path}: reading images needs Pillow (pip install pillow), or give .npy files")
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((spec.size[1], spec.size[0]))
        array = np.asarray(rgb, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return array.transpose(2, 0, 1) if spec.layout.upper() == "NCHW" else array


def folder_set(model: ir.Model, folder: Path, limit: int, holdout_fraction: float,
               image: ImageSpec | None = None) -> CalibrationSet:
    """Samples from the files of ``folder`` (sorted by name); errors name the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(f"calibration data {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".npy", ".npz", *IMAGE_SUFFIXES))
    if not files:
        raise CalibrationDataError(f"calibration data {folder}: no .npy, .npz or image files in it")
    inputs = _model_inputs(model)
    spec = image or ImageSpec()
    # Read the first file now so a mismatch fails before any heavy work.
    first = _read_file(files[0], inputs, spec)

    def factory() -> Iterator[Feeds]:
        produced = 0
        for path in files:
            for sample in (first if path == files[0] else _read_file(path, inputs, spec)):
                if produced >= limit:
                    return
                produced += 1
                yield sample

    count = min(limit, sum(1 for _ in factory()))
    return CalibrationSet(factory, count, source=str(folder), holdout=_holdout(count, holdout_fraction))


def iterable_set(samples_fn: Callable[[], Iterable[Feeds]], limit: int, holdout_fraction: float,
                 source: str) -> CalibrationSet:
    def factory() -> Iterator[Feeds]:
        for index, sample in enumerate(samples_fn()):
            if index >= limit:
                return
            yield {k: np.asarray(v) for k, v in sample.items()}

    count = sum(1 for _ in factory())
    if count == 0:
        raise CalibrationDataError(f"calibration data {source}: produced no samples")
    return CalibrationSet(factory, count, source=source, holdout=_holdout(count, holdout_fraction))


def generated_set(model: ir.Model, limit: int, holdout_fraction: float) -> CalibrationSet:
    executor = ReferenceExecutor()

    def factory() -> Iterator[Feeds]:
        for seed in range(limit):
            yield executor.generate_inputs(model, seed=seed)

    return CalibrationSet(factory, limit, generated=True, source="generated",
                          holdout=_holdout(limit, holdout_fraction), notes=[GENERATED_WARNING])


def _holdout(count: int, fraction: float) -> int:
    if fraction <= 0 or count < 2:
        return 0
    return max(1, min(count - 1, round(count * fraction)))


def resolve_calibration(model: ir.Model, data: str, limit: int, holdout_fraction: float,
                        context_data: Callable[[], Iterable[Feeds]] | None = None,
                        image: ImageSpec | None = None) -> CalibrationSet:
    """The calibration set named by a pass's ``data`` option (or the context's, or generated)."""
    if data.startswith("plugin:"):
        name = data.removeprefix("plugin:")
        if name not in _LOADERS:
            known = ", ".join(sorted(_LOADERS)) or "none registered"
            raise CalibrationDataError(f"calibration loader '{name}' is not registered (known: {known})")
        return iterable_set(lambda: _LOADERS[name](model), limit, holdout_fraction, data)
    if data:
        return folder_set(model, Path(data), limit, holdout_fraction, image)
    if context_data is not None:
        return iterable_set(context_data, limit, holdout_fraction, "context")
    return generated_set(model, limit, holdout_fraction)
