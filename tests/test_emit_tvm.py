"""TVM emitter: Relax import after cleanup, build, Relax VM run against the reference, tuning records."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.ir.errors import UserError
from edgeopt.ir.model_io import load_model
from edgeopt.ir.reference import ReferenceExecutor
from edgeopt.targets import get_emitter
from edgeopt.targets.host import read_host
from tests.conftest import run_edgeopt
from tools.zoo import build

pytest.importorskip("tvm")

from edgeopt.targets.emitters import tvm_tuning


@pytest.fixture(scope="module")
def paddle_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The Paddle-style export computes Reshape targets at run time: it imports only after cleanup.
    return build("resnet18_paddle", tmp_path_factory.mktemp("zoo"), size="small")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def emit_and_validate(path: Path, folder: Path, options: dict | None = None):
    model = load_model(path)
    executor = ReferenceExecutor()
    inputs = executor.generate_inputs(model)
    reference = executor.run(model, inputs)
    emitter = get_emitter("tvm")
    emitter.check(model)
    result = emitter.emit(model, folder, options or {})
    emitter.validate(result, inputs, reference, measure=True)
    return result


def matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_tvm_build_runs_in_relax_vm_and_matches_reference(paddle_resnet: Path, tmp_path: Path) -> None:
    result = emit_and_validate(paddle_resnet, tmp_path)
    assert result.artifact == tmp_path / "model.so"
    assert result.artifact.read_bytes()[:4] == b"\x7fELF"
    assert result.validation["ok"] and result.validation["max_abs"] <= 1e-4
    assert result.latency_ms > 0 and result.validation["onnxruntime_latency_ms"] > 0
    config = json.loads((tmp_path / "tvm_config.json").read_text())
    assert config["target"]["kind"] == "llvm" and config["target"]["mcpu"] != "native"
    assert config["input_shapes"] == {"images": [1, 3, 32, 32]}
    # TVM's pool defaults to half the logical CPUs on x86: one thread on a 2-core VM without SMT.
    import tvm

    cores = read_host().physical_cores
    assert config["threads"] == cores and config["environment"]["TVM_NUM_THREADS"] == str(cores)
    assert tvm.runtime.num_threads() == int(os.environ.get("TVM_NUM_THREADS", cores))


def test_exported_library_loads_and_runs(paddle_resnet: Path, tmp_path: Path) -> None:
    import tvm
    from tvm import relax

    emit_and_validate(paddle_resnet, tmp_path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "model.so")), tvm.cpu())
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(image)).numpy()
    expected = ReferenceExecutor().run(load_model(paddle_resnet), {"images": image})
    np.testing.assert_allclose(out, next(iter(expected.values())), atol=1e-4, rtol=1e-3)


@pytest.mark.slow  # MetaSchedule tuning: minutes on 2 cores
def test_tuning_records_are_kept_and_reused(tmp_path: Path, private_cache: Path) -> None:
    path = tmp_path / "mm.onnx"
    onnx.save(matmul_model(), str(path))
    first = emit_and_validate(path, tmp_path / "a", {"trials": 8, "trials_per_task": 8})
    assert any("tuned 8 MetaSchedule trials" in note for note in first.notes), first.notes
    records = list(private_cache.glob("tvm/*/*/database_tuning_record.json"))
    assert len(records) == 1 and records[0].stat().st_size > 0
    assert json.loads((records[0].parent / "edgeopt_tuning.json").read_text())["trials"] == 8
    second = emit_and_validate(path, tmp_path / "b", {"trials": 8})
    assert any("reused 8 tuning trials" in note for note in second.notes), second.notes
    assert second.validation["ok"]


def loop_model() -> onnx.ModelProto:
    """y = x doubled three times by a Loop: control flow TVM's Relax frontend cannot import."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc", "acc"], ["next"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)], "loop_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_loop_model_gets_one_line_error_naming_the_op(tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(), str(path))
    for backend in ("tvm", "openvino"):
        with pytest.raises(UserError, match=rf"backend '{backend}' cannot run op\(s\) Loop;"):
            get_emitter(backend).check(load_model(path))


def test_target_strings_become_tvm_target_dicts() -> None:
    spec = tvm_tuning.parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod")
    assert spec == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                    "mattr": ["+neon", "+dotprod"]}
    gpu = tvm_tuning.parse_target("cuda -arch=sm_87", host="llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a78")
    assert gpu["arch"] == "sm_87" and gpu["host"]["mcpu"] == "cortex-a78"
    assert not tvm_tuning.runs_here(spec)
    native = tvm_tuning.parse_target("llvm -mcpu=native")
    assert tvm_tuning.runs_here(native) and native["num-cores"] == read_host().physical_cores
    with pytest.raises(UserError, match="bad target option 'mcpu'"):
        tvm_tuning.parse_target("llvm mcpu")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="optional cross compiler: apt-get install gcc-aarch64-linux-gnu")
