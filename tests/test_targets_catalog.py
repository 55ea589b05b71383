"""Hardware targets as data: every built-in file loads and cites its figures, bad files give
one-line errors naming file and key, host-cpu is read from this machine (and from fake
/proc and /sys trees for an Arm board and an AVX-512 server), user files and plugins work."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from edgeopt.ir.errors import TargetError
from edgeopt.targets.catalog import (
    DEVICES_DIR,
    Target,
    builtin_targets,
    get_target,
    list_targets,
    load_target_file,
    register_target,
    unregister_target,
)
from edgeopt.targets.host import detect_host_cpu, fingerprint, read_host

REQUIRED = [
    "jetson-orin-nano", "jetson-orin-nx", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb",
    "jetson-agx-orin", "nvidia-t4", "nvidia-l4", "nvidia-h100", "host-cpu", "raspberry-pi-5",
    "intel-core-ultra", "apple-m4", "apple-a17-pro", "snapdragon-8-gen-3", "coral-edge-tpu",
]
FILES = sorted(DEVICES_DIR.glob("*.toml"))
T, G = 1e12, 1e9

VALID = """\
name = "my-board"
description = "A test board"
vendor = "Acme"
kind = "npu"
default_backend = "tflite"
backends = ["tflite", "onnxruntime"]
precisions = ["int8"]
power_w = 3

[compute]
int8 = 8.0
int8_sparse = 16.0

[memory]
bandwidth_gbps = 12.8

[backend_options.tflite]
delegate = "acme"

