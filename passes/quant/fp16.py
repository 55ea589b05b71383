"""convert-fp16: run the model in FP16, keeping numerically sensitive ops and the I/O in FP32.

The conversion itself is ONNX Runtime's float16 converter (the maintained copy
of onnxconverter-common's, shipped with onnxruntime), which inserts the Casts
at every FP32/FP16 border; this pass decides what stays FP32: the keep list
of op types (Softmax, LayerNormalization, ReduceMean, Exp, Pow... whose inputs
overflow or lose mass in FP16), named nodes, and the graph inputs/outputs
unless ``keep_io_types=false``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import option
from edgeopt.passes.registry import register_pass

# Ops whose FP16 results drift or overflow: exponentials and normalisations (sums over many
# elements), plus the integer/quantization ops the converter must never touch.
SENSITIVE_OPS: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Exp", "Log", "Pow",
    "Sqrt", "Reciprocal", "Div", "Erf", "CumSum", "Range", "QuantizeLinear", "DequantizeLinear",
)


@dataclass
class ConvertFp16Options:
    keep_ops: list[str] = option(default_factory=lambda: list(SENSITIVE_OPS),  # noqa: RUF009
                                 help="op types kept in FP32 (numerically sensitive)")
    keep_nodes: list[str] = option(default_factory=list, help="node names kept in FP32")  # noqa: RUF009
    keep_io_types: bool = option(True, help="keep graph inputs and outputs FP32")


def convert_fp16(model: ir.Model, keep_ops: Iterable[str] = SENSITIVE_OPS, keep_nodes: Iterable[str] = (),
                 keep_io_types: bool = True) -> ir.Model:
    """A new model with everything but the kept ops/nodes in FP16."""
    proto = ir.serde.serialize_model(model)
    block = sorted(set(keep_ops) | set(DEFAULT_OP_BLOCK_LIST))
    converted = convert_float_to_float16(proto, keep_io_types=keep_io_types, op_block_list=block,
                                         node_block_list=list(keep_nodes), disable_shape_infer=False)
    result = ir.serde.deserialize_model(converted)
    # The converter appends the graph-input Casts after their users; later passes (and the
    # pass manager's snapshot clone) need topological order.
    result.graph.sort()
    return result


def replace_model(model: ir.Model, new: ir.Model) -> None:
    """Give ``model`` the graph of ``new`` (converters return a new model; passes work in place)."""
    model.graph = new.graph
    model.ir_version = max(model.ir_version, new.ir_version)
    model.functions.clear()
    model.functions.update(new.functions)


@register_pass("convert-fp16")
class ConvertFp16(Pass):
    """Convert weights and activations to FP16, keeping sensitive ops (Softmax, LayerNorm, Exp...) in FP32."""

    Options = ConvertFp16Options
    numerics = "lossy"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = sum(1 for _ in model.graph)
        new = convert_fp16(model, self.options.keep_ops, self.options.keep_nodes, self.options.keep_io_types)
        casts = sum(1 for n in new.graph if n.op_type == "Cast") - sum(1 for n in model.graph if n.op_type == "Cast")
        keep_ops, keep_nodes = set(self.options.keep_ops), set(self.options.keep_nodes)
        kept = sum(1 for n in new.graph if n.op_type in keep_ops or n.name in keep_nodes)
        replace_model(model, new)
        return PassResult(model, True, counts={"casts_added": casts, "nodes_kept_fp32": kept,
                                               "nodes": before})
