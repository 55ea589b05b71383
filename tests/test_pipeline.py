"""Pipeline text and config parsing, option conversion, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.ir import PipelineError
from edgeopt.passes import (
    PassContext,
    describe_options,
    get_pass,
    instantiate,
    load_pipeline_config,
    parse_pipeline,
    pipeline_text,
    search_spaces,
)


def test_parse_mlir_style_text() -> None:
    specs = parse_pipeline("cleanup, fuse-conv-bn ,fold-constants{input_size_limit=100,output_size_limit=0x40}")
    assert [s.name for s in specs] == ["cleanup", "fuse-conv-bn", "fold-constants"]
    assert specs[2].options == {"input_size_limit": "100", "output_size_limit": "0x40"}
    passes = instantiate(specs, PassContext())
    assert passes[2].options.input_size_limit == 100 and passes[2].options.output_size_limit == 64
    # Canonical text round-trips (non-default options only).
    assert pipeline_text(passes) == "cleanup,fuse-conv-bn,fold-constants{input_size_limit=100,output_size_limit=64}"


def test_list_values_keep_their_commas() -> None:
    specs = parse_pipeline("a{keep=[Softmax,Exp],x=1},b")
    assert specs[0].options == {"keep": "[Softmax,Exp]", "x": "1"} and specs[1].name == "b"


@pytest.mark.parametrize(("text", "message"), [
    ("cleanup,no-such-pass", "unknown pass 'no-such-pass'"),
    ("cleanp", "did you mean cleanup"),
    ("cleanup{max_iterations=2,colour=red}",
     "pass 'cleanup': unknown option 'colour' (known: fold_growth_ratio, fold_size_limit, max_iterations)"),
    ("cleanup{max_iterations=two}", "pass 'cleanup': option 'max_iterations=two': expected an integer"),
    ("cleanup{max_iterations}", "expected key=value"),
    ("cleanup{max_iterations=2", "missing '}'"),
    ("cleanup,,fuse-conv-bn", "empty step"),
])
def test_bad_pipelines_name_the_pass_and_option(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as error:
        instantiate(parse_pipeline(text), PassContext())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_toml_and_yaml_configs(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('[[pipeline]]\npass = "cleanup"\noptions = { max_iterations = 2 }\n'
                    '[[pipeline]]\npass = "fuse-conv-bn"\n')
    yaml = tmp_path / "p.yaml"
    yaml.write_text("pipeline: cleanup{max_iterations=2},fuse-conv-bn\n")
    for path in (toml, yaml):
        passes = instantiate(load_pipeline_config(path), PassContext())
        assert pipeline_text(passes) == "cleanup{max_iterations=2},fuse-conv-bn"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[pipeline]]\noptions = {}\n')
    with pytest.raises(PipelineError, match=r"bad\.toml: pipeline step 1 needs a 'pass' key"):
        load_pipeline_config(bad)


def test_options_describe_types_help_and_search_space() -> None:
    cls = get_pass("cleanup")
    info = {o.name: o for o in describe_options(cls.Options)}
    assert info["max_iterations"].type_name == "int" and info["max_iterations"].default == 4
    assert "fixed point" in info["max_iterations"].help or "repeats" in info["max_iterations"].help
    assert search_spaces(cls.Options)["max_iterations"].high == 8
    assert cls.summary().startswith("Fold constants")
