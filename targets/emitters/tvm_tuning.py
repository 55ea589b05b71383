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
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.ir.errors import UserError
from edgeopt.targets.host import read_host

RECORD_FILE = "edgeopt_tuning.json"
# How the emitter prepares the TIR it tunes (tvm._prepare) and how many threads ran the measurements;
# part of the database key. Records from before "all-cores" were timed on one thread (see use_threads).
PREPARATION = "legalize-fuse-layout-free-weights-all-cores"
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
        # Physical cores in this process's affinity mask, as ONNX Runtime's default intra-op threads.
        spec["num-cores"] = num_cores or read_host().physical_cores
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


def device_threads(spec: dict[str, Any]) -> int | None:
    """Threads code built for ``spec`` runs on: its CPU's ``num-cores`` (unknown for a cross build without it)."""
    cpu = spec.get("host", spec) if spec.get("kind") == "cuda" else spec
    return int(cpu["num-cores"]) if cpu.get("num-cores") else None


def use_threads(count: int) -> int:
    """Make TVM's CPU thread pool run ``count`` threads; returns the count it runs.

    Without ``TVM_NUM_THREADS`` the pool takes half the logical CPUs on x86 (TVM assumes
    hyper-threading): on a 2-core VM without SMT every TVM build here ran on one core, a
    tuned ResNet-18 at 29.5 ms against 16.8 ms on both. The pool reads the variable once per
    thread, the first time it runs parallel code (``runtime.config_threadpool`` cannot grow it
    later), so this is called before TVM runs anything; MetaSchedule's runner workers inherit
    it. A user's own ``TVM_NUM_THREADS`` wins.
    """
    import tvm

    os.environ.setdefault("TVM_NUM_THREADS", str(count))
    return int(tvm.runtime.num_threads())


def cache_root() -> Path:
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgeopt")
    return Path(base) / "tvm"


def target_slug(spec: dict[str, Any]) -> str:
    """A readable, stable folder name: kind, CPU/arch, and a hash of the whole target."""
    canonical = json.dumps(spec, sort_keys=True)
    label = "-".join(str(spec.get(k)) for k in ("kind", "mtriple", "mcpu", "arch") if spec.get(k))
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
    return f"{label}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def model_hash(onnx_bytes: bytes, shapes: dict[str, list[int]], preparation: str = PREPARATION) -> str:
    digest = hashlib.sha256(onnx_bytes)
    digest.update(preparation.encode())  # records made for another preparation never match: start afresh
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


BATCH = 32  # candidates per measured batch: each batch pays a worker-pool start and a search
FIRST_BATCH = 8  # the first round's batch: every task needs a schedule before any gets more
SMALL_SHARE = 0.01  # tasks below this share of the model's FLOPs get no more than the first batch
# Below this (reshape, transpose, mean) naive loops or DLight cost microseconds. Not lower FLOP shares in
# general: the batch-1 classifier GEMV of ResNet-18 (0.03 % of its FLOPs, 2 MB of weights) ran 0.57 ms untuned.
TINY_SHARE = 0.0001


