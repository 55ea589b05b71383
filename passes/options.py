"""Typed pass options, their search spaces, and text-to-value conversion.

Options are a dataclass per pass. The pipeline parser fills one from
``{key=value}`` text: each value is converted by the field's type, and an
unknown key or a bad value is a one-line ``PipelineError`` naming the pass and
the option. A field may declare the search space the tuner explores.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from edgeopt.ir.errors import PipelineError


@dataclass(frozen=True)
class Choice:
    """Categorical space: one of ``values``."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


SearchSpace = Choice | IntRange | FloatRange


def option(default: Any = dataclasses.MISSING, *, help: str = "",
           space: SearchSpace | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help line and an optional search space."""
    metadata = {"help": help, "space": space}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class NoOptions:
    """Options of a pass that takes none."""


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type_name: str
    default: Any
    help: str
    space: SearchSpace | None


def describe_options(options_type: type) -> list[OptionInfo]:
    hints = get_type_hints(options_type)
    infos = []
    for fld in dataclasses.fields(options_type):
        default = fld.default
        if fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        infos.append(OptionInfo(fld.name, _type_name(hints[fld.name]), default,
                                fld.metadata.get("help", ""), fld.metadata.get("space")))
    return infos


def search_spaces(options_type: type) -> dict[str, SearchSpace]:
    """The options that declare a search space, by name."""
    return {info.name: info.space for info in describe_options(options_type) if info.space is not None}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'str'}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(member.value for member in tp)
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert(raw: Any, tp: Any) -> Any:
    """Convert ``raw`` (text from a pipeline, or a TOML/YAML value) to type ``tp``; ValueError if not."""
    origin = get_origin(tp)
    if tp is Any:
        return raw
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if str(choice) == str(raw):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (raw is None or str(raw).lower() in ("none", "null")):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(raw, arg)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin in (list, tuple, Sequence):
        (item_type,) = get_args(tp)[:1] or (str,)
        items = raw if isinstance(raw, (list, tuple)) else _split_list(str(raw))
        converted = [convert(item, item_type) for item in items]
        return tuple(converted) if origin is tuple else converted
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        try:
            return int(raw) if not isinstance(raw, str) else int(raw.replace("_", ""), 0)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if tp is str:
        return str(raw)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(raw)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(m.value for m in tp)}") from None
    raise ValueError(f"unsupported option type {tp}")


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]


def convert_values(owner: str, options_type: type, raw: Mapping[str, Any],
                   error: type[Exception] = PipelineError) -> dict[str, Any]:
    """``raw`` text values typed by the dataclass ``options_type``'s fields; errors name ``owner``
    (e.g. "pass 'cleanup'", "backend 'tvm'") and the option, as ``error``."""
    hints = typing.get_type_hints(options_type)
    fields = {f.name for f in dataclasses.fields(options_type)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise error(f"{owner}: unknown option '{key}' (known: {known})")
        try:
            values[name] = convert(value, hints[name])
        except ValueError as reason:
            raise error(f"{owner}: option '{key}={value}': {reason}") from None
    return values


def build_options(pass_name: str, options_type: type, raw: dict[str, Any]) -> Any:
    """Instantiate ``options_type`` from raw values; errors name the pass and option."""
    values = convert_values(f"pass '{pass_name}'", options_type, raw)
    try:
        options = options_type(**values)
    except TypeError as error:
        raise PipelineError(f"pass '{pass_name}': {error}") from None
    validate = getattr(options, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            raise PipelineError(f"pass '{pass_name}': {error}") from None
    return options


def options_to_text(options: Any) -> dict[str, str]:
    """Non-default options as text, for pipeline strings in reports and reproducers."""
    if options is None or not dataclasses.is_dataclass(options):
        return {}
    text: dict[str, str] = {}
    for fld in dataclasses.fields(options):
        value = getattr(options, fld.name)
        default = fld.default if fld.default_factory is dataclasses.MISSING else fld.default_factory()
        if value != default:
            if isinstance(value, (list, tuple)):
                text[fld.name] = "[" + ",".join(str(v) for v in value) + "]"
            elif isinstance(value, enum.Enum):
                text[fld.name] = str(value.value)
            else:
                text[fld.name] = str(value).lower() if isinstance(value, bool) else str(value)
    return text
