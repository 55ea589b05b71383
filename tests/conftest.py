"""Shared fixtures: small models built with onnx.helper, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = ROOT / "examples" / "tiny_cnn.onnx"


def assert_zoo_outputs_match(name: str, original, optimized) -> None:
    """A small zoo model and its optimized IR agree within 1e-5 relative at batch 1 and 3 (dynamic batch)."""
    from edgeopt.ir import ReferenceExecutor, compare_outputs
    from tools import zoo

    executor = ReferenceExecutor()
    for batch in (1, 3):
        feeds = zoo.example_inputs(name, "small", batch=batch, seed=batch)
        comparison = compare_outputs(executor.run(original, feeds), executor.run(optimized, feeds),
                                     atol=1e-5, rtol=1e-5)
        assert comparison.ok and comparison.max_rel < 1e-5, comparison.worst()


def synthetic_samples(target, kind: str, ec: float, em: float, overhead: float, n: int = 24) -> list:
    """Kernels whose 'measured' time follows the factor model exactly."""
    from edgeopt.targets.calibration.fit import lines_for
    from edgeopt.targets.cost.features import KernelSample
    from edgeopt.targets.cost.roofline import factor_time

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        flops, nbytes = float(10 ** rng.uniform(5, 9)), float(10 ** rng.uniform(4, 7))
        sample = KernelSample(kind, "fp32", flops, nbytes, 0.0, {"k": 9.0})
        (line,) = lines_for([sample], target)
        sample.seconds = factor_time(line, ec, em, overhead)
        out.append(sample)
    return out


def make_conv_bn_model(opset: int = 17, batch: str | int = "N") -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Identity -> Relu -> Dropout -> y, with a dead branch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 4).astype(np.float32), "var"),
        numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "unused_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Identity", ["bn"], ["bn_id"], name="identity"),
        helper.make_node("Relu", ["bn_id"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["y"], name="dropout"),
        helper.make_node("Mul", ["r", "unused_w"], ["dead"], name="dead_mul"),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")


@pytest.fixture
def conv_bn_path(tmp_path: Path) -> Path:
    path = tmp_path / "conv_bn.onnx"
    onnx.save(make_conv_bn_model(), str(path))
    return path


@pytest.fixture
def example_model() -> Path:
    return EXAMPLE_MODEL


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_edgeopt(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> CliResult:
    """Run the installed `edgeopt` entry point in a subprocess (real exit codes and streams)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    script = Path(sys.executable).parent / "edgeopt"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "edgeopt.cli"]
    completed = subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=full_env,
        timeout=timeout,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def edgeopt_cli() -> Callable[..., CliResult]:
    return run_edgeopt
