"""The methods the quantization benchmark compares: edgeopt's quantize pass, ORT quantize_static, NNCF.

Every method starts from the same FP32 model (:func:`prepare_fp32`) and calibrates on the same samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx


def prepare_fp32(src: Path, dst: Path) -> Path:
    """The common FP32 start: edgeopt cleanup + fuse-conv-bn (ORT would fold BN at load anyway)."""
    from edgeopt.ir import load_model, save_model
    from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline

    model = load_model(src)
    ctx = PassContext()
    result = PassManager(instantiate(parse_pipeline("cleanup,fuse-conv-bn,cleanup"), ctx), [], ctx).run(model)
    save_model(result.model, dst)
    return dst


def edgeopt_quantize(src: Path, dst: Path, samples: list[dict[str, np.ndarray]], options: str = "") -> dict:
    from edgeopt.ir import load_model, save_model
    from edgeopt.passes import PassContext, PassManager, instantiate, parse_pipeline
    from edgeopt.targets import get_target

    model = load_model(src)
    ctx = PassContext(target=get_target("host-cpu"), calibration_data=lambda: iter(samples))
    text = f"quantize{{samples={len(samples)},holdout=0{',' + options if options else ''}}}"
    began = time.perf_counter()
    result = PassManager(instantiate(parse_pipeline(text), ctx), [], ctx).run(model)
    save_model(result.model, dst)
    report = dict(ctx.config.get("reports", {}).get("quantize", {}))
    report["seconds"] = time.perf_counter() - began
    report["counts"] = result.records[0].counts
    return report


class _Reader:
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.iterator = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)


def ort_static(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def nncf_quantize(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    import nncf

    model = onnx.load(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(dst))