def tune(mod: Any, target: Any, folder: Path, trials: int, per_task: int,
         seconds: float = 0.0) -> tuple[int, float, int]:
    """Spend up to ``trials`` MetaSchedule trials (and ``seconds``, if set) on the fused TIR tasks of ``mod``.

    Trials go where the time is: each task first gets one small batch (an untuned task falls
    back to naive loops, so every task needs a schedule first), then every further batch goes
    to the task with at least 1% of the FLOPs and the largest weighted latency in the database,
    discounted by the batches it already had (earlier runs' records count: a later run goes on
    from them). This is what MetaSchedule's gradient scheduler aims at, but that scheduler commits no record until every
    task had its first round; here every batch is committed to ``folder`` when it is measured,
    so a run stopped at any time keeps its records. One XGBoost cost model learns across all
    batches. Returns (trials measured, seconds, tasks). ``mod`` must be prepared as the build
    prepares it (``tvm._prepare``) so the records match.
    """
    import numpy as np
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    extracted = [task for task in ms.relax_integration.extract_tasks(mod, target)
                 if not (task.mod.attrs and task.mod.attrs.get("tirx.is_scheduled", False))]
    if not extracted:
        return 0, 0.0, 0
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    cores = max(1, len(os.sched_getaffinity(0)))
    database = ms.database.JSONDatabase(work_dir=str(folder))
    cost_model = ms.cost_model.XGBModel(num_tuning_cores=cores)
    # LocalBuilder's default 30 s timeout counts a fresh worker's TVM import: on a loaded 2-core
    # machine every build timed out and no record was ever written. Both are made once and
    # shared by all batches (making them took about 25 s a batch here).
    builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=300, f_build=build_candidate)
    runner = ms.runner.LocalRunner(timeout_sec=120)
    flops = np.array([estimate_tir_flops(task.dispatched[0]) * task.weight for task in extracted])
    share = flops / max(flops.sum(), 1.0)
    # The budget is shared by the tasks that get more than a first batch (not layout transposes).
    per_task = per_task or max(BATCH, trials // max(1, int((share >= SMALL_SHARE).sum())))
    # Candidates measured per task, earlier runs' records included: a later run with a bigger
    # budget continues from them instead of sampling every task again.
    given = [_record_count(database, task) for task in extracted]
    prior, spent = list(given), [0]  # ``per_task`` caps what this run adds to a task
    loggers = [_task_logger(folder, i, task.task_name) for i, task in enumerate(extracted)]

    def run_batch(index: int, count: int) -> None:
        task = extracted[index]
        # A task's first batch samples its design space at random: before any measurement the
        # cost model cannot rank candidates, and the evolutionary search cost more than the
        # build and run of its batch. Later batches evolve from the measured best, with a
        # smaller population than the default 512 (4 genetic rounds) for the same reason.
        strategy = (ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=3) if given[index]
                    else ms.search_strategy.ReplayTrace())
        context = ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                                 search_strategy=strategy, task_name=task.task_name, logger=loggers[index],
                                 num_threads="physical").clone()
        ms.tune.tune_tasks(
            tasks=[context], task_weights=[task.weight], work_dir=str(folder),
            max_trials_global=count, max_trials_per_task=count, num_trials_per_iter=count,
            builder=builder, runner=runner, database=database, cost_model=cost_model,
        )
        given[index] += count
        spent[0] += count

    def out_of_budget() -> bool:
        # The time limit stops new batches once one has run: a limit shorter than a batch still tunes the top task.
        return spent[0] >= trials or bool(seconds and spent[0] and time.perf_counter() - began > seconds)

    order = sorted(range(len(extracted)), key=lambda i: -share[i])
    for index in order:  # first round: the big tasks first, so a short budget tunes what matters
        if out_of_budget() or share[index] < TINY_SHARE:
            break
        if not given[index]:
            run_batch(index, min(per_task, trials - spent[0], FIRST_BATCH))
    while not out_of_budget():
        # A task still without a record after its batch failed to build: it gets no more trials.
        best = [_weighted_latency(database, task) for task in extracted]
        best = [0.0 if b == float("inf") and given[i] else b for i, b in enumerate(best)]
        open_tasks = [i for i in range(len(extracted)) if given[i] - prior[i] < per_task and share[i] >= SMALL_SHARE]
        if not open_tasks:
            break
        index = max(open_tasks, key=lambda i: best[i] / (1 + given[i] / BATCH) ** 0.5)
        run_batch(index, min(BATCH, per_task - given[index] + prior[index], trials - spent[0]))
    return spent[0], time.perf_counter() - began, len(extracted)


def _task_logger(folder: Path, index: int, name: str) -> logging.Logger:
    """One log file per task under ``folder/logs``, as MetaSchedule names them.

    MetaSchedule's own helper (``get_loggers_from_work_dir``) re-runs ``logging.config.dictConfig``
    on every call, which resets the process's logging; under pytest its second call failed on a
    handler without a name. A plain file logger per task does the same job.
    """
    logger = logging.getLogger(f"tvm.s_tir.meta_schedule.task_{index:02d}_{name[:100]}")
    path = folder / "logs" / f"{logger.name}.log"
    if not any(getattr(handler, "baseFilename", None) == str(path.resolve()) for handler in logger.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def _record_count(database: Any, task: Any) -> int:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0
    return len(database.get_top_k(database.commit_workload(mod), 1 << 20))


def _weighted_latency(database: Any, task: Any) -> float:
    """Best measured seconds of ``task`` times its weight; infinity when it has no record yet."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return float("inf")
    records = database.get_top_k(database.commit_workload(mod), 1)
    if not records or not records[0].run_secs:
        return float("inf")
    return float(sum(float(x) for x in records[0].run_secs) / len(records[0].run_secs)) * task.weight


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
