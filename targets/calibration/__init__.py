"""Calibration: kernel micro-benchmarks timed on this machine, fitted into the cost model.

    edgeopt calibrate --target host-cpu [--backend onnxruntime|openvino] [--budget-s N] [--quick]
    edgeopt calibrate --import FILE --target jetson-orin-nx

Files live in ``~/.cache/edgeopt/calibration/`` (``$EDGEOPT_CACHE_DIR`` overrides); see store.py.
"""

from edgeopt.targets.calibration.store import (
    SCHEMA,
    Calibration,
    CalibrationError,
    cache_dir,
    calibration_path,
    find_calibration,
    import_calibration,
    load_calibration,
    read_calibration,
)

__all__ = [
    "SCHEMA",
    "Calibration",
    "CalibrationError",
    "cache_dir",
    "calibrate",
    "calibration_path",
    "find_calibration",
    "import_calibration",
    "load_calibration",
    "read_calibration",
]


def calibrate(*args, **kwargs):  # imported lazily: timing pulls in runtimes the cost model does not need
    from edgeopt.targets.calibration.calibrate import calibrate as run

    return run(*args, **kwargs)
