"""Calibration: fitting, files in the cache folder, import of foreign files, the CLI commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeopt.ir import load_model
from edgeopt.targets import get_target
from edgeopt.targets.calibration import SCHEMA, find_calibration, import_calibration, read_calibration
from edgeopt.targets.calibration.store import CalibrationError, calibration_path, host_fingerprint
from edgeopt.targets.cost import CostModel
from tests.conftest import make_conv_bn_model, synthetic_samples


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


def _foreign_file(tmp_path: Path, target_name: str = "jetson-orin-nx-16gb", backend: str = "tensorrt") -> Path:
    target = get_target(target_name)
    samples = synthetic_samples(target, "conv", 0.05, 0.1, 1e-4)
    data = {"schema": SCHEMA, "target": target_name, "backend": backend, "fingerprint": "0123456789abcdef",
            "device_kind": "gpu", "method": "factors", "factors": {"conv/fp32": [0.05, 0.1, 1e-4]},
            "composition": {"run_overhead_s": 1e-4, "scale": 1.0, "per_kernel_s": 0.0},
            "samples": [s.to_dict() for s in samples], "threads": None}
    path = tmp_path / "orin.json"
    path.write_text(json.dumps(data))
    return path


def test_import_foreign_calibration_changes_predictions(tmp_path: Path, cache: Path) -> None:
    target = get_target("jetson-orin-nx")
    model = load_model_from(make_conv_bn_model(batch=1), tmp_path)
    before = CostModel(target).latency(model)
    saved = import_calibration(_foreign_file(tmp_path), target)
    assert saved == cache / "jetson-orin-nx-16gb-tensorrt-0123456789abcdef.json"
    cost = CostModel(target)
    assert cost.calibration is not None and cost.calibration.path == saved
    after = cost.latency(model)
    assert after > 2 * before  # the imported device is far slower than the datasheet defaults


def load_model_from(proto: onnx.ModelProto, folder: Path):
    path = folder / "m.onnx"
    onnx.save(proto, str(path))
    return load_model(path)


def test_import_rejects_bad_files(tmp_path: Path) -> None:
    target = get_target("jetson-orin-nx")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match=r"bad\.json: not valid JSON"):
        import_calibration(bad, target)
    bad.write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(CalibrationError, match="unsupported calibration schema 'other/9'"):
        import_calibration(bad, target)
    with pytest.raises(CalibrationError, match=r"is for target 'jetson-orin-nx-16gb', not 'nvidia-t4'"):
        import_calibration(_foreign_file(tmp_path), get_target("nvidia-t4"))
    data = json.loads(_foreign_file(tmp_path).read_text())
    data["factors"] = {"conv/fp32": [0.1, -1, 0]}
    bad.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"factors\['conv/fp32'\] must be three positive numbers"):
        import_calibration(bad, target)
    data["factors"] = {"recurrent/fp32/terms": [1e-11, 0.0, -1.0, 0.0, 0.0, 0.0]}
    bad.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"factors\['recurrent/fp32/terms'\] must be 6 non-negative"):
        import_calibration(bad, target)
    with pytest.raises(CalibrationError, match="no such calibration file"):
        import_calibration(tmp_path / "missing.json", target)


def test_calibrate_import_cli(tmp_path: Path, edgeopt_cli, cache: Path) -> None:
    env = {"EDGEOPT_CACHE_DIR": str(cache.parent)}
    ok = edgeopt_cli("calibrate", "--import", _foreign_file(tmp_path), "--target", "jetson-orin-nx", env=env)
    assert ok.code == 0, ok.stderr
    assert "imported calibration for jetson-orin-nx-16gb" in ok.stdout.replace("\n", "")
    (tmp_path / "bad.json").write_text("[]")
    bad = edgeopt_cli("calibrate", "--import", tmp_path / "bad.json", "--target", "jetson-orin-nx", env=env)
    assert bad.code == 2
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'bad.json'}: not an edgeopt calibration "
                                               "(expected a JSON object)"]


@pytest.fixture(scope="module")
def quick_calibration(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `edgeopt calibrate --quick` run shared by the tests below (about 30 s)."""
    from tests.conftest import run_edgeopt

    root = tmp_path_factory.mktemp("calibration-cache")
    result = run_edgeopt("calibrate", "--target", "host-cpu", "--quick", env={"EDGEOPT_CACHE_DIR": str(root)},
                         timeout=240)
    assert result.code == 0, result.stderr
    return root, result.stdout


