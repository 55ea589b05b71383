"""ONNX Runtime emitter: ops without a CPU kernel are named up front, in the API and the CLI."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import load_model
from edgeopt.targets import get_emitter
from tests.conftest import run_edgeopt


def custom_op_model(with_function: bool = False) -> onnx.ModelProto:
    """Relu then custom::Scale, an op only a custom-op library (or a model-local function) defines."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Scale", ["r"], ["y"], name="scale", domain="custom")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    functions = []
    if with_function:
        body = [helper.make_node("Add", ["a", "a"], ["b"])]
        functions.append(helper.make_function("custom", "Scale", ["a"], ["b"], body,
                                              [helper.make_opsetid("", 17)]))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=functions)


def test_op_without_kernel_is_named(tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(), str(path))
    model = load_model(path)
    assert get_emitter("onnxruntime").unsupported_ops(model) == ["custom::Scale"]
    with pytest.raises(UserError, match=r"^backend 'onnxruntime' cannot run op\(s\) custom::Scale;"):
        get_emitter("onnxruntime").check(model)


def test_function_ops_and_contrib_kernels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "local.onnx"
    onnx.save(custom_op_model(with_function=True), str(path))
    assert get_emitter("onnxruntime").unsupported_ops(load_model(path)) == []
    # Gelu (opset 20) has an ONNX function body ORT can inline where it lacks a kernel.
    nodes = [helper.make_node("Gelu", ["x"], ["g"]), helper.make_node("Relu", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "gelu.onnx"))
    assert get_emitter("onnxruntime").unsupported_ops(load_model(tmp_path / "gelu.onnx")) == []


def test_cli_names_the_op_the_reference_run_lacks(tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(), str(path))
    result = run_edgeopt("compile", path, "-o", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: the reference run (ONNX Runtime CPU) cannot run op(s) custom::Scale"]
    assert not (tmp_path / "out").exists()
