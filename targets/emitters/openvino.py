"""OpenVINO emitter: IR .xml/.bin (ONNX frontend, then save_model), run on the CPU plugin here.

INT8 needs nothing special: OpenVINO's ONNX frontend turns the QuantizeLinear/DequantizeLinear
pairs the quantizer placed into FakeQuantize, and its low-precision transformations run the
layers in INT8. Device hints for the deployment machine (CPU/GPU/NPU, performance hint) go
into ``openvino_config.json`` beside the IR; validation and timing always use this machine's
CPU plugin, the only device here.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.ir.errors import UserError
from edgeopt.passes.options import option
from edgeopt.targets.emitters.base import EmitResult, Emitter, register_emitter
from edgeopt.targets.emitters.common import (
    CONTROL_FLOW_OPS,
    by_position,
    compare,
    is_quantized,
    onnx_bytes,
    op_inventory,
    time_call,
)

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass
class OpenVinoOptions:
    device: str = option("CPU", help="OpenVINO device the deployed model runs on (CPU, GPU, NPU, AUTO)")
    devices: list[str] = option(default_factory=list,  # noqa: RUF009 - option() wraps dataclasses.field
                                help="device hints in order of preference")
    performance_hint: str = option("LATENCY", help="LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT")
    compress_to_fp16: bool = option(False, help="store FP32 weights as FP16 in the .bin (half the size)")
    threads: int = option(0, help="CPU inference threads for validation here (0: OpenVINO's default)")
    static_shapes: bool = option(False, help="fix the inputs' symbolic dims to 1 in the IR (the shapes compile "
                                 "validates and the cost model predicts): the CPU plugin runs a dynamic model "
                                 "2-23 % slower, without its snippets fusions; the IR then takes only those shapes")

    def __post_init__(self) -> None:
        for name in [self.device, *self.devices]:
            if name.upper().split(".")[0] not in DEVICES:
                raise UserError(f"backend 'openvino': unknown device '{name}' (known: {', '.join(DEVICES)})")
        if self.performance_hint.upper() not in HINTS:
            raise UserError(f"backend 'openvino': unknown performance_hint '{self.performance_hint}'"
                            f" (known: {', '.join(HINTS)})")


def _load_for_frontend(model: ir.Model, scratch: Path) -> io.BytesIO | str:
    """What OpenVINO's loaders accept: the bytes in memory, or a saved file above 2 GB."""
    payload = onnx_bytes(model)
    if payload is not None:
        return io.BytesIO(payload)
    path = scratch / "model.onnx"
    ir.save(model, path, external_data="model.onnx.data")
    return str(path)


