"""Hardware targets as data: one TOML file per device in ``targets/devices/``.

A target holds peak compute per precision, memory figures, the power envelope, the
backends that serve it with their options, and a source line for every figure, so a
reader can tell a datasheet number from a derived one. The schema is documented in
``targets/devices/README.md``. ``host-cpu`` is special: its file holds only what is
static and ``edgeopt.targets.host`` fills in the figures from the running machine.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from edgeopt.ir.errors import TargetError

DEVICES_DIR = Path(__file__).parent / "devices"
KINDS = frozenset({"cpu", "gpu", "npu", "tpu", "soc"})
BACKENDS = frozenset({"tensorrt", "tvm", "openvino", "tflite", "coreml", "onnxruntime"})
PRECISIONS = frozenset({"fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"})
DETECTORS = frozenset({"host"})  # `detect = "host"`: figures are read from this machine

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_COMPUTE_KEY = re.compile(rf"^({'|'.join(sorted(PRECISIONS))})(_sparse)?$")
_MEMORY_KEY = re.compile(r"^[a-z0-9_]+_(gbps|gb|mb|kb)$")  # the unit is part of the key
_REQUIRED = ("name", "description", "vendor", "kind", "default_backend", "backends", "precisions")
_OPTIONAL = ("aliases", "power_w", "power_min_w", "cores", "isa", "detect", "compute", "memory",
             "units", "backend_options", "sources")


@dataclass(frozen=True)
class Target:
    """One device. Compute is in TFLOPS (float) or TOPS (int), memory keys carry their unit."""

    name: str
    description: str
    vendor: str
    kind: str
    default_backend: str
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    compute: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    power_w: float | None = None
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    path: Path | None = None
    isa: tuple[str, ...] = ()
    cores: int | None = None
    power_min_w: float | None = None
    units: dict[str, dict[str, float]] = field(default_factory=dict)  # per engine: gpu, dla, npu…
    detect: str | None = None

    def __post_init__(self) -> None:
        # Validating here means plugin-built targets get the same checks as files.
        self._validate()

    def __hash__(self) -> int:  # dict fields make the generated hash fail; names are unique
        return hash((self.name, self.path))

    def peak(self, precision: str, sparse: bool = False, unit: str | None = None) -> float | None:
        """Peak rate in operations per second; sparse falls back to dense where it is no faster."""
        table = self.compute if unit is None else self.units.get(unit, {})
        key = precision.lower()
        value = table.get(f"{key}_sparse") if sparse else None
        value = table.get(key) if value is None else value
        return None if value is None else float(value) * 1e12

    @property
    def bandwidth(self) -> float | None:
        """Peak memory bandwidth in bytes per second."""
        gbps = self.memory.get("bandwidth_gbps")
        return None if gbps is None else float(gbps) * 1e9

    @property
    def memory_bytes(self) -> int | None:
        """Memory size in bytes (vendors' "GB" of RAM are GiB)."""
        size = self.memory.get("size_gb")
        return None if size is None else int(size * 2**30)

    def figures(self) -> Iterator[tuple[str, float]]:
        """Every number that needs a source, as (dotted key, value)."""
        for key, value in self.compute.items():
            yield f"compute.{key}", value
        for unit, table in self.units.items():
            for key, value in table.items():
                yield f"units.{unit}.{key}", value
        for key, value in self.memory.items():
            yield f"memory.{key}", value
        for key in ("power_w", "power_min_w", "cores"):
            if getattr(self, key) is not None:
                yield key, getattr(self, key)

    def summary(self) -> str:
        """One line for `edgeopt targets`."""
        parts = []
        for prec in ("int8", "fp16", "fp32"):
            if prec in self.compute:
                sparse = self.compute.get(f"{prec}_sparse")
                extra = f" ({_num(sparse)} sparse)" if sparse else ""
                unit = "TOPS" if prec.startswith("int") else "TFLOPS"
                parts.append(f"{prec} {_num(self.compute[prec])}{extra} {unit}")
        for key, unit in (("bandwidth_gbps", "GB/s"), ("size_gb", "GB")):
            if key in self.memory:
                parts.append(f"{_num(self.memory[key])} {unit}")
        if self.power_w is not None:
            parts.append(f"{_num(self.power_w)} W")
        backends = ", ".join(b + "*" * (b == self.default_backend) for b in self.backends)
        figures = "; ".join(parts) or "no figures"
        return f"{self.name}: {self.vendor} {self.kind}; {figures} [{backends}]"

    def _fail(self, message: str) -> NoReturn:
        raise TargetError(f"{self.path or f'target {self.name!r}'}: {message}")

    def _validate(self) -> None:
        for name in (self.name, *self.aliases):
            if not _NAME.match(name):
                self._fail(f"name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        for key, values, known in (
            ("kind", [self.kind], KINDS), ("backends", self.backends, BACKENDS),
            ("backend_options", self.backend_options, BACKENDS),
            ("precisions", self.precisions, PRECISIONS),
            ("detect", [self.detect] if self.detect else [], DETECTORS),
        ):
            for value in values:
                if value not in known:
                    self._fail(f"{key}: unknown {key.rstrip('s')} {value!r} "
                               f"(known: {', '.join(sorted(known))})")
        if self.default_backend not in self.backends:
            self._fail(f"default_backend: {self.default_backend!r} is not listed in backends")
        if self.cores is not None and type(self.cores) is not int:  # bool is not a core count
            self._fail(f"cores: must be an integer, got {self.cores!r}")
        tables = {"compute": self.compute, **{f"units.{u}": t for u, t in self.units.items()}}
        for prefix, table in tables.items():
            for key in table:
                if not _COMPUTE_KEY.match(key):
                    self._fail(f"{prefix}.{key}: compute keys are a precision, optionally "
                               "with '_sparse' (e.g. int8, int8_sparse)")
                if key.endswith("_sparse") and key.removesuffix("_sparse") not in table:
                    self._fail(f"{prefix}.{key}: a sparse figure needs the dense one too")
        for key in self.memory:
            if not _MEMORY_KEY.match(key):
                self._fail(f"memory.{key}: memory keys end in their unit (_gbps, _gb, _mb, _kb)")
        if self.detect is None and not self.compute:
            self._fail("compute: missing table (at least one peak figure is required)")
        if self.detect is None and "bandwidth_gbps" not in self.memory:
            self._fail("memory.bandwidth_gbps: missing (the cost model needs it)")
        figures = dict(self.figures())
        for key, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self._fail(f"{key}: must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                self._fail(f"{key}: must be a positive number, got {value!r}")
            if not str(self.sources.get(key, "")).strip():
                self._fail(f"{key}: figure has no entry in [sources]")
        # Other fields (backends, description…) may cite a source too; figures must exist.
        citable = set(self.__dataclass_fields__) - {"compute", "units", "memory", "power_w",
                                                     "power_min_w", "cores"}
        for key in self.sources:
            if key not in figures and key.split(".")[0] not in citable:
                self._fail(f"sources: {key!r} names no figure of this target")


def _num(value: float) -> str:
    return f"{value:.4g}"


def target_from_dict(data: Mapping[str, Any], path: Path | None = None) -> Target:
    """Build a target from a parsed TOML table (or a plugin's dict); errors name `path`."""
    where = str(path) if path is not None else f"target {data.get('name', '?')!r}"

    def fail(message: str) -> NoReturn:
        raise TargetError(f"{where}: {message}")

    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            close = difflib.get_close_matches(key, _REQUIRED + _OPTIONAL, n=1)
            fail(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for key in _REQUIRED:
        if key not in data:
            fail(f"missing required key {key!r}")

    def text(key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            fail(f"{key}: must be a string, got {value!r}")
        return value

    def texts(key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)

    def table(key: str, value: Any = None) -> dict[str, Any]:
        value = data.get(key, {}) if value is None else value
        if not isinstance(value, dict):
            fail(f"{key}: must be a table, got {value!r}")
        return dict(value)

    units = {unit: table(f"units.{unit}", t) for unit, t in table("units").items()}
    options = {name: table(f"backend_options.{name}", t)
               for name, t in table("backend_options").items()}
    return Target(
        name=text("name") or "", description=text("description") or "",
        vendor=text("vendor") or "", kind=text("kind") or "",
        default_backend=text("default_backend") or "", backends=texts("backends"),
        precisions=texts("precisions"), compute=table("compute"), memory=table("memory"),
        power_w=data.get("power_w"), power_min_w=data.get("power_min_w"), backend_options=options,
        sources=_flatten(table("sources"), "", fail), aliases=texts("aliases"), path=path,
        isa=texts("isa"), cores=data.get("cores"), units=units, detect=text("detect"),
    )


def _flatten(tree: Mapping[str, Any], prefix: str, fail: Any) -> dict[str, str]:
    """[sources] may use quoted dotted keys or nested tables; both end up as 'a.b.c'."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}.", fail))
        elif isinstance(value, str):
            flat[prefix + key] = value
        else:
            fail(f"sources.{prefix}{key}: must be a string, got {value!r}")
    return flat


def load_target_file(path: Path | str) -> Target:
    """Read and validate one target file; every problem is a one-line TargetError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"{path}: no such target file") from None
    except OSError as error:
        raise TargetError(f"{path}: cannot read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TargetError(f"{path}: not valid TOML: {error}") from None
    return target_from_dict(data, path=path)


_PLUGINS: dict[str, Target] = {}  # name and aliases -> target registered at run time


@functools.cache
def _builtin_files() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for path in sorted(DEVICES_DIR.glob("*.toml")):
        target = load_target_file(path)
        if target.name != path.stem:
            raise TargetError(f"{path}: name {target.name!r} must match the file name")
        _check_free(found, target)
        found.update(dict.fromkeys((target.name, *target.aliases), target))
    return found


def _check_free(table: Mapping[str, Target], target: Target) -> None:
    for key in (target.name, *target.aliases):
        other = table.get(key)
        if other is not None and other.name != target.name:
            target._fail(f"name or alias {key!r} is already used by target {other.name!r}")


def builtin_targets() -> dict[str, Target]:
    """Built-in targets by name and alias; host-cpu is the detected machine."""
    from edgeopt.targets.host import detect_host_cpu  # host imports this module

    return {key: detect_host_cpu() if t.detect == "host" else t
            for key, t in _builtin_files().items()}


def register_target(target: Target, replace: bool = False) -> None:
    """Add a target at run time (plugins); `replace=True` lets it shadow one of the same name."""
    if not isinstance(target, Target):
        raise TargetError(f"register_target expects a Target, got {type(target).__name__}")
    current = {**_builtin_files(), **_PLUGINS}
    if target.name in current and not replace:
        target._fail("a target of this name exists already (pass replace=True to shadow it)")
    _check_free({k: t for k, t in current.items() if t.name != target.name}, target)
    _PLUGINS.update(dict.fromkeys((target.name, *target.aliases), target))


def unregister_target(name: str) -> None:
    """Drop a run-time target (tests, plugin reloads); built-in files stay."""
    for key in [k for k, t in _PLUGINS.items() if t.name == name]:
        del _PLUGINS[key]


def _all_targets() -> dict[str, Target]:
    by_name = {t.name: t for t in _PLUGINS.values()}
    merged = {**builtin_targets(), **_PLUGINS}
    # A plugin that shadows a built-in takes over its aliases too.
    return {key: by_name.get(t.name, t) for key, t in merged.items()}


def get_target(name_or_path: str | Path) -> Target:
    """A target by name, alias, or path to a .toml file."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        return load_target_file(Path(text))
    table = _all_targets()
    key = text.strip().lower()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, table, n=3, cutoff=0.6)
    close += [k for k in sorted(table) if key and key in k and k not in close][: 3 - len(close)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TargetError(f"unknown target {text!r}{hint} (`edgeopt targets` lists them; "
                      "a path to a .toml file works too)")


def list_targets() -> list[Target]:
    """Every known target once (aliases folded), sorted by name."""
    return sorted({t.name: t for t in _all_targets().values()}.values(), key=lambda t: t.name)
