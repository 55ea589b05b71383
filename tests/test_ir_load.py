"""Loading: every way a file can be wrong gives a one-line ModelLoadError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgeopt.ir import ModelLoadError, load_model, save_model
from tests.conftest import make_conv_bn_model


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_loads_a_valid_model(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    assert [n.op_type for n in model.graph][:2] == ["Conv", "BatchNormalization"]
    assert model.graph.inputs[0].shape[0].value == "N"  # symbolic dim kept


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as error:
        load_model(tmp_path / "nope.onnx")
    assert "nope.onnx: no such file" in _one_line(error)


def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 5)
    with pytest.raises(ModelLoadError) as error:
        load_model(path)
    assert "notes.onnx" in _one_line(error)


def test_truncated_protobuf(conv_bn_path: Path) -> None:
    data = conv_bn_path.read_bytes()
    conv_bn_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as error:
        load_model(conv_bn_path)
    assert "conv_bn.onnx" in _one_line(error)


def test_unsupported_opset(tmp_path: Path) -> None:
    path = tmp_path / "old.onnx"
    proto = make_conv_bn_model(opset=5)
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError) as error:
        load_model(path)
    assert "opset 5 is not supported" in _one_line(error)


def test_invalid_graph(tmp_path: Path) -> None:
    proto = make_conv_bn_model()
    proto.graph.node[3].input[0] = "does_not_exist"
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError) as error:
        load_model(path)
    message = _one_line(error)
    assert "broken.onnx: invalid ONNX graph" in message and "does_not_exist" in message


def _external_model(folder: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])], [weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    np.arange(4096, dtype=np.float32).tofile(tmp_path / "weights.bin")
    model = load_model(_external_model(tmp_path, "weights.bin"))
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), np.arange(4096))


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    np.zeros(4096, np.float32).tofile(tmp_path / "outside.bin")
    with pytest.raises(ModelLoadError) as error:
        load_model(_external_model(folder, location))
    assert "outside the model's folder" in _one_line(error)


def test_absolute_external_path_is_refused(tmp_path: Path) -> None:
    np.zeros(4096, np.float32).tofile(tmp_path / "abs.bin")
    with pytest.raises(ModelLoadError) as error:
        load_model(_external_model(tmp_path, str(tmp_path / "abs.bin")))
    assert "not a path relative" in _one_line(error)


def test_save_with_external_data_round_trips(tmp_path: Path, conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    files = save_model(model, tmp_path / "out" / "m.onnx", external_data=True, size_threshold_bytes=16)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    reloaded = load_model(files[0])
    np.testing.assert_array_equal(reloaded.graph.initializers["w"].const_value.numpy(),
                                  model.graph.initializers["w"].const_value.numpy())


def test_save_inline_after_external_load_is_self_contained(tmp_path: Path) -> None:
    np.arange(4096, dtype=np.float32).tofile(tmp_path / "weights.bin")
    model = load_model(_external_model(tmp_path, "weights.bin"))
    out = tmp_path / "elsewhere" / "copy.onnx"
    save_model(model, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx"]
    assert load_model(out).graph.initializers["w"].const_value.numpy()[-1] == 4095


@pytest.mark.slow
def test_models_over_2gb_save_weights_externally(tmp_path: Path) -> None:
    import onnx_ir as ir

    big = np.zeros((600, 1024, 1024), dtype=np.float32)  # 2.4 GiB: over protobuf's 2 GiB limit
    weight = ir.Value(name="w", shape=ir.Shape(big.shape), type=ir.TensorType(ir.DataType.FLOAT),
                      const_value=ir.Tensor(big, name="w"))
    x = ir.Value(name="x", shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.Node("", "Add", [weight, x], num_outputs=1)
    node.outputs[0].name = "y"
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    node.outputs[0].shape = ir.Shape(big.shape)
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[weight], name="big")
    graph.opset_imports[""] = 17
    model = ir.Model(graph, ir_version=10)
    files = save_model(model, tmp_path / "big.onnx")
    assert [f.name for f in files] == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 1 << 20
    assert (tmp_path / "big.onnx.data").stat().st_size == big.nbytes
    del big, model
    reloaded = load_model(tmp_path / "big.onnx")
    assert reloaded.graph.initializers["w"].const_value.shape == (600, 1024, 1024)
