"""drop-zero-rnn-states: RNN/GRU/LSTM initial states that are all zeros become omitted inputs.

Exporters build the zero initial state at run time (Shape -> Gather -> Concat ->
ConstantOfShape, often sliced per layer); the ops already default a missing
initial_h / initial_c to zeros, so the whole computation goes dead.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.registry import register_pass

_RNN_STATE_INPUTS = {"RNN": (5,), "GRU": (5,), "LSTM": (5, 6)}
# Ops whose output is all zeros when their first input is (they only move or select elements).
_ZERO_PRESERVING = frozenset({"Slice", "Reshape", "Expand", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                              "Flatten", "Gather", "Tile", "Concat"})


def _is_zero(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` is provably all zeros (a constant, or a ConstantOfShape(0) moved around)."""
    if value is None or depth > 16:
        return False
    if value.const_value is not None:
        return value.const_value.size <= 1 << 20 and not np.any(value.const_value.numpy())
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "ConstantOfShape":
        attr = node.attributes.get("value")
        return attr is None or not np.any(attr.as_tensor().numpy())
    if node.op_type == "Concat":
        return all(_is_zero(v, depth + 1) for v in node.inputs)
    if node.op_type in _ZERO_PRESERVING:
        return _is_zero(node.inputs[0], depth + 1)
    return False


@register_pass("drop-zero-rnn-states")
class DropZeroRnnStates(Pass):
    """Omit RNN/GRU/LSTM initial states that are all zeros (the ops' default)."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        dropped = 0
        for node in model.graph:
            indices = _RNN_STATE_INPUTS.get(node.op_type)
            if indices is None or node.domain not in ("", "ai.onnx"):
                continue
            for index in indices:
                if index < len(node.inputs) and node.inputs[index] is not None and _is_zero(node.inputs[index]):
                    node.replace_input_with(index, None)
                    dropped += 1
        return PassResult(model, bool(dropped), counts={"initial_states_dropped": dropped} if dropped else {})
