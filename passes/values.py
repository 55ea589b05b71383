"""Reading constant inputs, the question most rewrite checks start with."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data when it is an initializer or a Constant node's output; None otherwise."""
    if value is None:
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant node: treat it as not constant, the checker reports it
        return None
    return None if tensor is None else tensor.numpy()
