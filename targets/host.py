"""host-cpu: the machine edgeopt runs on, read at run time.

``devices/host-cpu.toml`` holds what does not change (backends and their options);
this module adds what does: cores in the affinity mask and cgroup quota, model name,
ISA flags, cache sizes, clock and memory size from /proc and /sys. Peaks are derived
(cores x GHz x FLOP/cycle) and say so in their sources; memory bandwidth is a
deliberately low estimate until `edgeopt calibrate` measures it. Everything takes a
``root`` so tests can point it at a fake /proc and /sys.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edgeopt.targets.catalog import DEVICES_DIR, Target, load_target_file

# Flags that change what kernels a backend can pick; the rest of /proc/cpuinfo is noise here.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)
_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "0x41": "Arm", "0x51": "Qualcomm",
            "0x61": "Apple"}
_INT8_X4 = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}  # 4 int8 MACs per 32-bit lane
_BANDWIDTH_PER_CORE_GBPS, _BANDWIDTH_CAP_GBPS = 8.0, 51.2


@dataclass(frozen=True)
class HostInfo:
    model: str
    vendor: str
    arch: str
    logical_cores: int
    physical_cores: int
    isa: tuple[str, ...]
    ghz: float | None
    ghz_source: str
    caches: dict[str, float]  # memory keys: l1d_cache_kb, l2_cache_mb, l3_cache_mb (totals)
    memory_gb: float | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.split("\n\n"):
        pairs = (line.split(":", 1) for line in chunk.splitlines() if ":" in line)
        block = {key.strip(): value.strip() for key, value in pairs}
        if block:
            blocks.append(block)
    return blocks


def _size_kb(text: str) -> float:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip(), re.IGNORECASE)
    if not match:
        return 0.0
    return int(match[1]) * {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024**2}[match[2].upper()]


def _cgroup_cpus(root: Path) -> int | None:
    quota = (_read(root / "sys/fs/cgroup/cpu.max") or "max").split()
    if len(quota) == 2 and quota[0].isdigit() and quota[1].isdigit() and int(quota[1]):
        return max(1, math.ceil(int(quota[0]) / int(quota[1])))
    return None


def _memory_gb(root: Path) -> float | None:
    meminfo = _read(root / "proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    sizes = [int(match[1]) * 1024] if match else []
    # A container's memory limit is what a model can actually use.
    for limit in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read(root / limit)
        if value and value.isdigit() and int(value) < 2**60:
            sizes.append(int(value))
    return round(min(sizes) / 2**30, 2) if sizes else None


_CACHE_KEYS = {("1", "Data"): "l1d_cache_kb", ("2", "Unified"): "l2_cache_mb",
               ("2", "Data"): "l2_cache_mb", ("3", "Unified"): "l3_cache_mb"}


def _caches(root: Path, cpus: list[int]) -> dict[str, float]:
    """Total of each cache level over the allowed CPUs; a shared cache counts once."""
    seen: set[tuple[str, str]] = set()
    totals: dict[str, float] = {}
    for cpu in cpus:
        for index in sorted((root / f"sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
            key = _CACHE_KEYS.get((_read(index / "level") or "", _read(index / "type") or ""))
            instance = (str(key), _read(index / "shared_cpu_list") or str(cpu))
            if key is None or instance in seen:
                continue
            seen.add(instance)
            size = _size_kb(_read(index / "size") or "") / (1 if key.endswith("_kb") else 1024)
            totals[key] = totals.get(key, 0.0) + size
    return {key: round(value, 3) for key, value in totals.items() if value > 0}


def read_host(root: Path = Path("/")) -> HostInfo:
    """What /proc and /sys say about this machine's CPU."""
    blocks = _cpuinfo_blocks(_read(root / "proc/cpuinfo") or "")
    procs = [b for b in blocks if b.get("processor", "").isdigit()]
    first = procs[0] if procs else {}
    ids = [int(b["processor"]) for b in procs]
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        allowed = os.sched_getaffinity(0)
        ids = [i for i in ids if i in allowed] or sorted(allowed)
    logical = len(ids) or os.cpu_count() or 1
    quota = _cgroup_cpus(root)
    logical = min(logical, quota) if quota else logical
    cores = {(b.get("physical id", "0"), b["core id"]) for b in procs
             if "core id" in b and int(b["processor"]) in ids}
    physical = min(len(cores) or logical, logical)

    flags = set((first.get("flags") or first.get("Features") or "").split())
    isa = [flag for flag in ISA_FLAGS if flag in flags]
    isa += ["neon"] if "asimd" in flags else []
    isa += ["amx"] if any(f.startswith("amx") for f in flags) else []
    arch = ("x86_64" if "flags" in first else "aarch64" if "Features" in first
            else platform.machine())

    extra = {k: v for b in blocks for k, v in b.items()}  # Arm puts Model/Hardware in a tail block
    model = (first.get("model name") or extra.get("Model") or extra.get("Hardware")
             or platform.processor() or arch)
    vendor = _VENDORS.get(first.get("vendor_id") or first.get("CPU implementer", ""), "unknown")

    ghz, ghz_source = None, "unknown"
    max_khz = _read(root / "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    named = re.search(r"@\s*(\d+(?:\.\d+)?)\s*GHz", model)
    if max_khz and max_khz.isdigit():
        ghz, ghz_source = int(max_khz) / 1e6, "cpufreq cpuinfo_max_freq"
    elif named:
        ghz, ghz_source = float(named[1]), "nominal clock in the model name"
    elif re.fullmatch(r"\d+(\.\d+)?", first.get("cpu MHz", "")):
        ghz, ghz_source = float(first["cpu MHz"]) / 1000, "'cpu MHz' in /proc/cpuinfo"
    return HostInfo(model=model, vendor=vendor, arch=arch, logical_cores=logical,
                    physical_cores=physical, isa=tuple(isa), ghz=ghz, ghz_source=ghz_source,
                    caches=_caches(root, ids), memory_gb=_memory_gb(root))


def flops_per_cycle(isa: tuple[str, ...]) -> tuple[int, str]:
    """FP32 FLOP per cycle per core from the widest FMA the flags promise (an upper bound)."""
    flags = set(isa)
    if "avx512f" in flags:
        return 64, "AVX-512, 2 x 512-bit FMA units assumed (some parts have one)"
    if {"avx2", "fma"} <= flags:
        return 32, "AVX2+FMA, 2 x 256-bit FMA units assumed (Zen 1 has half)"
    if "avx" in flags:
        return 16, "AVX, one 256-bit add + one 256-bit multiply"
    if "asimd" in flags:
        return 16, "NEON, 2 x 128-bit FMA pipes (Cortex-A76 class)"
    return 8, "SSE2 baseline, one 128-bit add + one 128-bit multiply"


def fingerprint(root: Path = Path("/")) -> str:
    """Stable id of this CPU for calibration files: model, relevant ISA flags, core counts."""
    info = read_host(root)
    text = f"{info.model}|{','.join(info.isa)}|{info.physical_cores}|{info.logical_cores}"
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def detect_host_cpu(root: Path = Path("/")) -> Target:
    """The host-cpu target with this machine's figures filled in."""
    static = load_target_file(DEVICES_DIR / "host-cpu.toml")
    info = read_host(root)
    compute: dict[str, float] = {}
    sources = dict(static.sources)
    cores_src = "detected: cores in the CPU affinity mask and cgroup quota (/proc/cpuinfo core ids)"
    sources["cores"] = cores_src
    precisions = ["fp32", "int8"]
    if info.ghz:
        fpc, why = flops_per_cycle(info.isa)
        fp32 = round(info.physical_cores * info.ghz * fpc / 1000, 4)
        compute["fp32"] = fp32
        sources["compute.fp32"] = (
            f"derived: {info.physical_cores} cores x {info.ghz:.3g} GHz ({info.ghz_source}) x "
            f"{fpc} FLOP/cycle ({why}) = {fp32:g} TFLOPS; calibrate to measure")
        x4 = bool(_INT8_X4 & set(info.isa))
        compute["int8"] = round(fp32 * (4 if x4 else 2), 4)
        sources["compute.int8"] = ("derived: fp32 peak x 4 (VNNI / dot-product instructions)" if x4
                                   else "derived: fp32 peak x 2 (16-bit multiply-add, no VNNI)")
        for prec, flags in (("fp16", {"avx512_fp16", "asimdhp"}),
                            ("bf16", {"avx512_bf16", "amx_bf16", "bf16"})):
            if flags & set(info.isa):  # only where the ISA computes in that type natively
                compute[prec] = round(fp32 * 2, 4)
                sources[f"compute.{prec}"] = f"derived: fp32 peak x 2 (native {prec} vector math)"
                precisions.append(prec)
    memory = {"bandwidth_gbps": min(_BANDWIDTH_PER_CORE_GBPS * info.physical_cores,
                                    _BANDWIDTH_CAP_GBPS)}
    sources["memory.bandwidth_gbps"] = (
        f"derived estimate: {_BANDWIDTH_PER_CORE_GBPS:g} GB/s per core, capped at "
        f"{_BANDWIDTH_CAP_GBPS:g} GB/s (two DDR4-3200 channels); calibrate to measure")
    if info.memory_gb:
        memory["size_gb"] = info.memory_gb
        sources["memory.size_gb"] = "detected: /proc/meminfo MemTotal (or the cgroup limit)"
    for key, value in info.caches.items():
        memory[key] = value
        sources[f"memory.{key}"] = "detected: /sys/devices/system/cpu/cpu*/cache (sum of instances)"
    backends = [b for b in static.backends  # OpenVINO serves Intel/AMD x86 CPUs
                if b != "openvino" or (info.arch == "x86_64" and info.vendor in ("Intel", "AMD"))]
    clock = f", {info.ghz:.3g} GHz" if info.ghz else ""
    description = (f"This machine: {info.model}, {info.physical_cores} cores / "
                   f"{info.logical_cores} threads{clock}, {' '.join(info.isa) or 'no SIMD flags'}"
                   " (detected at run time)")
    return dataclasses.replace(
        static, description=description, vendor=info.vendor, backends=tuple(backends),
        precisions=tuple(precisions), compute=compute, memory=memory, sources=sources,
        isa=info.isa, cores=info.physical_cores)
