"""One registry for built-in and plugin passes, and plugin loading.

A plugin is a module that registers passes (or targets, emitters) with the
same decorators the built-ins use. It is loaded from the ``edgeopt.plugins``
entry-point group of installed distributions, or from a file named with
``--plugin``; nothing else runs third-party code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from edgeopt.ir.errors import PipelineError, PluginError
from edgeopt.passes.base import Pass

ENTRY_POINT_GROUP = "edgeopt.plugins"


@dataclass(frozen=True)
class RegisteredPass:
    cls: type[Pass]
    origin: str  # "builtin", "entry point <dist>", or a plugin file path


_PASSES: dict[str, RegisteredPass] = {}
_current_origin = "builtin"
_loaded_plugins: set[str] = set()


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator registering a pass under ``name`` (kebab-case, as used in pipelines)."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass('{name}') must decorate a Pass subclass")
        existing = _PASSES.get(name)
        if existing is not None and existing.cls is not cls and existing.cls.__qualname__ != cls.__qualname__:
            raise PluginError(f"pass '{name}' from {_current_origin} clashes with the one from {existing.origin}")
        cls.name = name
        _PASSES[name] = RegisteredPass(cls, _current_origin)
        return cls

    return decorate


def get_pass(name: str) -> type[Pass]:
    _ensure_builtins()
    if name not in _PASSES:
        close = difflib.get_close_matches(name, _PASSES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `edgeopt passes`)"
        raise PipelineError(f"unknown pass '{name}'{hint}")
    return _PASSES[name].cls


def registered_passes() -> dict[str, RegisteredPass]:
    _ensure_builtins()
    return dict(sorted(_PASSES.items()))


def _ensure_builtins() -> None:
    import edgeopt.passes.builtin  # noqa: F401  (imports every built-in pass module)


def _load(origin: str, loader: Callable[[], object]) -> None:
    global _current_origin
    previous, _current_origin = _current_origin, origin
    try:
        loaded = loader()
        if isinstance(loaded, type) and issubclass(loaded, Pass) and loaded.name not in _PASSES:
            register_pass(loaded.name or loaded.__name__.lower())(loaded)
    finally:
        _current_origin = previous


def load_plugin_file(path: str | Path) -> ModuleType:
    """Import a plugin from a .py file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin {path}: no such file")
    resolved = str(path.resolve())
    # A stable, unique module name so loading the same file twice is a no-op.
    module_name = "edgeopt_plugin_" + hashlib.sha1(resolved.encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module

    def run() -> ModuleType:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module

    try:
        _ensure_builtins()
        _load(str(path), run)
    except PluginError:
        del sys.modules[module_name]
        raise
    except BaseException as error:
        del sys.modules[module_name]
        raise PluginError(f"plugin {path} failed to load: {type(error).__name__}: {error}") from error
    return module


def load_entry_point_plugins() -> list[str]:
    """Load every ``edgeopt.plugins`` entry point once; returns their names."""
    _ensure_builtins()
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{entry.name}={entry.value}"
        names.append(entry.name)
        if key in _loaded_plugins:
            continue
        dist = entry.dist.name if entry.dist is not None else "?"
        try:
            _load(f"entry point {entry.name} ({dist})", entry.load)
        except PluginError:
            raise
        except BaseException as error:
            raise PluginError(
                f"plugin entry point '{entry.name}' ({entry.value}) failed to load:"
                f" {type(error).__name__}: {error}"
            ) from error
        _loaded_plugins.add(key)
    return names
