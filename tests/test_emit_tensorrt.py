"""TensorRT emitter: the build bundle is written and checked without TensorRT; the engine where it runs."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import load_model
from edgeopt.ir.reference import ReferenceExecutor
from edgeopt.targets import get_emitter
from edgeopt.targets.emitters.tensorrt import (
    profile_problems,
    supported_ops,
    tensorrt_available,
    trtexec_command,
)
from tests.conftest import run_edgeopt
from tools.zoo import build

ZOO_MODELS = ["resnet18", "mobilenet_v3", "yolov8n", "bert", "lstm_gru"]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    for name in ZOO_MODELS:
        build(name, folder, size="small")
    return folder


def emit_and_validate(path: Path, folder: Path, options: dict | None = None,
                      bindings: dict[str, int] | None = None):
    model = load_model(path)
    executor = ReferenceExecutor()
    inputs = executor.generate_inputs(model, bindings)
    reference = executor.run(model, inputs)
    emitter = get_emitter("tensorrt")
    emitter.check(model)
    result = emitter.emit(model, folder, options or {})
    emitter.validate(result, inputs, reference)
    return result


def unique_model() -> onnx.ModelProto:
    """Relu then Unique: Unique is not in TensorRT's ONNX operator list."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Unique", ["r"], ["y"], name="dedupe", sorted=1)]
    graph = helper.make_graph(nodes, "unique_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sparse_conv_model() -> onnx.ModelProto:
    """One Conv whose weight has 2 zeros in every group of 4 input channels (2:4 sparse)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    weight[:, 0::4] = 0
    weight[:, 1::4] = 0
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "sparse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_bundle_is_written_and_checked_for_zoo_models(zoo_dir: Path, tmp_path: Path, name: str) -> None:
    bindings = {"sequence": 16} if name in ("bert", "lstm_gru") else None
    profile = "batch=1:1:4,sequence=1:16:64" if bindings else "batch=1:1:4"
    result = emit_and_validate(zoo_dir / f"{name}-small.onnx", tmp_path, {"profile": profile}, bindings)
    bundle = tmp_path / "tensorrt"
    assert result.artifact == bundle
    for file in ("model.onnx", "build_config.json", "build_engine.py", "build_engine.sh", "README.md"):
        assert (bundle / file).is_file(), file
    onnx.checker.check_model(str(bundle / "model.onnx"), full_check=True)
    validation = result.validation
    assert validation["ok"] and validation["max_abs"] <= 1e-4, validation
    assert validation["ops_in_tensorrt_list"] and validation["profile_ok"] and validation["build_script_ok"]
    ops = {node.op_type for node in onnx.load(str(bundle / "model.onnx")).graph.node}
    assert ops <= supported_ops("10")
    # The bundled ONNX is the IR it was given: ORT on it reproduces the reference outputs.
    assert validation["checked_with"] == "onnxruntime"
    config = json.loads((bundle / "build_config.json").read_text())
    for input_name, (low, opt, high) in config["profile"].items():
        assert low[0] == 1 and opt[0] == 1 and high[0] == 4, input_name
        if bindings:
            assert low[1] == 1 and opt[1] == 16 and high[1] == 64
    assert set(config["profile"]) == {i.name for i in onnx.load(str(bundle / "model.onnx")).graph.input}


def test_op_outside_the_tensorrt_list_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "unique.onnx"
    onnx.save(unique_model(), str(path))
    model = load_model(path)
    assert get_emitter("tensorrt").unsupported_ops(model) == ["Unique"]
    with pytest.raises(UserError, match=r"^backend 'tensorrt' cannot run op\(s\) Unique;") as caught:
        get_emitter("tensorrt").check(model)
    assert "\n" not in str(caught.value)


def test_cli_refuses_the_op_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "unique.onnx"
    onnx.save(unique_model(), str(path))
    result = run_edgeopt("compile", path, "--target", "jetson-orin-nano-8gb", "-o", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert "backend 'tensorrt' cannot run op(s) Unique;" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_profile_consistency_is_checked(zoo_dir: Path, tmp_path: Path) -> None:
    model = load_model(zoo_dir / "bert-small.onnx")
    good = {"input_ids": [[1, 1], [1, 16], [4, 64]], "attention_mask": [[1, 1], [1, 16], [4, 64]]}
    assert profile_problems(model, good) == []
    inputs = {"input_ids": np.zeros((1, 128), np.int64)}
    assert profile_problems(model, good, inputs) == [
        "input 'input_ids' dim 1: validated with size 128, outside 1..64"]
    split = {**good, "attention_mask": [[1, 1], [1, 8], [4, 64]]}
    assert any("dim 'sequence' has range 1:8:64 here" in p for p in profile_problems(model, split))
    backwards = {**good, "input_ids": [[1, 32], [1, 16], [4, 64]]}
    assert any("needs 1 <= min <= opt <= max" in p for p in profile_problems(model, backwards))
    missing = {"input_ids": good["input_ids"]}
    assert profile_problems(model, missing) == [
        "input 'attention_mask' has symbolic dims but no min/opt/max shapes"]
    resnet = load_model(zoo_dir / "resnet18-small.onnx")
    fixed = {"images": [[1, 3, 32, 32], [1, 3, 64, 64], [2, 3, 32, 32]]}
    assert profile_problems(resnet, fixed) == [
        "input 'images' dim 2 is fixed at 32 but the profile says 32:64:32",
        "input 'images' dim 3 is fixed at 32 but the profile says 32:64:32"]
    with pytest.raises(UserError, match="profile names unknown dim"):
        emit_and_validate(zoo_dir / "resnet18-small.onnx", tmp_path, {"profile": "sequence=1:2:3"})
    with pytest.raises(UserError, match="needs 1 <= min <= opt <= max"):
        emit_and_validate(zoo_dir / "resnet18-small.onnx", tmp_path, {"profile": "batch=4:2:8"})


def test_build_engine_script_parses_arguments_without_tensorrt(zoo_dir: Path, tmp_path: Path) -> None:
    emit_and_validate(zoo_dir / "resnet18-small.onnx", tmp_path)
    script = tmp_path / "tensorrt" / "build_engine.py"
    ast.parse(script.read_text())
    # A `tensorrt` that fails on import proves the script imports it only to build.
    poison = tmp_path / "poison"
    poison.mkdir()
    (poison / "tensorrt.py").write_text("raise ImportError('tensorrt must not be imported for --help')\n")
    env = {**os.environ, "PYTHONPATH": str(poison)}
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    for flag in ("--fp16", "--int8", "--sparsity", "--workspace-mb", "--dla-core", "--profile", "--check"):
        assert flag in shown.stdout
    dry = subprocess.run([sys.executable, str(script), "--dry-run", "--no-fp16", "--workspace-mb", "512",
                          "--profile", "images=1x3x32x32:2x3x32x32:8x3x32x32"],
                         capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    settings = json.loads(dry.stdout)
    assert settings["fp16"] is False and settings["workspace_mb"] == 512
    assert settings["profiles"]["images"] == [[1, 3, 32, 32], [2, 3, 32, 32], [8, 3, 32, 32]]
    bad = subprocess.run([sys.executable, str(script), "--profile", "images=1x3"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "expected INPUT=MIN:OPT:MAX" in bad.stderr
    built = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert built.returncode != 0 and "tensorrt must not be imported" in built.stderr


def test_trtexec_command_carries_precision_workspace_and_shapes(zoo_dir: Path, tmp_path: Path) -> None:
    emit_and_validate(zoo_dir / "resnet18-small.onnx", tmp_path, {"workspace_mb": 2048, "dla_cores": 2})
    config = json.loads((tmp_path / "tensorrt" / "build_config.json").read_text())
    command = trtexec_command(config)
    assert command[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.engine"]
    assert "--memPoolSize=workspace:2048M" in command and "--fp16" in command and "--int8" not in command
    assert "--useDLACore=0" in command and "--allowGPUFallback" in command
    assert "--minShapes=images:1x3x32x32" in command
    assert "--optShapes=images:1x3x32x32" in command
    assert "--maxShapes=images:8x3x32x32" in command
    shell = (tmp_path / "tensorrt" / "build_engine.sh").read_text()
    assert " ".join(command) in shell
    plain = trtexec_command({**config, "fp16": False, "profile": {}, "dla_core": -1})
    assert "--fp16" not in plain and not any(flag.startswith("--minShapes") for flag in plain)
    assert not any(flag.startswith("--useDLACore") for flag in plain)


def test_int8_qdq_and_2_4_sparsity_set_their_flags(zoo_dir: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"images": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                                 for _ in range(2)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantized = tmp_path / "int8.onnx"
    quantize_static(str(zoo_dir / "resnet18-small.onnx"), str(quantized), Reader(), quant_format=QuantFormat.QDQ)
    result = emit_and_validate(quantized, tmp_path / "int8")
    config = json.loads((tmp_path / "int8" / "tensorrt" / "build_config.json").read_text())
    assert config["int8"] and "--int8" in trtexec_command(config)
    assert result.validation["ok"]
    sparse = tmp_path / "sparse.onnx"
    onnx.save(sparse_conv_model(), str(sparse))
    result = emit_and_validate(sparse, tmp_path / "sparse", {"fp16": False})
    config = json.loads((tmp_path / "sparse" / "tensorrt" / "build_config.json").read_text())
    assert config["sparsity"] and config["sparse_layers"] == ["conv"]
    command = trtexec_command(config)
    assert "--sparsity=enable" in command and "--fp16" not in command
    assert result.validation["ok"]


def test_cli_jetson_target_writes_the_bundle(zoo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_edgeopt("compile", zoo_dir / "resnet18-small.onnx", "--target", "jetson-orin-nano-8gb", "-o", out)
    assert result.code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "tensorrt" and report["validation"]["ok"]
    assert (out / "tensorrt" / "build_engine.py").is_file()
    assert "trtexec --onnx=model.onnx" in (out / "tensorrt" / "build_engine.sh").read_text()


@pytest.mark.skipif(not tensorrt_available(), reason="needs the tensorrt package and a CUDA GPU")
def test_engine_is_built_run_and_compared(zoo_dir: Path, tmp_path: Path) -> None:
    result = emit_and_validate(zoo_dir / "resnet18-small.onnx", tmp_path)
    engine = result.validation["engine"]
    assert engine["ok"] and engine["mode"] == "agreement"
    assert any("engine built and run" in note for note in result.notes)
