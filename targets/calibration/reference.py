"""Machine-speed probe: fixed reference networks timed with every calibration and beside later runs.

A calibration carries the speed its machine had in its minutes. On a shared or throttling
machine (other tenants on the caches, a Jetson's power mode or temperature) that speed moves:
on the 2-core machines these figures come from, a ResNet-18 re-timed 22.7 and 26.6 ms (+17 %)
in two runs an hour apart, and every model of a run shifted by the same few percent. Timing the
same networks at calibration and beside a later measurement tells such a shift from a wrong
prediction; ``speed_ratio`` is how much slower the machine runs now.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import numpy as np
import onnx

from edgeopt.targets.calibration.networks import networks
from edgeopt.targets.calibration.runners import Runner
from edgeopt.targets.calibration.store import Calibration

REFERENCE_SEED = 97  # two CNNs and a transformer stack (networks(3)): 54 ms together here (one thread)
ROUNDS = 3
REFERENCE_STATISTIC = "least loaded round"  # part of reference_id: a stored time compares only with one taken alike

Run = tuple[Callable[[dict[str, np.ndarray]], object], dict[str, np.ndarray]]


def reference_networks() -> list[tuple[str, onnx.ModelProto, dict[str, np.ndarray]]]:
    return networks(3, seed=REFERENCE_SEED)


@functools.cache  # the networks are fixed: build and hash them once per process
def reference_id() -> str:
    """What the reference networks are: a stored time compares only with a time of the same networks."""
    digest = hashlib.sha256(REFERENCE_STATISTIC.encode())
    for _name, proto, _feeds in reference_networks():
        digest.update(proto.SerializeToString(deterministic=True))
    return digest.hexdigest()[:12]


def prepared_reference(runner: Runner) -> list[Run]:
    """The reference networks loaded by ``runner``, to time among other models (``Runner.interleaved``)."""
    return [(runner.prepare(proto), feeds) for _name, proto, feeds in reference_networks()]


def reference_total(times: list[list[float]]) -> float:
    """Seconds of one pass over the reference networks: the sum of each one's least loaded round.

    The statistic models and composition networks are timed with (``Runner.settled``). With the
    median here, a bench run whose models caught two quiet rounds of eight (this VM has phases
    12 % apart: a ResNet-18 ran 84.3 ms in one round, 94.4-96.8 ms in six) read the machine as
    unchanged (x1.004) while every model's least loaded round was 12 % under the calibration's
    prediction.
    """
    return float(sum(Runner.settled(t) for t in times))


def reference_seconds(runner: Runner, rounds: int = ROUNDS) -> float:
    return reference_total(runner.interleaved(prepared_reference(runner), rounds))


def speed_ratio(now_s: float, calibration: Calibration) -> float | None:
    """How many times slower the machine runs now than at ``calibration``.

    None where the file has no probe or probed other networks (another edgeopt version).
    """
    if calibration.reference_s <= 0 or now_s <= 0 or calibration.validation.get("reference_id") != reference_id():
        return None
    return now_s / calibration.reference_s
