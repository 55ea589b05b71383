"""Shape and dtype analysis with symbolic dimensions kept.

ONNX's own inference (with data propagation) runs through onnx-ir's
ShapeInferencePass, which strips large initializers first so it scales to big
models. Symbolic dims (``batch``) stay symbolic; :func:`bind_shape` turns a
shape into integers for cost formulas by binding each symbol to a size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from edgeopt.ir.analysis import AnalysisManager, register_analysis

# Symbolic dims with no binding are taken as 1: costs are then per sample.
DEFAULT_DIM = 1


@dataclass(frozen=True)
class TensorInfo:
    dtype: ir.DataType | None
    shape: ir.Shape | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def describe(self) -> str:
        dtype = self.dtype.name.lower() if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dtype}[?]"
        return f"{dtype}[{','.join(str(d) for d in self.shape)}]"


def bind_shape(shape: ir.Shape | None, bindings: Mapping[str, int] | None = None) -> tuple[int, ...] | None:
    """Concrete dims for a shape: symbols from ``bindings`` (else 1); None if rank unknown."""
    if shape is None:
        return None
    bindings = bindings or {}
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(bindings.get(str(dim.value), DEFAULT_DIM) if dim.value else DEFAULT_DIM)
    return tuple(dims)


def is_fully_known(shape: ir.Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def infer_shapes(model: ir.Model) -> dict[str, TensorInfo]:
    """Run ONNX shape inference on the model (annotating its values) and return a table."""
    # strict_mode off: a node inference cannot handle leaves its outputs unknown
    # instead of failing the whole model.
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    table: dict[str, TensorInfo] = {}
    for value in _all_values(model.graph):
        if value.name:
            table[value.name] = TensorInfo(value.dtype, value.shape)
    return table


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


@register_analysis("shapes")
def _shapes_analysis(model: ir.Model, manager: AnalysisManager) -> dict[str, TensorInfo]:
    del manager
    return infer_shapes(model)
