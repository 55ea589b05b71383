"""Shape and dtype analysis with symbolic dimensions kept.

ONNX's own inference (with data propagation) runs through onnx-ir's
helper that strips large initializers first so it scales to big
models. Symbolic dims (``batch``) stay symbolic; :func:`bind_shape` turns a
shape into integers for cost formulas by binding each symbol to a size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from edgeopt.ir.analysis import AnalysisManager, register_analysis

_LOG = logging.getLogger(__name__)

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
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)

    try:
        # onnx-ir's helper strips large initializers before serializing, so this scales to big models.
        inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    except Exception as error:  # onnx's inference gave up: the model keeps the types it had
        _LOG.debug("shape inference failed: %s", error)
    else:
        _merge(model, inferred)
    table: dict[str, TensorInfo] = {}
    for value in _all_values(model.graph):
        if value.name:
            table[value.name] = TensorInfo(value.dtype, value.shape)
    return table


def _merge(model: ir.Model, inferred: ir.Model) -> None:
    """Copy inferred types and shapes onto the model's values (all graphs, matched by name).

    Not onnx-ir's ShapeInferencePass merge: it sets ``dtype`` only, which turns
    an untyped value inferred as a sequence or optional into a tensor (a
    SequenceConstruct output became float[5] and ORT then refused the model).
    Here the whole type is taken whenever it differs.
    """
    for original_graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=False):
        inferred_values = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(original_graph).items():
            found = inferred_values.get(name)
            if found is None:
                continue
            if found.type is not None and value.type != found.type:
                value.type = found.type
            if found.shape is not None and value.shape != found.shape:
                value.shape = found.shape


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


@register_analysis("shapes")
def _shapes_analysis(model: ir.Model, manager: AnalysisManager) -> dict[str, TensorInfo]:
    del manager
    return infer_shapes(model)
