"""Activation statistics, collected sample by sample in bounded memory.

One ORT session whose graph also outputs the tensors to calibrate is run on
each sample in turn; every output updates that tensor's fixed-size histogram
and is then dropped. Peak memory is one sample's activations plus the
histograms, however many samples there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.ir.model_io import PROTOBUF_LIMIT, model_bytes
from edgeopt.passes.quant.calibrators import QuantParams, Range, StreamingHistogram, compute_range


@dataclass
class ActivationStats:
    histograms: dict[str, StreamingHistogram] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # of one sample
    samples: int = 0

    def range(self, name: str, method: str, symmetric: bool = False, bits: int = 8,
              percentile: float = 99.999) -> Range:
        return compute_range(self.histograms[name], method, symmetric, bits, percentile)

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.histograms.values())


def session_with_outputs(model: ir.Model, names: Iterable[str], threads: int | None = None,
                         level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                         ) -> ort.InferenceSession:
    """An ORT session over a clone of ``model`` that also outputs ``names``."""
    clone = model.clone()
    wanted = set(names)
    present = {v.name for v in clone.graph.outputs}
    values = {v.name: v for v in clone.graph.inputs}
    for node in clone.graph:
        for value in node.outputs:
            values[value.name] = value
    for name in wanted:
        if name not in present and name in values and name not in {v.name for v in clone.graph.inputs}:
            clone.graph.outputs.append(values[name])
            present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if model_bytes(clone) >= PROTOBUF_LIMIT - 64 * 2**20:
        import tempfile
        from pathlib import Path

        from edgeopt.ir.model_io import save_model

        folder = tempfile.mkdtemp(prefix="edgeopt-calib-")
        path = Path(folder) / "model.onnx"
        save_model(clone, path, external_data=True)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    payload = ir.serde.serialize_model(clone).SerializeToString()
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def collect_statistics(model: ir.Model, tensors: Iterable[str], samples: Iterable[Mapping[str, np.ndarray]],
                       bins: int = 8192, threads: int | None = None) -> ActivationStats:
    """Histograms of ``tensors`` (graph inputs allowed) over ``samples``."""
    names = sorted(set(tensors))
    session = session_with_outputs(model, names, threads)
    outputs = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    stats = ActivationStats({name: StreamingHistogram(bins) for name in names})
    for sample in samples:
        feeds = {k: v for k, v in sample.items() if k in inputs}
        results = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        for name in names:
            array = results.get(name, feeds.get(name))
            if array is None or not np.issubdtype(np.asarray(array).dtype, np.floating):
                continue
            stats.histograms[name].update(array)
            stats.shapes.setdefault(name, tuple(np.shape(array)))
        stats.samples += 1
        del results
    return stats


def params_for(stats: ActivationStats, name: str, method: str, symmetric: bool, bits: int,
               signed: bool | None, percentile: float) -> QuantParams:
    from edgeopt.passes.quant.calibrators import activation_params

    return activation_params(stats.range(name, method, symmetric, bits, percentile), bits, symmetric, signed)
