"""OpenVINO emitter: IR written, compiled and run on the CPU plugin, compared with the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import load_model
from edgeopt.ir.reference import ReferenceExecutor
from edgeopt.targets import get_emitter
from tests.conftest import run_edgeopt
from tools.zoo import build

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("resnet18", tmp_path_factory.mktemp("zoo"), size="small")


def if_model() -> onnx.ModelProto:
    """y = x if sum(x) > 0 else -x: control flow the emitters must refuse up front."""
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def emit_and_validate(path: Path, folder: Path, options: dict | None = None):
    model = load_model(path)
    executor = ReferenceExecutor()
    inputs = executor.generate_inputs(model)
    reference = executor.run(model, inputs)
    emitter = get_emitter("openvino")
    emitter.check(model)
    result = emitter.emit(model, folder, options or {})
    emitter.validate(result, inputs, reference, measure=True)
    return result


def test_openvino_ir_runs_on_cpu_and_matches_reference(resnet: Path, tmp_path: Path) -> None:
    result = emit_and_validate(resnet, tmp_path)
    assert result.artifact == tmp_path / "model.xml"
    assert (tmp_path / "model.bin").stat().st_size > 4 * 70_000  # FP32 weights of the small ResNet
    assert result.validation["ok"] and result.validation["mode"] == "fp32"
    assert result.validation["max_abs"] <= 1e-4
    assert result.latency_ms is not None and result.latency_ms > 0



def test_static_shapes_fix_symbolic_dims_in_the_ir(resnet: Path, tmp_path: Path) -> None:
    import openvino as ov

    dynamic = emit_and_validate(resnet, tmp_path / "dynamic")
    static = emit_and_validate(resnet, tmp_path / "static", {"static_shapes": True})
    read = ov.Core().read_model

    def shapes(folder: str) -> list[str]:
        return [str(port.get_partial_shape()) for port in read(tmp_path / folder / "model.xml").inputs]

    assert shapes("dynamic")[0].startswith("[?,") and shapes("static")[0].startswith("[1,")
    assert static.validation["ok"] and static.validation["max_abs"] <= 1e-4
    assert any("keep dynamic dims" in note and "static_shapes=true" in note for note in dynamic.notes)
    assert any("fixed to static shapes" in note for note in static.notes)

def test_fp16_compression_halves_weights_and_agrees(resnet: Path, tmp_path: Path) -> None:
    fp32 = emit_and_validate(resnet, tmp_path / "fp32")
    fp16 = emit_and_validate(resnet, tmp_path / "fp16", {"compress_to_fp16": True})
    ratio = (tmp_path / "fp16" / "model.bin").stat().st_size / (tmp_path / "fp32" / "model.bin").stat().st_size
    assert 0.45 < ratio < 0.6
    assert fp16.validation["mode"] == "agreement" and fp16.validation["cosine"] > 0.999
    assert json.loads((tmp_path / "fp16" / "openvino_config.json").read_text())["precision"] == "fp16"
    assert fp32.validation["max_abs"] <= fp16.validation["max_abs"]


def test_int8_qdq_model_runs_through_openvino(resnet: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"images": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantized = tmp_path / "int8.onnx"
    quantize_static(str(resnet), str(quantized), Reader(), quant_format=QuantFormat.QDQ)
    result = emit_and_validate(quantized, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "openvino_config.json").read_text())["precision"] == "int8"
    assert result.validation["mode"] == "agreement"
    assert result.validation["cosine"] > 0.99


def test_if_model_gets_one_line_error_naming_the_op(tmp_path: Path) -> None:
    path = tmp_path / "if.onnx"
    onnx.save(if_model(), str(path))
    with pytest.raises(UserError, match=r"backend 'openvino' cannot run op\(s\) If;") as caught:
        get_emitter("openvino").check(load_model(path))
    assert "\n" not in str(caught.value)


def test_cli_if_model_exits_2_naming_the_op(tmp_path: Path) -> None:
    path = tmp_path / "if.onnx"
    onnx.save(if_model(), str(path))
    result = run_edgeopt("compile", path, "--backend", "openvino", "-o", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: backend 'openvino' cannot run op(s) If; choose another --backend or a pipeline that removes them"]
    assert not (tmp_path / "out").exists()


def test_unknown_device_option_is_one_line_error() -> None:
    with pytest.raises(UserError, match="unknown device 'TPU'"):
        get_emitter("openvino").options({"device": "TPU"})


def test_cli_intel_target_writes_device_hints(resnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_edgeopt("compile", resnet, "--target", "intel-core-ultra", "-o", out)
    assert result.code == 0, result.stderr
    config = json.loads((out / "openvino_config.json").read_text())
    assert config["device_priorities"] == ["NPU", "GPU", "CPU"]
    assert config["device"] == "AUTO:NPU,GPU,CPU"
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "openvino" and report["validation"]["ok"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["file"] == "model.xml" and "model.bin" in manifest["files"]


def test_cli_backend_openvino_on_host(resnet: Path, tmp_path: Path) -> None:
    result = run_edgeopt("compile", resnet, "--backend", "openvino", "-o", tmp_path / "out")
    assert result.code == 0, result.stderr
    assert "openvino latency" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validation"]["max_abs"] <= 1e-4 and report["latency_ms"] > 0
