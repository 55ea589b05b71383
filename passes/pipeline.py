"""Pipelines as text, MLIR-style, and the same from a TOML or YAML config.

    cleanup,fuse-conv-bn,quantize{precision=int8,calibrator=entropy}

The text form is canonical: reports, reproducers and configs all carry it, so
any run can be replayed. A config file holds either ``pipeline = "<text>"`` or
a list of steps ``[[pipeline]] pass = "..." options = {...}``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeopt.ir.errors import PipelineError
from edgeopt.passes.base import Pass, PassContext
from edgeopt.passes.options import build_options, options_to_text
from edgeopt.passes.registry import get_pass


@dataclass
class PassSpec:
    """One step of a pipeline before it is bound to a pass class."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        if not self.options:
            return self.name
        body = ",".join(f"{k}={_value_text(v)}" for k, v in self.options.items())
        return f"{self.name}{{{body}}}"


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _split_top_level(text: str, separator: str, context: str) -> list[str]:
    """Split on ``separator`` outside {...} and [...]; brackets must balance."""
    parts, start = [], 0
    closing = {"{": "}", "[": "]"}
    stack: list[str] = []
    for index, char in enumerate(text):
        if char in closing:
            stack.append(closing[char])
        elif char in ("}", "]"):
            if not stack or stack.pop() != char:
                raise PipelineError(f"pipeline '{context}': unbalanced '{char}' at column {index + 1}")
        elif char == separator and not stack:
            parts.append(text[start:index])
            start = index + 1
    if stack:
        raise PipelineError(f"pipeline '{context}': missing '{stack[-1]}'")
    parts.append(text[start:])
    return parts


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parse pipeline text into specs (pass names are checked when bound)."""
    specs = []
    for raw in _split_top_level(text.strip(), ",", text):
        item = raw.strip()
        if not item:
            raise PipelineError(f"pipeline '{text}': empty step")
        name, _, rest = item.partition("{")
        name = name.strip()
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise PipelineError(f"pipeline '{text}': bad pass name '{name}'")
        options: dict[str, Any] = {}
        if rest:
            if not rest.endswith("}"):
                raise PipelineError(f"pipeline '{text}': step '{item}' must end with '}}'")
            body = rest[:-1].strip()
            for pair in _split_top_level(body, ",", text) if body else []:
                key, equals, value = pair.partition("=")
                if not equals or not key.strip():
                    raise PipelineError(f"pipeline '{text}': pass '{name}': expected key=value, got '{pair.strip()}'")
                options[key.strip()] = value.strip()
        specs.append(PassSpec(name, options))
    return specs


def load_pipeline_config(path: str | Path) -> list[PassSpec]:
    """Read a pipeline from a .toml, .yaml or .yml file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline config")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        else:
            raise PipelineError(f"{path}: pipeline config must be .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0]
        raise PipelineError(f"{path}: cannot parse: {first}") from None
    steps = data.get("pipeline") if isinstance(data, dict) else None
    if isinstance(steps, str):
        return parse_pipeline(steps)
    if not isinstance(steps, list):
        raise PipelineError(f"{path}: expected 'pipeline' as text or a list of steps")
    specs = []
    for index, step in enumerate(steps):
        if isinstance(step, str):
            specs.extend(parse_pipeline(step))
            continue
        if not isinstance(step, dict) or "pass" not in step:
            raise PipelineError(f"{path}: pipeline step {index + 1} needs a 'pass' key")
        options = step.get("options", {})
        if not isinstance(options, dict):
            raise PipelineError(f"{path}: options of step {index + 1} ('{step['pass']}') must be a table")
        specs.append(PassSpec(str(step["pass"]), dict(options)))
    return specs


def instantiate(specs: list[PassSpec], ctx: PassContext) -> list[Pass]:
    """Bind specs to registered passes with converted options (one-line errors)."""
    passes = []
    for spec in specs:
        cls = get_pass(spec.name)
        options = build_options(spec.name, cls.Options, spec.options)
        passes.append(cls(options, ctx))
    return passes


def pipeline_text(passes: list[Pass]) -> str:
    """The canonical text of bound passes (non-default options only)."""
    return ",".join(PassSpec(p.name, options_to_text(p.options)).to_text() for p in passes)