@register_emitter("openvino")
class OpenVinoEmitter(Emitter):
    """OpenVINO IR (.xml/.bin) with a device/run config, validated on the CPU plugin."""

    description = "OpenVINO IR (.xml/.bin) for Intel CPU/GPU/NPU"
    Options = OpenVinoOptions

    def __init__(self) -> None:
        self.options_used = OpenVinoOptions()
        self._reduced = False  # INT8 or FP16 artifact: validated by agreement, not the FP32 bar

    def unsupported_ops(self, model: ir.Model) -> list[str]:
        ops = op_inventory(model)
        # Control flow converts for toy graphs but fails deep inside the CPU plugin on real
        # models (a VAD model with If, OpenVINO 2026.4), so it is refused up front by default.
        refused = [op for op in ops if op in CONTROL_FLOW_OPS]
        return sorted(set(refused) | set(self._frontend_unconverted(model)))

    def _frontend_unconverted(self, model: ir.Model) -> list[str]:
        """Ops the ONNX frontend has no conversion rule for, found by a partial conversion."""
        from openvino.frontend import FrontEndManager

        frontend = FrontEndManager().load_by_framework("onnx")
        with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as scratch:
            try:
                converted = frontend.convert_partially(frontend.load(_load_for_frontend(model, Path(scratch))))
            except Exception as error:
                raise UserError(f"backend 'openvino': ONNX frontend cannot read the model: {_first_line(error)}"
                                ) from None
        missing: set[str] = set()
        for node in converted.get_ops():
            if "FrameworkNode" in node.get_type_name():
                attributes = node.get_attributes()
                domain = attributes.get("ONNX_META_domain", "")
                op = attributes.get("ONNX_META_type", node.get_friendly_name())
                missing.add(op if domain in ("", "ai.onnx") else f"{domain}::{op}")
        return sorted(missing)

    def emit(self, model: ir.Model, folder: Path, options: Mapping[str, Any]) -> EmitResult:
        import openvino as ov

        opts: OpenVinoOptions = self.options(options)
        self.options_used = opts
        xml = folder / "model.xml"
        with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as scratch:
            try:
                # read_model, not convert_model: convert_model's offline transformations fold a
                # BatchNormalization that follows a QDQ Conv into it, and on CPUs with int8 kernels
                # (AVX-512 VNNI) the plugin then ran that IR with cosine 0.61 against the ONNX model
                # (OpenVINO 2026.4). The ONNX frontend's graph is what the plugin itself compiles.
                converted = ov.Core().read_model(_load_for_frontend(model, Path(scratch)))
                # Symbolic dims bound to 1, as ReferenceExecutor.generate_inputs binds them.
                bound = {port.get_any_name(): [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
                         for port in converted.inputs if port.get_partial_shape().is_dynamic}
                dynamic = list(bound)
                if opts.static_shapes and bound:
                    converted.reshape(bound)
                ov.save_model(converted, xml, compress_to_fp16=opts.compress_to_fp16)
            except Exception as error:
                raise UserError(f"backend 'openvino': conversion failed: {_first_line(error)}") from None
        devices = [d.upper() for d in (opts.devices or [opts.device])]
        config = {
            "model": xml.name,
            "weights": xml.with_suffix(".bin").name,
            "device": devices[0] if len(devices) == 1 else f"AUTO:{','.join(devices)}",
            "device_priorities": devices,
            "config": {"PERFORMANCE_HINT": opts.performance_hint.upper()},
            "compress_to_fp16": opts.compress_to_fp16,
            "precision": "int8" if is_quantized(model) else ("fp16" if opts.compress_to_fp16 else "fp32"),
            "openvino_version": ov.get_version(),
        }
        config_path = folder / "openvino_config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        notes = [f"device hints: {', '.join(devices)} ({opts.performance_hint.upper()})"]
        if dynamic:
            notes.append(f"inputs {', '.join(dynamic)} fixed to static shapes (symbolic dims = 1)" if opts.static_shapes
                         else f"inputs {', '.join(dynamic)} keep dynamic dims: OpenVINO's CPU plugin runs them up to "
                              "1.2x slower than static ones (--backend-option static_shapes=true, or reshape at load)")
        result = EmitResult("openvino", xml, files=[xml, xml.with_suffix(".bin"), config_path], notes=notes)
        result.notes.append(f"quantized={is_quantized(model)} compress_to_fp16={opts.compress_to_fp16}")
        self._reduced = is_quantized(model) or opts.compress_to_fp16
        return result

    def validate(self, result: EmitResult, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], *, measure: bool = True) -> None:
        import openvino as ov

        opts = self.options_used
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if opts.threads:
            config["INFERENCE_NUM_THREADS"] = opts.threads
        core = ov.Core()
        try:
            # f32 inference precision: the CPU plugin would otherwise pick bf16/f16 on CPUs that
            # have it, and the FP32 bar (1e-4) would measure that choice, not the artifact.
            compiled = core.compile_model(core.read_model(result.artifact), "CPU", config)
            request = compiled.create_infer_request()
            feeds = {port.any_name: np.ascontiguousarray(inputs[port.any_name]) for port in compiled.inputs}
            request.infer(feeds)
            outputs = [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]
        except Exception as error:
            raise UserError(f"backend 'openvino': CPU plugin failed to run {result.artifact.name}:"
                            f" {_first_line(error)}") from None
        result.validation = compare(reference, by_position(reference, outputs),
                                    reduced=self._reduced)
        result.validation["device"] = "CPU"
        if measure:
            result.latency_ms = time_call(lambda: request.infer(feeds))


def _first_line(error: BaseException) -> str:
    """OpenVINO errors are multi-line C++ reports; keep the line that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(key in line for key in ("No conversion rule", "Unsupported", "not supported", "Exception")):
            return line
    return lines[-1] if lines else type(error).__name__
