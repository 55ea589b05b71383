"""Plugins: a --plugin file and an installed entry-point distribution, used from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_edgeopt

EXAMPLE_PLUGIN = ROOT / "examples" / "plugins" / "prune_small_weights.py"

WRONG_PLUGIN = '''
import numpy as np
import onnx_ir as ir
from edgeopt.passes import Pass, PassResult, register_pass

@register_pass("scale-weights-wrongly")
class ScaleWeightsWrongly(Pass):
    """Deliberately wrong: doubles every Conv weight."""

    def run(self, model, ctx):
        for node in model.graph:
            if node.op_type == "Conv":
                weight = node.inputs[1]
                weight.const_value = ir.Tensor(weight.const_value.numpy() * 2, name=weight.name)
        return PassResult(model, True)
'''


def test_example_plugin_is_listed_and_runs(tmp_path: Path, example_model: Path) -> None:
    listed = run_edgeopt("passes", "--plugin", EXAMPLE_PLUGIN)
    assert listed.code == 0, listed.stderr
    assert "prune-small-weights" in listed.stdout and "threshold" in listed.stdout
    out = tmp_path / "out"
    result = run_edgeopt("compile", example_model, "--plugin", EXAMPLE_PLUGIN, "-o", out, "--no-measure",
                         "--passes", "cleanup,prune-small-weights{threshold=0.02}", "--verify")
    assert result.code == 0, result.stderr
    assert "prune-small-weights{threshold=0.02}" in result.stdout and "weights_zeroed=" in result.stdout
    assert (out / "manifest.json").is_file()


def test_verify_catches_a_wrong_plugin_pass_and_rolls_it_back(tmp_path: Path, example_model: Path) -> None:
    plugin = tmp_path / "wrong.py"
    plugin.write_text(WRONG_PLUGIN)
    out = tmp_path / "out"
    result = run_edgeopt("compile", example_model, "--plugin", plugin, "-o", out, "--no-measure",
                         "--passes", "cleanup,scale-weights-wrongly,fuse-conv-bn", "--verify")
    assert result.code == 0, result.stderr
    report = __import__("json").loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["passes"]}
    assert rows["scale-weights-wrongly"]["status"] == "rolled back"
    assert "outputs differ from the input model" in rows["scale-weights-wrongly"]["reason"]
    assert rows["fuse-conv-bn"]["status"] == "applied"
    assert report["final_comparison"]["max_abs"] < 1e-4
    assert "rolled back" in result.stdout


def test_entry_point_plugin_distribution_is_discovered(tmp_path: Path, example_model: Path) -> None:
    dist = tmp_path / "dist-src"
    (dist / "edgeopt_demo_plugin").mkdir(parents=True)
    (dist / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "edgeopt-demo-plugin"
        version = "1.0"
        [project.entry-points."edgeopt.plugins"]
        demo = "edgeopt_demo_plugin"
        [tool.setuptools]
        packages = ["edgeopt_demo_plugin"]
    '''))
    (dist / "edgeopt_demo_plugin" / "__init__.py").write_text(textwrap.dedent('''
        from edgeopt.passes import Pass, PassResult, register_pass

        @register_pass("demo-count-nodes")
        class DemoCountNodes(Pass):
            """Count nodes by op type (a read-only demo pass from an installed plugin)."""

            def run(self, model, ctx):
                counts = {}
                for node in model.graph:
                    counts[node.op_type] = counts.get(node.op_type, 0) + 1
                return PassResult(model, False, counts=counts)
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(dist)], check=True, capture_output=True)
    assert list(site.glob("edgeopt_demo_plugin-1.0.dist-info/entry_points.txt"))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = run_edgeopt("passes", env=env)
    assert listed.code == 0, listed.stderr
    assert "demo-count-nodes" in listed.stdout and "entry point demo" in listed.stdout
    out = tmp_path / "out"
    result = run_edgeopt("compile", example_model, "-o", out, "--no-measure",
                         "--passes", "demo-count-nodes,cleanup", env=env)
    assert result.code == 0, result.stderr
    assert "Conv=4" in result.stdout
    # Without the distribution on the path the pass does not exist.
    assert run_edgeopt("passes").stdout.count("demo-count-nodes") == 0


@pytest.mark.parametrize("body", ["raise RuntimeError('plugin setup exploded')", "import not_a_module_xyz"])
def test_plugin_that_raises_gives_one_line(tmp_path: Path, example_model: Path, body: str) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(body + "\n")
    out = tmp_path / "out"
    result = run_edgeopt("compile", example_model, "--plugin", plugin, "-o", out)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad_plugin.py failed to load" in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()
