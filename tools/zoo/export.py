"""Export a torch module to ONNX the way most models in the wild were exported: unoptimized.

The TorchScript exporter (`dynamo=False`) still works in torch 2.13 and is what produced most
ONNX files in circulation. `do_constant_folding=False` keeps it from folding Conv+BN and shape
arithmetic in eval mode; the zoo exists to give edgeopt's passes that work to do.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .spec import InputSpec, ZooEntry


def export_onnx(module: torch.nn.Module, entry: ZooEntry, specs: tuple[InputSpec, ...],
                args: tuple[torch.Tensor, ...], path: Path, opset: int,
                meta: dict[str, str]) -> None:
    """Trace `module` on `args`, write `path` atomically (a parallel builder never sees half)."""
    axes = {s.name: dict(s.axes) for s in specs}
    axes.update({o: {0: "batch"} for o in entry.outputs})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset,
                          input_names=[s.name for s in specs], output_names=list(entry.outputs),
                          dynamic_axes=axes, do_constant_folding=False)
    try:
        model = onnx.load(str(tmp))
        if entry.postprocess is not None:
            model = entry.postprocess(model)
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
        if has_bn and not any(n.op_type == "BatchNormalization" for n in model.graph.node):
            raise RuntimeError(f"{entry.name}: exporter folded BatchNormalization away")
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Summary:
    nodes: int
    params: int  # elements in initializers and Constant nodes
    file_bytes: int
    op_counts: dict[str, int]


def summarize(path: Path) -> Summary:
    model = onnx.load(str(path))
    g = model.graph
    params = sum(int(np.prod(t.dims)) for t in g.initializer)
    params += sum(numpy_helper.to_array(a.t).size for n in g.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value")
    ops = Counter(n.op_type for n in g.node)
    return Summary(len(g.node), params, path.stat().st_size, dict(ops.most_common()))
