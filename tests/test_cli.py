"""The command line: compile's output folder, inspect/passes/targets, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from edgeopt.ir import ReferenceExecutor, load_model
from tests.conftest import make_conv_bn_model, run_edgeopt


def test_compile_writes_model_manifest_and_report(tmp_path: Path, example_model: Path) -> None:
    out = tmp_path / "compiled"
    result = run_edgeopt("compile", example_model, "--target", "host-cpu", "-o", out)
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "report.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert set(manifest["files"]) == {"model.onnx", "report.json"}
    assert manifest["target"] == "host-cpu" and manifest["framework"] == "onnxruntime"
    assert manifest["precision"] == "fp32" and manifest["model_name"] == "tiny_cnn"
    assert manifest["inputs"] == [{"name": "image", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
    metrics = manifest["metrics"]
    assert metrics["nodes_after"] < metrics["nodes_before"] and metrics["max_abs_error"] < 1e-4
    assert metrics["latency_ms"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "cleanup,fuse,fuse-ort,cleanup"  # host-cpu defaults to onnxruntime
    fuse = next(r for r in report["passes"] if r["name"] == "fuse")
    assert fuse["counts"] == {"conv-bn": 4}
    # The table is printed, and the written model agrees with the original.
    assert "fuse" in result.stdout and "conv-bn" in result.stdout
    assert "[INFO]" not in result.stdout + result.stderr  # no library log noise in our output
    original, optimized = load_model(example_model), load_model(out / "model.onnx")
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(original, bindings={"batch": 3})
    ref, got = executor.run(original, feeds), executor.run(optimized, feeds)
    assert abs(ref["logits"] - got["logits"]).max() < 1e-4
    assert [n.op_type for n in optimized.graph].count("BatchNormalization") == 0


def test_compile_replaces_an_existing_folder(tmp_path: Path, example_model: Path) -> None:
    out = tmp_path / "compiled"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert run_edgeopt("compile", example_model, "-o", out, "--no-measure").code == 0
    assert not (out / "stale.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["compiled"]  # no staging folder left


def test_inspect_prints_ops_params_flops(example_model: Path) -> None:
    result = run_edgeopt("inspect", example_model)
    assert result.code == 0, result.stderr
    assert "opset 17" in result.stdout and "BatchNormalization" in result.stdout
    assert "float[batch,3,32,32]" in result.stdout and "FLOPs" in result.stdout


def test_passes_and_targets_list(tmp_path: Path) -> None:
    passes = run_edgeopt("passes")
    assert passes.code == 0 and "fuse-conv-bn" in passes.stdout and "max_iterations" in passes.stdout
    targets = run_edgeopt("targets")
    assert targets.code == 0 and "host-cpu" in targets.stdout and "jetson-orin-nx" in targets.stdout


def test_help_teaches() -> None:
    result = run_edgeopt("compile", "--help")
    assert result.code == 0
    for words in ("--target", "--passes", "--verify", "--plugin", "cleanup,fuse-conv-bn"):
        assert words in result.stdout


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "cut.onnx"
    data = make_conv_bn_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    return path


def _saved(tmp_path: Path, name: str, opset: int = 17, break_graph: bool = False) -> Path:
    proto = make_conv_bn_model(opset=opset)
    if break_graph:
        proto.graph.node[3].input[0] = "missing_value"
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


BAD_INPUTS = {
    "missing file": (lambda t: [t / "absent.onnx"], "absent.onnx: no such file"),
    "not onnx": (lambda t: [(t / "readme.onnx", (t / "readme.onnx").write_text("hello\n" * 20))[0]],
                 "readme.onnx"),
    "truncated protobuf": (lambda t: [_truncated(t)], "cut.onnx: not a valid ONNX protobuf"),
    "unsupported opset": (lambda t: [_saved(t, "old.onnx", opset=6)], "old.onnx: opset 6 is not supported"),
    "invalid graph": (lambda t: [_saved(t, "bad.onnx", break_graph=True)], "bad.onnx: invalid ONNX graph"),
    "unknown pass": (lambda t: [_saved(t, "m.onnx"), "--passes", "cleanup,fuse-everything"],
                     "unknown pass 'fuse-everything'"),
    "unknown option": (lambda t: [_saved(t, "m.onnx"), "--passes", "cleanup{iterations=3}"],
                       "pass 'cleanup': unknown option 'iterations'"),
    "bad option value": (lambda t: [_saved(t, "m.onnx"), "--passes", "cleanup{max_iterations=lots}"],
                         "option 'max_iterations=lots': expected an integer"),
    "unknown target": (lambda t: [_saved(t, "m.onnx"), "--target", "jetson-orin-nz"],
                       "jetson-orin-nz"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_no_output(tmp_path: Path, case: str) -> None:
    make_args, expected = BAD_INPUTS[case]
    args = make_args(tmp_path)
    out = tmp_path / "out"
    result = run_edgeopt("compile", *args, "-o", out)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_edgeopt("--debug", "compile", tmp_path / "absent.onnx")
    assert result.code != 0 and "Traceback" in result.stderr


def test_failing_pass_reports_its_reproducer(tmp_path: Path, example_model: Path) -> None:
    plugin = tmp_path / "crash.py"
    plugin.write_text(
        "from edgeopt.passes import Pass, register_pass\n"
        "@register_pass('crash-on-gemm')\n"
        "class Crash(Pass):\n"
        "    '''Raises on the first Gemm.'''\n"
        "    def run(self, model, ctx):\n"
        "        raise ValueError('cannot handle Gemm')\n")
    out = tmp_path / "out"
    result = run_edgeopt("compile", example_model, "--plugin", plugin, "-o", out, "--passes",
                         "cleanup,crash-on-gemm", "--reproducers", tmp_path / "repro")
    assert result.code == 3
    assert "pass 'crash-on-gemm' failed: ValueError: cannot handle Gemm" in result.stderr
    assert f"reproducer written to {tmp_path / 'repro' / 'crash-on-gemm-0'}" in result.stderr
    assert (tmp_path / "repro" / "crash-on-gemm-0" / "model.onnx").is_file()
    assert "Traceback" not in result.stderr and not out.exists()


def test_quantizing_on_generated_data_warns_on_the_terminal(tmp_path: Path, example_model: Path) -> None:
    out = tmp_path / "q"
    result = run_edgeopt("compile", example_model, "-o", out, "--no-measure",
                         "--passes", "cleanup,fuse,quantize{precision=int8,samples=8},cleanup")
    assert result.code == 0, result.stderr
    assert "warning (quantize{samples=8}): no calibration data given" in " ".join(result.stderr.split())
    report = json.loads((out / "report.json").read_text())
    quantize = next(r for r in report["passes"] if r["name"] == "quantize")
    assert any(note.startswith("WARNING") for note in quantize["notes"])