def test_raspberry_pi_cross_build_links_an_aarch64_library(paddle_resnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_edgeopt("compile", paddle_resnet, "--target", "raspberry-pi-5", "--backend", "tvm", "-o", out)
    assert result.code == 0, result.stderr
    header = (out / "model.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["ok"]  # a build for this CPU of the same module was run
    assert any("validated a build of the same module" in note for note in report["emitter_notes"])


def test_cli_backend_tvm_on_host(paddle_resnet: Path, tmp_path: Path) -> None:
    result = run_edgeopt("compile", paddle_resnet, "--backend", "tvm", "-o", tmp_path / "out",
                         env={"EDGEOPT_CACHE_DIR": str(tmp_path / "cache")})
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["backend"] == "tvm" and report["validation"]["max_abs"] <= 1e-4
    assert report["validation"]["onnxruntime_latency_ms"] > 0


def test_resnet50_downsample_convs_build_in_seconds(tmp_path: Path) -> None:
    # Its 1x1 stride-2 convs on 2x2 maps are GEMV-shaped; DLight's CPU GEMV schedule for them
    # stalled LLVM for over 11 minutes. The subprocess timeout turns a stall into a failure.
    model = build("resnet50", tmp_path / "zoo", size="small")
    result = run_edgeopt("compile", model, "--backend", "tvm", "--passes", "cleanup", "--no-measure",
                         "-o", tmp_path / "out", env={"EDGEOPT_CACHE_DIR": str(tmp_path / "cache")}, timeout=180)
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validation"]["max_abs"] <= 1e-4


def test_cli_backend_auto_picks_the_faster_measured_backend(paddle_resnet: Path, tmp_path: Path) -> None:
    result = run_edgeopt("compile", paddle_resnet, "--backend", "auto", "-o", tmp_path / "out",
                         env={"EDGEOPT_CACHE_DIR": str(tmp_path / "cache")})
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    picked = next(note for note in report["emitter_notes"] if note.startswith("auto: picked"))
    assert picked.startswith(f"auto: picked {report['backend']}")
    times = dict(part.rsplit(" ", 2)[:2] for part in picked.split("(")[1].rstrip(")").split(", "))
    faster = min(times, key=lambda name: float(times[name]))
    assert report["backend"] == faster


def test_cli_loop_model_exits_2_naming_the_op(tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(), str(path))
    result = run_edgeopt("compile", path, "--backend", "tvm", "-o", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: backend 'tvm' cannot run op(s) Loop; choose another --backend or a pipeline that removes them"]
    assert not (tmp_path / "out").exists()


def test_dims_option_binds_symbolic_dims(tmp_path: Path) -> None:
    path = build("bert", tmp_path / "zoo", size="small")
    model = load_model(path)
    executor = ReferenceExecutor()
    inputs = executor.generate_inputs(model, {"sequence": 16})
    reference = executor.run(model, inputs)
    emitter = get_emitter("tvm")
    result = emitter.emit(model, tmp_path / "out", {"dims": "sequence=16"})
    emitter.validate(result, inputs, reference, measure=False)
    assert result.validation["ok"] and result.validation["max_abs"] <= 1e-4
    config = json.loads((tmp_path / "out" / "tvm_config.json").read_text())
    assert config["input_shapes"] == {"input_ids": [1, 16], "attention_mask": [1, 16]}
    with pytest.raises(UserError, match="dims names unknown dim"):
        get_emitter("tvm").emit(model, tmp_path / "bad", {"dims": "height=4"})


def test_cpu_preparation_marks_weights_layout_free(paddle_resnet: Path) -> None:
    # Tuned CPU schedules may then keep conv weights packed (MetaSchedule's RewriteLayout).
    import tvm

    from edgeopt.targets.emitters.tvm import _import, _prepare

    model = onnx.load(str(paddle_resnet))
    mod = _import(model.SerializeToString(), {"images": [1, 3, 32, 32]})
    prepared = _prepare(mod, tvm.target.Target(tvm_tuning.parse_target("llvm -mcpu=native")))
    convs = [func for var, func in prepared.functions.items() if "conv2d" in var.name_hint]
    assert convs and all(func.attrs and "layout_free_buffers" in func.attrs for func in convs)


def test_cpu_convs_are_scheduled_in_nhwc_unless_asked_for_nchw(paddle_resnet: Path, tmp_path: Path) -> None:
    import tvm

    from edgeopt.targets.emitters.tvm import _import, _prepare

    mod = _import(onnx.load(str(paddle_resnet)).SerializeToString(), {"images": [1, 3, 32, 32]})
    target = tvm.target.Target(tvm_tuning.parse_target("llvm -mcpu=native"))

    def conv_buffers(layout: str) -> set[tuple[int, ...]]:
        prepared = _prepare(mod, target, layout)
        text = "".join(func.script() for var, func in prepared.functions.items() if "conv2d" in var.name_hint)
        return {tuple(int(d) for d in re.findall(r"T\.int64\((\d+)\)", shape))
                for shape in re.findall(r"T\.Buffer\(\(((?:T\.int64\(\d+\),? ?)+)\)", text)}

    nhwc, nchw = conv_buffers("nhwc"), conv_buffers("nchw")
    assert (1, 32, 32, 3) in nhwc and (1, 3, 32, 32) not in nhwc  # the stem's input, channels innermost
    assert (1, 3, 32, 32) in nchw and (1, 32, 32, 3) not in nchw
    # Both layouts validate, and their tuning records are kept apart.
    folders = set()
    for layout in ("nhwc", "nchw"):
        result = emit_and_validate(paddle_resnet, tmp_path / layout, {"layout": layout})
        assert result.validation["max_abs"] <= 1e-4
        folders.add(json.loads((tmp_path / layout / "tvm_config.json").read_text())["tuning"]["database"])
    assert len(folders) == 2
    with pytest.raises(UserError, match="layout 'nchw16c': expected one of nhwc, nchw"):
        get_emitter("tvm").emit(load_model(paddle_resnet), tmp_path / "bad", {"layout": "nchw16c"})


def test_nhwc_mobilenet_keeps_relu6_in_layout(tmp_path: Path) -> None:
    # Clip is a call_tir from the frontend; left so, ConvertLayout put two transposes around every ReLU6.
    import tvm

    from edgeopt.targets.emitters.tvm import _import, _prepare

    path = build("mobilenet_v2", tmp_path / "zoo", size="small")
    model = onnx.load(str(path))
    shape = [1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]
    prepared = _prepare(_import(model.SerializeToString(), {model.graph.input[0].name: shape}),
                        tvm.target.Target(tvm_tuning.parse_target("llvm -mcpu=native")))
    transposes = [var.name_hint for var in prepared.functions if "transpose" in var.name_hint]
    assert len(transposes) <= 2, transposes  # the model's input and its flattened output only
    result = emit_and_validate(path, tmp_path / "out")
    assert result.validation["max_abs"] <= 1e-4


def two_matmul_model() -> onnx.ModelProto:
    """x @ w_big (64x256x256) then @ w_small (64x256x8): the first has 32x the FLOPs of the second."""
    rng = np.random.default_rng(1)
    big = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "big")
    small = numpy_helper.from_array(rng.standard_normal((256, 8)).astype(np.float32), "small")
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]), helper.make_node("MatMul", ["h", "small"], ["y"])]
    graph = helper.make_graph(nodes, "mm2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 8])], [big, small])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow  # three MetaSchedule batches: minutes on 2 cores
def test_tuning_gives_trials_where_the_time_is_and_commits_each_batch(tmp_path: Path, private_cache: Path) -> None:
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from edgeopt.targets.emitters.tvm import _import, _prepare

    target = tvm.target.Target(tvm_tuning.parse_target("llvm -mcpu=native"))
    prepared = _prepare(_import(two_matmul_model().SerializeToString(), {"x": [64, 256]}), target)
    first = tvm_tuning.FIRST_BATCH
    spent, _, tasks = tvm_tuning.tune(prepared, target, tmp_path / "db", 2 * first + 16, 64)
    assert (spent, tasks) == (2 * first + 16, 2)
    database = ms.database.JSONDatabase(work_dir=str(tmp_path / "db"))
    # Every measured candidate is a record: the task with 32x the FLOPs got the batch after the first round.
    counts = {estimate_tir_flops(task.dispatched[0]): len(database.get_top_k(
        database.commit_workload(task.dispatched[0]), 1000)) for task in ms.relax_integration.extract_tasks(
        prepared, target)}
    assert [counts[flops] for flops in sorted(counts)] == [first, first + 16], counts
    # A time limit stops new batches: the first (the bigger task's) still runs and is kept.
    spent, _, _ = tvm_tuning.tune(prepared, target, tmp_path / "db2", 1000, 64, seconds=1e-6)
    assert spent == first
