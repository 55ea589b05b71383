"""TVM target strings and the MetaSchedule tuning database kept per target and model.

TVM 0.27 no longer parses CLI target strings ("llvm -mcpu=x"); the target files keep that
familiar form and :func:`parse_target` turns it into the JSON-dict form TVM accepts.

Tuning records live under ``$EDGEOPT_CACHE_DIR/tvm/<target>/<model-hash>/`` (default
``~/.cache/edgeopt``) as MetaSchedule's own JSON database, plus ``edgeopt_tuning.json`` with
the trials spent so far. A later compile of the same model for the same target reuses the
records and only tunes the trials its budget has beyond them: this is the "auto-tune
overnight, compile in seconds after" loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.ir.errors import UserError

RECORD_FILE = "edgeopt_tuning.json"
_LIST_KEYS = {"mattr", "libs", "keys"}


def parse_target(text: str, host: str = "", num_cores: int = 0) -> dict[str, Any]:
    """``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76"`` -> TVM's target dict.

    ``-mcpu=native`` becomes this machine's CPU as LLVM names it, so the records and the
    library say which CPU they were made for.
    """
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise UserError(f"backend 'tvm': bad target '{text}': {error}") from None
    if not words or words[0].startswith("-"):
        raise UserError(f"backend 'tvm': target '{text}' must start with a kind such as llvm or cuda")
    spec: dict[str, Any] = {"kind": words[0]}
    for word in words[1:]:
        match = re.fullmatch(r"-{1,2}([A-Za-z0-9_.-]+)(?:=(.*))?", word)
        if not match:
            raise UserError(f"backend 'tvm': bad target option '{word}' in '{text}' (expected -key=value)")
        key, value = match.group(1), match.group(2)
        if value is None:
            spec[key] = True
        elif key in _LIST_KEYS:
            spec[key] = [item for item in value.split(",") if item]
        elif re.fullmatch(r"-?\d+", value):
            spec[key] = int(value)
        else:
            spec[key] = value
    if spec["kind"] == "llvm" and spec.get("mcpu") == "native":
        from tvm.target import codegen

        spec["mcpu"] = str(codegen.llvm_get_system_cpu())
    if spec["kind"] == "llvm" and runs_here(spec) and "num-cores" not in spec:
        spec["num-cores"] = num_cores or len(os.sched_getaffinity(0))
    elif spec["kind"] == "llvm" and num_cores and "num-cores" not in spec:
        spec["num-cores"] = num_cores
    if host:
        spec["host"] = parse_target(host, num_cores=num_cores)
    return spec


def runs_here(spec: dict[str, Any]) -> bool:
    """Whether code built for ``spec`` runs on this machine's CPU (an llvm build for this CPU)."""
    if spec.get("kind") != "llvm":
        return False
    triple = str(spec.get("mtriple", ""))
    if triple and not triple.startswith(os.uname().machine):
        return False
    from tvm.target import codegen

    return spec.get("mcpu") in (None, "native", str(codegen.llvm_get_system_cpu()))


def cache_root() -> Path:
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgeopt")
    return Path(base) / "tvm"


def target_slug(spec: dict[str, Any]) -> str:
    """A readable, stable folder name: kind, CPU/arch, and a hash of the whole target."""
    canonical = json.dumps(spec, sort_keys=True)
    label = "-".join(str(spec.get(k)) for k in ("kind", "mtriple", "mcpu", "arch") if spec.get(k))
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
    return f"{label}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def model_hash(onnx_bytes: bytes, shapes: dict[str, list[int]]) -> str:
    digest = hashlib.sha256(onnx_bytes)
    digest.update(json.dumps(shapes, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass
class TuningRecord:
    """What ``edgeopt_tuning.json`` holds: the budget already spent on this target and model."""

    trials: int = 0
    seconds: float = 0.0
    tasks: int = 0

    @classmethod
    def load(cls, folder: Path) -> TuningRecord:
        path = folder / RECORD_FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(int(data.get("trials", 0)), float(data.get("seconds", 0.0)), int(data.get("tasks", 0)))

    def save(self, folder: Path, spec: dict[str, Any]) -> None:
        import tvm

        data = {"trials": self.trials, "seconds": round(self.seconds, 1), "tasks": self.tasks,
                "target": spec, "tvm_version": tvm.__version__}
        (folder / RECORD_FILE).write_text(json.dumps(data, indent=2) + "\n")


def has_records(folder: Path) -> bool:
    records = folder / "database_tuning_record.json"
    return records.exists() and records.stat().st_size > 0


def tune(mod: Any, target: Any, folder: Path, trials: int, per_task: int) -> tuple[int, float, int]:
    """Spend ``trials`` MetaSchedule trials on the fused TIR tasks of ``mod``; records go to ``folder``.

    Returns (trials spent: the budget, or fewer when every task reached its cap; seconds; tasks).
    ``mod`` must already be legalized and fused (the same preparation MetaScheduleApplyDatabase
    sees, so the records match).
    """
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        return 0, 0.0, 0
    per_task = per_task or max(32, trials // len(tasks))
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(folder))
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(folder),
        max_trials_global=trials, max_trials_per_task=per_task,
        # The gradient scheduler commits nothing until every task has had its first round; round-robin
        # commits each task's records as they are measured, so a stopped tuning run still leaves records.
        task_scheduler="round-robin",
        num_trials_per_iter=min(per_task, 64),  # one batch a task: each batch pays a worker-pool start
        # LocalBuilder's default 30 s timeout counts a fresh worker's TVM import: on a loaded
        # 2-core machine every build timed out and no record was ever written.
        builder=ms.builder.LocalBuilder(max_workers=max(1, len(os.sched_getaffinity(0))), timeout_sec=300,
                                        f_build=build_candidate),
        runner=ms.runner.LocalRunner(timeout_sec=120),
        database=ms.database.JSONDatabase(work_dir=str(folder)),
    )
    return min(trials, per_task * len(tasks)), time.perf_counter() - began, len(tasks)


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default_build without ``import tvm.s_tir.tensor_intrin``.

    That import registers every tensor intrinsic (x86, Arm, CUDA, ...) and costs about 90 s of
    CPU here; LocalBuilder starts fresh workers for every batch, so each batch paid it per
    worker and a 16-candidate matmul took 14 minutes to build. FP32 CPU schedules use no
    tensor intrinsic; a candidate that did would fail to build and be dropped, not mis-built.
    """
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target)
