"""The machine-speed probe: reference networks timed at calibration and beside later measurements."""

from __future__ import annotations

import pytest

from edgeopt.targets.calibration.reference import reference_id, reference_seconds, speed_ratio
from edgeopt.targets.calibration.runners import Runner, make_runner
from edgeopt.targets.calibration.store import Calibration


def _calibration(reference_s: float, probed: str | None) -> Calibration:
    return Calibration(target="host-cpu", backend="onnxruntime", fingerprint="f", method="factors", factors={},
                       composition={}, reference_s=reference_s,
                       validation={"reference_id": probed} if probed else {})


def test_speed_ratio_compares_only_the_same_networks() -> None:
    assert reference_id() == reference_id()  # the networks are fixed, not drawn anew
    assert speed_ratio(0.06, _calibration(0.05, reference_id())) == pytest.approx(1.2)
    assert speed_ratio(0.06, _calibration(0.05, "0123456789ab")) is None  # other networks
    assert speed_ratio(0.06, _calibration(0.0, reference_id())) is None  # a file from before the probe


def test_reference_times_repeat_on_one_machine() -> None:
    runner = make_runner("onnxruntime", "cpu", threads=1, budget_s=0.05, clock="cpu")
    first, second = reference_seconds(runner, rounds=1), reference_seconds(runner, rounds=1)
    assert first > 1e-3 and 0.7 < second / first < 1.4


def test_a_model_keeps_its_least_loaded_round() -> None:
    """Other jobs only slow a round down: the cost-model bench keeps each model's fastest round."""
    assert Runner.settled([4.75e-3, 6.75e-3, 5.93e-3]) == pytest.approx(4.75e-3)


def test_reference_takes_each_networks_least_loaded_round_as_the_models_do() -> None:
    """Two quiet rounds of eight: the reference reads them as models' least loaded rounds do, not as the median."""
    from edgeopt.targets.calibration.reference import reference_total

    loaded, quiet = [0.095] * 6, [0.084, 0.085]
    assert reference_total([loaded + quiet, [0.2] * 8]) == pytest.approx(0.084 + 0.2)