[sources]
"compute.int8" = "derived: sparse / 2"
"compute.int8_sparse" = "Acme data sheet"
"memory.bandwidth_gbps" = "Acme data sheet"
power_w = "Acme data sheet"
"""


def _write(tmp_path: Path, text: str, name: str = "my-board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_builtin_file_loads_and_cites_every_figure(path: Path) -> None:
    target = load_target_file(path)
    assert target.name == path.stem
    assert target.default_backend in target.backends
    for key, value in target.figures():
        assert value > 0
        assert target.sources[key].strip(), key
    for key, text in target.sources.items():  # derived figures show their working
        if text.startswith("derived"):
            assert re.search(r"( x | / | - | \+ |=)", text), f"{path.name}: {key} gives no formula"


def test_required_targets_exist_and_resolve() -> None:
    table = builtin_targets()
    for name in REQUIRED:
        assert name in table, name
        assert get_target(name) is table[name]
    assert get_target("jetson-orin-nx").name == "jetson-orin-nx-16gb"
    assert get_target("jetson-orin-nx-8gb").memory["size_gb"] == 8
    names = [t.name for t in list_targets()]
    assert names == sorted(set(names)) and len(names) == len(FILES)


@pytest.mark.parametrize(
    ("name", "precision", "sparse", "expected"),
    [
        ("jetson-orin-nano", "int8", True, 40 * T),
        ("jetson-orin-nx-8gb", "int8", True, 70 * T),
        ("jetson-orin-nx-16gb", "int8", True, 100 * T),
        ("jetson-orin-nx-16gb", "int8", False, 50 * T),
        ("jetson-agx-orin", "int8", True, 275 * T),
        ("nvidia-t4", "fp32", False, 8.1 * T),
        ("nvidia-t4", "int8", True, 130 * T),  # Turing has no sparsity: falls back to dense
        ("nvidia-l4", "int8", True, 485 * T),
        ("nvidia-l4", "fp16", False, 121 * T),
        ("nvidia-h100", "fp16", False, 989.5 * T),
        ("nvidia-h100", "int8", False, 1979 * T),
        ("raspberry-pi-5", "fp32", False, 153.6 * G),
        ("intel-core-ultra", "int8", False, 11 * T),
        ("apple-m4", "int8", False, 38 * T),
        ("apple-a17-pro", "int8", False, 35 * T),
        ("snapdragon-8-gen-3", "int8", False, 45 * T),
        ("coral-edge-tpu", "int8", False, 4 * T),
    ],
)
def test_published_peaks(name: str, precision: str, sparse: bool, expected: float) -> None:
    assert get_target(name).peak(precision, sparse=sparse) == pytest.approx(expected)


def test_peaks_and_bandwidth_are_in_sane_ranges() -> None:
    for target in list_targets():
        assert target.bandwidth is not None and 1e8 <= target.bandwidth <= 1e13, target.name
        for key in target.compute:
            assert 1e10 <= target.peak(key.removesuffix("_sparse")) <= 1e16, (target.name, key)
        for dense, sparse in ((p, f"{p}_sparse") for p in target.compute):
            if sparse in target.compute:
                assert target.compute[sparse] >= target.compute[dense]
        for low, high in (("fp32", "fp16"), ("fp16", "int8"), ("fp32", "int8")):
            if low in target.compute and high in target.compute:
                assert target.compute[high] >= target.compute[low], (target.name, low, high)
    assert get_target("nvidia-h100").bandwidth == pytest.approx(3.35e12)
    assert get_target("coral-edge-tpu").peak("fp32") is None
    assert get_target("coral-edge-tpu").precisions == ("int8",)


def test_engine_split_adds_up_to_the_module_figure() -> None:
    for name in ("jetson-orin-nx-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin"):
        target = get_target(name)
        parts = sum(target.peak("int8", True, unit) for unit in ("gpu", "dla"))
        assert parts == pytest.approx(target.peak("int8", sparse=True), rel=1e-3)
    ultra = get_target("intel-core-ultra")
    assert ultra.backend_options["openvino"]["device"] == "NPU"
    assert {"NPU", "GPU", "CPU"} <= set(ultra.backend_options["openvino"]["devices"])
    total = sum(ultra.peak("int8", unit=u) for u in ("cpu", "gpu", "npu"))
    assert total == pytest.approx(34 * T)
    assert ultra.peak("int8", unit="tpu") is None


def test_backend_defaults() -> None:
    expected = {"jetson-orin-nx": "tensorrt", "nvidia-h100": "tensorrt", "host-cpu": "onnxruntime",
                "raspberry-pi-5": "tflite", "intel-core-ultra": "openvino", "apple-m4": "coreml",
                "apple-a17-pro": "coreml", "snapdragon-8-gen-3": "tflite",
                "coral-edge-tpu": "tflite"}
    for name, backend in expected.items():
        assert get_target(name).default_backend == backend, name
    assert get_target("coral-edge-tpu").backend_options["tflite"]["delegate"] == "edgetpu"
    assert get_target("apple-a17-pro").backend_options["coreml"]["compute_units"] == "CPU_AND_NE"
    snapdragon = get_target("snapdragon-8-gen-3")
    assert "QNNExecutionProvider" in snapdragon.backend_options["onnxruntime"]["providers"]


def test_summary_is_one_line() -> None:
    for target in list_targets():
        line = target.summary()
        assert "\n" not in line and line.startswith(target.name)
    assert "100 sparse" in get_target("jetson-orin-nx").summary()


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ('kind = "npu"\n', "", ["missing required key 'kind'"]),
        ('"onnxruntime"]', '"onnxruntime", "tensorflow"]', ["backends", "'tensorflow'"]),
        ('"compute.int8" = "derived: sparse / 2"\n', "", ["compute.int8", "[sources]"]),
        ("bandwidth_gbps = 12.8", "bandwidth_gbps = -12.8", ["memory.bandwidth_gbps", "positive"]),
        ("power_w = 3\n", "powr_w = 3\n", ["unknown key 'powr_w'", "power_w"]),
        ('kind = "npu"', 'kind = "fpga"', ["kind", "'fpga'"]),
        ('default_backend = "tflite"', 'default_backend = "coreml"', ["default_backend"]),
        ("int8 = 8.0\n", "", ["compute.int8_sparse", "dense"]),
        ("bandwidth_gbps = 12.8", "bandwidth = 12.8", ["memory.bandwidth", "_gbps"]),
        ('power_w = "Acme data sheet"', 'power_w = "x"\n"memory.size_gb" = "y"',
         ["'memory.size_gb'", "names no figure"]),
        ('precisions = ["int8"]', 'precisions = "int8"', ["precisions", "list of strings"]),
        ("[memory]\nbandwidth_gbps = 12.8\n", "", ["memory.bandwidth_gbps", "missing"]),
        ('name = "my-board"', 'name = "my-board"\nname = "x"', ["not valid TOML"]),
        ("int8_sparse = 16.0", 'int8_sparse = "lots"', ["compute.int8_sparse", "number"]),
    ],
)
def test_bad_files_name_the_file_and_the_key(
    tmp_path: Path, old: str, new: str, fragments: list[str]
) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(TargetError) as caught:
        load_target_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no such target file"):
        get_target(str(tmp_path / "nope.toml"))


def test_unknown_name_gives_one_line_with_suggestions() -> None:
    with pytest.raises(TargetError) as caught:
        get_target("jetson-orin-nxx")
    message = str(caught.value)
    assert "\n" not in message and "did you mean" in message and "jetson-orin-nx" in message
    with pytest.raises(TargetError, match="unknown target 'zzz-no-such'"):
        get_target("zzz-no-such")


def test_user_file_works_with_get_target(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    target = get_target(str(path))
    assert target.name == "my-board" and target.path == path
    assert target.peak("int8", sparse=True) == 16 * T and target.bandwidth == 12.8e9
    assert get_target(path) == target  # a Path works too
    nested = VALID.replace('"compute.int8" = "derived: sparse / 2"', 'compute.int8 = "derived: /2"')
    assert load_target_file(_write(tmp_path, nested, "n.toml")).sources["compute.int8"]


def test_plugin_registration(tmp_path: Path) -> None:
    board = load_target_file(_write(tmp_path, VALID.replace('name = "my-board"',
                                                           'name = "my-board"\naliases = ["mb"]')))
    register_target(board)
    try:
        assert get_target("mb") is board and board in list_targets()
        with pytest.raises(TargetError, match="exists already"):
            register_target(board)
        clash = replace(board, name="other-board", aliases=("jetson-orin-nx",))
        with pytest.raises(TargetError, match="already used by target 'jetson-orin-nx-16gb'"):
            register_target(clash)
    finally:
        unregister_target("my-board")
    assert "my-board" not in [t.name for t in list_targets()]
    shadow = replace(get_target("nvidia-t4"), description="patched T4", path=None)
    register_target(shadow, replace=True)
    try:
        assert get_target("t4").description == "patched T4"  # aliases follow the shadow
    finally:
        unregister_target("nvidia-t4")
    assert get_target("t4").description != "patched T4"


def test_targets_built_in_code_are_validated() -> None:
    with pytest.raises(TargetError, match=r"target 'x': compute\.int8: figure has no entry"):
        Target(name="x", description="d", vendor="v", kind="npu", default_backend="tflite",
               backends=("tflite",), precisions=("int8",), compute={"int8": 1.0},
               memory={"bandwidth_gbps": 1.0}, sources={"memory.bandwidth_gbps": "s"})


def test_host_cpu_is_detected_on_this_machine() -> None:
    host = get_target("host-cpu")
    assert host is detect_host_cpu() and host.detect == "host"
    assert host.cores is not None and host.cores >= 1
    assert host.peak("fp32") > 0 and host.peak("int8") >= 2 * host.peak("fp32")
    assert "calibrate" in host.sources["memory.bandwidth_gbps"]
    assert host.sources["compute.fp32"].startswith("derived")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if re.search(r"^flags\s*:.*\bavx2\b", flags, re.MULTILINE):
        assert "avx2" in host.isa
    info = read_host()
    assert 1 <= info.physical_cores <= info.logical_cores
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint()) and fingerprint() == fingerprint()


def _fake_root(tmp_path: Path, cpuinfo: str, caches: dict[int, list[tuple]], max_khz: int | None,
               mem_kb: int, cgroup: dict[str, str] | None = None) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(cpuinfo)
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree: 1 kB\n")
    for cpu, entries in caches.items():
        for i, (level, kind, size, shared) in enumerate(entries):
            index = root / f"sys/devices/system/cpu/cpu{cpu}/cache/index{i}"
            index.mkdir(parents=True)
            for name, value in (("level", level), ("type", kind), ("size", size),
                                ("shared_cpu_list", shared)):
                (index / name).write_text(f"{value}\n")
    if max_khz:
        freq = root / "sys/devices/system/cpu/cpu0/cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
    for name, value in (cgroup or {}).items():
        (root / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / name).write_text(value)
    return root


PI5_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                "lrcpc dcpop asimddp")


def test_host_detection_on_a_fake_raspberry_pi(tmp_path: Path) -> None:
    cpuinfo = "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {PI5_FEATURES}\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0b\n\n" for i in range(4)
    ) + "Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
    caches = {i: [(1, "Data", "64K", str(i)), (1, "Instruction", "64K", str(i)),
                  (2, "Unified", "512K", str(i)), (3, "Unified", "2048K", "0-3")]
              for i in range(4)}
    root = _fake_root(tmp_path, cpuinfo, caches, 2_400_000, 8_000_000,
                      {"memory.max": "4294967296\n"})
    host = detect_host_cpu(root)
    assert host.vendor == "Arm" and "Raspberry Pi 5" in host.description
    assert {"neon", "asimd", "asimddp", "asimdhp"} <= set(host.isa)
    assert host.cores == 4 and "openvino" not in host.backends
    pi = get_target("raspberry-pi-5")
    assert host.peak("fp32") == pytest.approx(pi.peak("fp32"))  # same derivation as the file
    assert host.peak("int8") == pytest.approx(pi.peak("int8"))
    assert "fp16" in host.precisions and host.peak("fp16") == pytest.approx(pi.peak("fp16"))
    assert host.memory["l2_cache_mb"] == 2 and host.memory["l3_cache_mb"] == 2
    assert host.memory["l1d_cache_kb"] == 256
    assert host.memory["size_gb"] == 4  # the cgroup limit, not MemTotal
    assert fingerprint(root) != fingerprint()


def test_host_detection_on_a_fake_avx512_server_with_smt(tmp_path: Path) -> None:
    flags = "fpu sse sse2 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni"
    cpuinfo = "".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
        "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\ncpu MHz\t\t: 800.000\n"
        f"physical id\t: 0\ncore id\t\t: {i % 4}\nflags\t\t: {flags}\n\n" for i in range(8)
    )
    root = _fake_root(tmp_path, cpuinfo, {}, None, 16_000_000, {"cpu.max": "400000 100000\n"})
    host = detect_host_cpu(root)
    assert host.vendor == "Intel" and host.cores == 4 and "openvino" in host.backends
    assert host.peak("fp32") == pytest.approx(4 * 2.0e9 * 64)  # clock from the model name
    assert host.peak("int8") == pytest.approx(4 * host.peak("fp32"))  # VNNI
    assert "x 4" in host.sources["compute.int8"] and "fp16" not in host.compute