def test_quick_calibration_round_trip(quick_calibration: tuple[Path, str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, stdout = quick_calibration
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(root))
    path = calibration_path("host-cpu", "onnxruntime", host_fingerprint())
    assert path.is_file() and host_fingerprint() in path.name
    assert str(path) in stdout.replace("\n", "")
    calibration = read_calibration(path)
    assert calibration.fingerprint == host_fingerprint() and calibration.threads == 2
    assert len(calibration.samples) >= 20 and calibration.method in ("factors", "ridge", "gbr")
    assert {s.kind for s in calibration.samples} >= {"conv", "depthwise", "gemm", "elementwise"}
    # The composition networks' kernels, profiled inside them, train the predictor too.
    in_model = [s for s in calibration.samples if s.label.startswith("in ")]
    assert len(in_model) == calibration.validation["in_model_samples"] > 10
    assert {s.kind for s in in_model} >= {"conv", "gemm"} and all(s.seconds > 0 for s in in_model)
    # --quick times three float networks and one quantized to int8, whose kernels train the int8 fit
    assert len(calibration.validation["composition_profiles"]) == 4
    assert any(s.precision == "int8" and s.kind == "conv" and s.label.startswith("in cnn-int8") for s in in_model)
    # The machine-speed probe, at the start and at the end, stored with the file.
    probes = calibration.validation["reference_probes_s"]
    assert len(probes) == 2 and all(p > 0 for p in probes)
    assert calibration.reference_s == pytest.approx(float(np.mean(probes)))
    assert find_calibration(get_target("host-cpu"), "onnxruntime").path == path
    model = load_model_from(make_conv_bn_model(batch=1), tmp_path)
    target = get_target("host-cpu")
    calibrated, default = CostModel(target).latency(model), CostModel(target, use_cache=False).latency(model)
    assert calibrated != pytest.approx(default, rel=1e-3)


def test_estimate_cli_table_and_compare(quick_calibration: tuple[Path, str], conv_bn_path: Path,
                                        edgeopt_cli) -> None:
    root, _ = quick_calibration
    result = edgeopt_cli("estimate", conv_bn_path, "--target", "host-cpu", "--compare",
                         env={"EDGEOPT_CACHE_DIR": str(root)})
    assert result.code == 0, result.stderr
    out = result.stdout.replace("\n", "")  # rich wraps the long cache path
    assert "Conv+BatchNormalization+Identity+Relu" in out and ("compute" in out or "memory" in out)
    assert "dead_mul" not in out  # dead code is no kernel
    assert "peak activations" in out and "calibrated (" in out
    assert "measured" in out and "vs predicted" in out
    # The calibration's reference networks are timed again: the machine's drift is shown apart.
    drift = re.search(r"reference networks run x(\d+\.\d+)", out)
    assert drift and 0.3 < float(drift.group(1)) < 3.0 and "error at that speed" in out
    int8 = edgeopt_cli("estimate", conv_bn_path, "--target", "jetson-orin-nx", "--precision", "int8")
    assert int8.code == 0, int8.stderr
    assert "int8" in int8.stdout and "uncalibrated defaults" in int8.stdout and "mJ" in int8.stdout
    bad = edgeopt_cli("estimate", conv_bn_path, "--precision", "int3")
    assert bad.code == 2 and "--precision 'int3': unknown" in bad.stderr
    remote = edgeopt_cli("estimate", conv_bn_path, "--target", "jetson-orin-nx", "--compare")
    assert remote.code == 2 and "not this machine" in remote.stderr


def test_gpu_calibration_without_a_gpu_is_one_line(edgeopt_cli) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is available here")
    result = edgeopt_cli("calibrate", "--target", "nvidia-t4", "--quick")
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no TensorrtExecutionProvider here" in lines[0]


def test_cpu_clock_times_one_thread_cpu_and_round_trips(tmp_path: Path) -> None:
    from edgeopt.ir.errors import UserError
    from edgeopt.targets.calibration import bench
    from edgeopt.targets.calibration.runners import make_runner

    runner = make_runner("onnxruntime", "cpu", threads=2, budget_s=0.02, clock="cpu")
    assert runner.threads == 1  # process CPU time is the latency only for a one-thread run
    proto, feeds = bench.build(bench.Spec("gemm", {"m": 64, "k": 256, "n": 256}))
    whole, kernel = runner.time(proto, feeds), runner.kernel_time(proto, feeds)
    assert 0 < kernel <= whole * 1.5 and whole < 0.05
    with pytest.raises(UserError, match="clock 'gpu': expected one of wall, cpu"):
        make_runner("onnxruntime", "cpu", clock="gpu")
    data = json.loads(_foreign_file(tmp_path).read_text())
    data["clock"] = "cpu"
    (tmp_path / "cpu.json").write_text(json.dumps(data))
    assert read_calibration(tmp_path / "cpu.json").clock == "cpu"
    data["clock"] = "sundial"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="unknown clock 'sundial'"):
        read_calibration(tmp_path / "bad.json")


def test_fitted_regressor_is_stored_and_reused(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second CostModel (a new `edgeopt compile`) loads the stored fit; a changed file or sklearn refits."""
    import sklearn

    from edgeopt.targets.calibration import fit, store

    target = get_target("jetson-orin-nx")
    data = json.loads(_foreign_file(tmp_path).read_text())
    data["method"] = "gbr"  # the regressor whose fit every compile used to repeat
    source = tmp_path / "gbr.json"
    source.write_text(json.dumps(data))
    import_calibration(source, target)
    fits: list[str] = []
    real_fit = fit.fit_predictor

    def counting_fit(*args, **kwargs):
        fits.append(args[3])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fit, "fit_predictor", counting_fit)
    model = load_model_from(make_conv_bn_model(batch=1), tmp_path)
    cost = CostModel(target)
    assert fits == []  # constructing fits nothing: latency is not asked yet
    first = cost.latency(model)
    assert fits == ["gbr"]
    stored = cache / "fitted" / "jetson-orin-nx-16gb-tensorrt-0123456789abcdef.pkl"
    assert stored.is_file()
    store._MEMORY.clear()  # as in a new process
    assert CostModel(target).latency(model) == first
    assert fits == ["gbr"]  # loaded from the stored fit, not refitted
    # Another calibration content (a recalibration) or another scikit-learn: refit and rewrite.
    saved = json.loads(next(cache.glob("*.json")).read_text())
    saved["samples"][0]["seconds"] *= 1.5
    next(cache.glob("*.json")).write_text(json.dumps(saved))
    store._MEMORY.clear()
    CostModel(target).latency(model)
    assert fits == ["gbr", "gbr"]
    store._MEMORY.clear()
    monkeypatch.setattr(sklearn, "__version__", "0.0-other")
    CostModel(target).latency(model)
    assert fits == ["gbr", "gbr", "gbr"]
    store._MEMORY.clear()
    stored.write_bytes(b"truncated")  # a damaged fit file is refitted, not an error
    CostModel(target).latency(model)
    assert len(fits) == 4
