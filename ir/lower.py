"""Lower a PyTorch module or ExportedProgram into the IR.

torch.onnx's dynamo exporter already produces an onnx-ir ``Model`` (the same
library our IR is built on), so lowering is the export plus our checks. The
exporter's own optimizer is off by default: the point of edgeopt's pipeline
is to do that work itself and report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from edgeopt.ir.errors import UserError

DEFAULT_EXPORT_OPSET = 18


def from_torch(
    module: Any,
    example_inputs: tuple[Any, ...] | Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_shapes: Mapping[str, Any] | Sequence[Any] | None = None,
    opset: int = DEFAULT_EXPORT_OPSET,
    optimize: bool = False,
) -> ir.Model:
    """Export ``module`` (an ``nn.Module`` or ``torch.export.ExportedProgram``) to the IR.

    ``dynamic_shapes`` follows ``torch.export``'s format, e.g.
    ``{"x": {0: torch.export.Dim("batch")}}`` keeps the batch dim symbolic.
    """
    try:
        import torch
    except ImportError as error:  # torch is an optional extra
        raise UserError("lowering a torch module needs torch: pip install 'edgeopt[torch]'") from error
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if isinstance(module, torch.nn.Module):
        module = module.eval()
    elif not isinstance(module, torch.export.ExportedProgram):
        raise UserError(f"from_torch needs an nn.Module or ExportedProgram, got {type(module).__name__}")
    program = torch.onnx.export(
        module,
        example_inputs,
        input_names=list(input_names) if input_names else None,
        output_names=list(output_names) if output_names else None,
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        dynamo=True,
        optimize=optimize,
        verbose=False,
    )
    model = program.model
    # Weights live in torch tensors owned by the program; make them plain
    # numpy-backed tensors so the model outlives the exporter's objects.
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and not isinstance(tensor, ir.Tensor):
            value.const_value = ir.Tensor(tensor.numpy(), name=value.name)
    return model
