"""Quantization passes: calibration, calibrators, Q/DQ placement by backend, INT8/FP16/INT4, mixed precision.

One concern a module: ``calibration_data`` (folders, images, plugin loaders),
``calibrators`` (streaming histograms; min-max, percentile, entropy, MSE),
``statistics`` (bounded-memory collection in ORT), ``placement`` (ORT,
TensorRT and OpenVINO rule sets), ``qdq`` (writing a plan into the IR),
``gain`` (measured or predicted per-layer INT8 gain), ``sensitivity``,
``mixed``, ``accuracy``; the passes are ``quantize``, ``convert-fp16`` and
``quantize-int4-weights``.
"""

from edgeopt.passes.quant.accuracy import register_evaluator
from edgeopt.passes.quant.calibration_data import CalibrationDataError, register_calibration_loader

__all__ = ["CalibrationDataError", "register_calibration_loader", "register_evaluator"]
