"""fuse-ort: transformer blocks become ONNX Runtime contrib ops for the onnxruntime backend only.

The zoo's small ViT and BERT go through the onnxruntime default pipeline (contrib-op counts,
outputs against the original at two batch sizes, dynamic dims kept, file not larger); every
other backend's pipeline keeps the standard ops; a compile for host-cpu emits the contrib ops,
one for OpenVINO does not; an emitter that meets contrib ops says what they are.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from edgeopt.driver import DEFAULT_PIPELINE, ONNXRUNTIME_PIPELINE, CompileRequest, compile_model, default_pipeline
from edgeopt.ir import PipelineError, ReferenceExecutor, UserError, compare_outputs, load_model, save_model
from edgeopt.passes import PassContext, PassManager, PipelineResult, instantiate, parse_pipeline
from edgeopt.targets import get_emitter
from tests.conftest import assert_zoo_outputs_match

zoo = pytest.importorskip("tools.zoo")

CONTRIB = "com.microsoft"
# Per zoo model (small: 2 layers): contrib ops the onnxruntime pipeline must make, and standard ops
# the fusions must leave none of. BERT's attention has a mask: onnxscript's MultiHeadAttention
# rule broadcasts it with a Shape of the query, which keeps the bias Adds out of a packed Attention.
EXPECTED = {
    "vit_tiny": ({"Attention": 2, "BiasGelu": 2}, {"Softmax", "Erf", "Div"}),
    "bert": ({"MultiHeadAttention": 2, "BiasGelu": 2}, {"Softmax", "Erf"}),
}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-fuse-ort")


def run_pipeline(path: Path, pipeline: str, backend: str | None) -> PipelineResult:
    ctx = PassContext(backend=backend)
    return PassManager(instantiate(parse_pipeline(pipeline), ctx), [], ctx).run(load_model(path))


def contrib_ops(model) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.all_nodes() if node.domain == CONTRIB)


def dynamic_dims(values) -> list[list[int]]:
    return [[i for i, dim in enumerate(value.shape) if not isinstance(dim, int)] for value in values]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_transformer_through_the_onnxruntime_pipeline(name: str, zoo_dir: Path, tmp_path: Path) -> None:
    path = zoo.build(name, zoo_dir, size="small")
    original = load_model(path)
    result = run_pipeline(path, default_pipeline("onnxruntime"), "onnxruntime")
    optimized = result.model
    wanted, gone = EXPECTED[name]
    assert contrib_ops(optimized) == wanted
    assert {r.name: r.counts for r in result.records}["fuse-ort"] == wanted  # counts per fused op kind
    assert not gone & {node.op_type for node in optimized.graph.all_nodes()}
    standard = run_pipeline(path, DEFAULT_PIPELINE, None).model
    assert len(optimized.graph) < 0.6 * len(standard.graph)

    assert_zoo_outputs_match(name, original, optimized)
    # The batch (and BERT's sequence) dims stay symbolic on every input and output.
    for before, after in ((original.graph.inputs, optimized.graph.inputs),
                          (original.graph.outputs, optimized.graph.outputs)):
        assert dynamic_dims(after) == dynamic_dims(before) and all(dynamic_dims(before))
    saved = tmp_path / "fused.onnx"
    save_model(optimized, saved)
    assert saved.stat().st_size <= path.stat().st_size


@pytest.mark.parametrize("backend", [None, "openvino", "tvm", "tensorrt"])
def test_other_backends_never_get_contrib_ops(backend: str | None, zoo_dir: Path) -> None:
    path = zoo.build("vit_tiny", zoo_dir, size="small")
    assert default_pipeline(backend) == DEFAULT_PIPELINE
    # Even a pipeline that names fuse-ort leaves the model standard for another backend.
    result = run_pipeline(path, f"{DEFAULT_PIPELINE},fuse-ort", backend)
    assert not contrib_ops(result.model)
    record = result.records[-1]
    assert record.name == "fuse-ort" and not record.modified
    assert record.notes == [f"skipped: backend is {backend or 'not chosen yet'};"
                            " contrib ops run only in ONNX Runtime"]


def test_cnn_is_left_alone_and_unknown_stages_are_named(zoo_dir: Path) -> None:
    path = zoo.build("resnet18", zoo_dir, size="small")
    result = run_pipeline(path, "fuse-ort", "onnxruntime")
    assert not result.records[0].modified and not contrib_ops(result.model)
    with pytest.raises(PipelineError, match=r"^pass 'fuse-ort': unknown stage\(s\) atention in disable"):
        run_pipeline(path, "fuse-ort{disable=[atention]}", "onnxruntime")


def test_disabled_stage_is_not_fused(zoo_dir: Path) -> None:
    path = zoo.build("vit_tiny", zoo_dir, size="small")
    result = run_pipeline(path, "cleanup,fuse,fuse-ort{disable=[attention]}", "onnxruntime")
    # Without the attention stage, Q.K^T / sqrt(d) is left to the fused-matmul stage; naming the
    # stages to skip replaces the default list, so skip-layer-norm runs here.
    assert contrib_ops(result.model) == {"SkipLayerNormalization": 4, "BiasGelu": 2, "FusedMatMul": 2}
    executor = ReferenceExecutor()
    feeds = zoo.example_inputs("vit_tiny", "small", batch=2, seed=0)
    comparison = compare_outputs(executor.run(load_model(path), feeds), executor.run(result.model, feeds),
                                 atol=1e-5, rtol=1e-5)
    assert comparison.ok and comparison.max_rel < 1e-5, comparison.worst()


def test_compile_emits_contrib_ops_for_onnxruntime_only(zoo_dir: Path, tmp_path: Path) -> None:
    path = zoo.build("vit_tiny", zoo_dir, size="small")
    ort = compile_model(CompileRequest(model=path, target="host-cpu", out=tmp_path / "ort", measure=False))
    assert ort.pipeline.pipeline == ONNXRUNTIME_PIPELINE
    assert contrib_ops(load_model(tmp_path / "ort" / "model.onnx"))["Attention"] == 2
    assert ort.manifest and ort.report
    openvino = compile_model(CompileRequest(model=path, target="host-cpu", backend="openvino",
                                            out=tmp_path / "ov", measure=False))
    assert openvino.pipeline.pipeline == DEFAULT_PIPELINE
    assert not contrib_ops(openvino.pipeline.model)


def test_emitters_name_contrib_ops_up_front(zoo_dir: Path) -> None:
    path = zoo.build("vit_tiny", zoo_dir, size="small")
    fused = run_pipeline(path, ONNXRUNTIME_PIPELINE, "onnxruntime").model
    assert get_emitter("onnxruntime").unsupported_ops(fused) == []
    with pytest.raises(UserError, match=r"^backend 'tensorrt' cannot run op\(s\) com\.microsoft::Attention, "
                                        r".*only --backend onnxruntime runs them$"):
        get_emitter("tensorrt").check(fused)


def test_the_fused_file_loads_in_onnx(zoo_dir: Path, tmp_path: Path) -> None:
    path = zoo.build("bert", zoo_dir, size="small")
    saved = tmp_path / "bert.onnx"
    save_model(run_pipeline(path, ONNXRUNTIME_PIPELINE, "onnxruntime").model, saved)
    proto = onnx.load(str(saved))
    assert {o.domain: o.version for o in proto.opset_import}.get(CONTRIB) == 1
    onnx.checker.check_model(proto)  # standard ops checked; contrib ops pass as a known domain


@pytest.mark.parametrize("picked", ["onnxruntime", "openvino"])
def test_backend_auto_fuses_only_once_onnxruntime_is_picked(picked: str, zoo_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeopt.driver

    seen: list[Counter[str]] = []

    def choose(target, model, *_args):  # stands in for the TVM-against-ORT measurement
        seen.append(contrib_ops(model))
        return picked, [f"auto: picked {picked} (test)"]

    monkeypatch.setattr(edgeopt.driver, "choose_backend", choose)
    path = zoo.build("vit_tiny", zoo_dir, size="small")
    result = compile_model(CompileRequest(model=path, target="host-cpu", backend="auto", out=tmp_path / "auto",
                                          measure=False))
    assert seen == [Counter()]  # the candidates were measured on standard ops
    fused = contrib_ops(result.pipeline.model)
    if picked == "onnxruntime":
        assert result.pipeline.pipeline == f"{DEFAULT_PIPELINE},fuse-ort,cleanup" and fused["Attention"] == 2
    else:
        assert result.pipeline.pipeline == DEFAULT_PIPELINE and not fused
