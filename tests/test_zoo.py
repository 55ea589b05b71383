"""The model zoo: every small model exports, checks, runs in ONNX Runtime at two batch sizes and
agrees with its torch module; CNNs keep their BatchNorms; the Paddle variant keeps its shape
chains and Constant nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tools.zoo import ZOO, build, example_inputs, module, summarize  # noqa: E402
from tools.zoo.__main__ import main  # noqa: E402

NAMES = sorted(ZOO)
CNNS = [n for n in NAMES if ZOO[n].family in ("cnn", "detector")]


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def built(zoo_dir: Path) -> dict[str, onnx.ModelProto]:
    """Each small model exported once for the whole session."""
    return {n: onnx.load(str(build(n, zoo_dir, "small"))) for n in NAMES}


def test_registry_entries_are_well_formed() -> None:
    expected = {"resnet18", "resnet50", "resnet18_paddle", "mobilenet_v2", "mobilenet_v3",
                "efficientnet_b0", "yolov8n", "vit_tiny", "bert", "lstm_gru"}
    assert expected <= set(ZOO)
    for name, e in ZOO.items():
        assert e.name == name and e.description
        assert e.family in ("cnn", "detector", "transformer", "rnn")


@pytest.mark.parametrize("name", NAMES)
def test_model_checks_and_has_symbolic_batch(name: str, built: dict[str, onnx.ModelProto]) -> None:
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    for value in (*model.graph.input, *model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param == "batch" and not dim0.HasField("dim_value"), value.name


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_torch(name: str, zoo_dir: Path, built: dict) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(zoo_dir / f"{name}-small.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    m = module(name, "small", seed=0)
    assert not m.training
    for batch in (1, 3):
        feeds = example_inputs(name, "small", batch=batch, seed=batch)
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = m(*(torch.from_numpy(v) for v in feeds.values()))
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want) == len(ZOO[name].outputs)
        for g, w in zip(got, want, strict=True):
            assert g.shape[0] == batch
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CNNS)
def test_cnns_keep_batchnorm(name: str, built: dict[str, onnx.ModelProto]) -> None:
    assert any(n.op_type == "BatchNormalization" for n in built[name].graph.node)


def test_paddle_variant_spells_out_shapes(built: dict[str, onnx.ModelProto]) -> None:
    ops = {n.op_type for n in built["resnet18_paddle"].graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Constant"} <= ops
    assert "Flatten" not in ops and "Flatten" in {n.op_type for n in built["resnet18"].graph.node}


def test_family_signature_ops(built: dict[str, onnx.ModelProto]) -> None:
    def ops(name: str) -> set[str]:
        return {n.op_type for n in built[name].graph.node}

    assert {"HardSwish", "HardSigmoid"} <= ops("mobilenet_v3")
    assert {"Split", "Resize", "Concat", "MaxPool", "Softmax"} <= ops("yolov8n")
    assert {"LayerNormalization", "Erf", "MatMul", "Softmax"} <= ops("vit_tiny")
    assert {"Gather", "LayerNormalization", "Softmax"} <= ops("bert")
    assert {"LSTM", "GRU"} <= ops("lstm_gru")
    ids = next(i for i in built["bert"].graph.input if i.name == "input_ids")
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_build_caches_and_is_deterministic(tmp_path: Path, zoo_dir: Path, built: dict) -> None:
    first = build("resnet18", zoo_dir, "small")
    stamp = first.stat().st_mtime_ns
    assert build("resnet18", zoo_dir, "small") == first and first.stat().st_mtime_ns == stamp
    again = build("resnet18", tmp_path, "small", force=True)
    assert again.read_bytes() == first.read_bytes()
    other = build("resnet18", tmp_path / "seed1", "small", seed=1)
    assert other.read_bytes() != first.read_bytes()


def test_bad_names_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        build("no_such_model", tmp_path)
    with pytest.raises(ValueError):
        module("resnet18", "huge")
    with pytest.raises(ValueError):
        build("resnet18", tmp_path, opset=13)


def test_command_line_prints_table(zoo_dir: Path, built: dict, capsys) -> None:
    assert main(["--out", str(zoo_dir), "--size", "small", "--only", "resnet18,bert"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "family", "nodes"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == {"resnet18", "bert"}
    assert str(summarize(zoo_dir / "resnet18-small.onnx").nodes) in rows["resnet18"].split()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_matches_torch(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Realistic sizes (about 15 s of export for all of them): same checks, batch 2."""
    path = build(name, tmp_path_factory.getbasetemp() / "zoo-full", "full")
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = example_inputs(name, "full", batch=2)
    with torch.no_grad():
        want = module(name, "full")(*(torch.from_numpy(v) for v in feeds.values()))
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(sess.run(None, feeds), want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)
