"""quantize-int4-weights: block-wise INT4 weight-only quantization of MatMul/Gemm weights.

Two forms, both written by ONNX Runtime's MatMulNBitsQuantizer (the
maintained implementation, with its C++ packing kernels):

* ``format=matmulnbits``: ORT's com.microsoft MatMulNBits (what ORT's CPU and
  GPU kernels run fast); the default where the target's backend is ONNX Runtime.
* ``format=qdq``: a standard DequantizeLinear with int4/uint4 data and
  ``block_size`` (opset 21) feeding the MatMul, for every other backend. The
  model is converted to opset 21 with onnx's version converter first.

Gemm nodes with a constant weight are first rewritten as MatMul (+ Add for
the bias) because both forms only take MatMul; activations stay float.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import version_converter

from edgeopt.ir.errors import PipelineError
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import Choice, IntRange, option
from edgeopt.passes.quant.fp16 import replace_model
from edgeopt.passes.registry import register_pass


@dataclass
class Int4Options:
    block_size: int = option(32, help="weights per quantization block along K (power of two, >= 16)",
                             space=Choice((16, 32, 64, 128)))
    symmetric: bool = option(True, help="symmetric int4 (no zero points)")
    format: Literal["auto", "matmulnbits", "qdq"] = option(
        "auto", help="MatMulNBits (ORT) or DequantizeLinear int4 at opset 21; auto follows the target's backend")
    min_elements: int = option(4096, help="leave weights smaller than this in float",
                               space=IntRange(0, 1 << 20, log=False))

    def validate(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"option 'block_size={self.block_size}': must be a power of two >= 16")


def _gemm_to_matmul(model: ir.Model, only: set[str] | None) -> int:
    """Rewrite Gemm(A, const B, C) without transA/alpha/beta as MatMul(A, B') + C."""
    rewritten = 0
    for node in list(model.graph):
        if node.op_type != "Gemm" or (only is not None and node.name not in only):
            continue
        weight = node.inputs[1]
        attrs = node.attributes
        if weight is None or weight.const_value is None or attrs.get_int("transA", 0) \
                or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            continue
        array = weight.const_value.numpy()
        if attrs.get_int("transB", 0):
            array = array.T
        new_weight = ir.Value(name=f"{weight.name}_kn", const_value=ir.tensor(np.ascontiguousarray(array),
                                                                              name=f"{weight.name}_kn"))
        model.graph.register_initializer(new_weight)
        output = node.outputs[0]
        matmul = ir.Node("", "MatMul", [node.inputs[0], new_weight], name=node.name,
                         outputs=[ir.Value(name=f"{output.name}_matmul")])
        new_nodes = [matmul]
        result = matmul.outputs[0]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            add = ir.Node("", "Add", [result, node.inputs[2]], name=f"{node.name}_bias",
                          outputs=[ir.Value(name=f"{output.name}_biased")])
            new_nodes.append(add)
            result = add.outputs[0]
        model.graph.insert_after(node, new_nodes)
        was_output, name = output.is_graph_output(), output.name
        output.replace_all_uses_with(result, replace_graph_outputs=True)
        if was_output:  # the graph output keeps its name
            output.name, result.name = f"{name}_gemm_unused", name
        model.graph.remove(node, safe=True)
        rewritten += 1
    return rewritten


def quantize_int4(model: ir.Model, block_size: int = 32, symmetric: bool = True, fmt: str = "matmulnbits",
                  nodes: Iterable[str] | None = None, min_elements: int = 4096) -> tuple[ir.Model, int]:
    """A new model with the chosen MatMul/Gemm weights in block INT4; returns it and the count."""
    only = set(nodes) if nodes is not None else None
    work = model.clone()
    _gemm_to_matmul(work, only)
    small = [n.name for n in work.graph if n.op_type == "MatMul" and n.inputs[1] is not None
             and n.inputs[1].const_value is not None and n.inputs[1].const_value.size < min_elements]
    proto = ir.serde.serialize_model(work)
    onnx_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=21)
    if fmt == "qdq" and onnx_opset < 21:
        proto = version_converter.convert_version(proto, 21)
    include = None if only is None else [n for n in only]
    # Imported here: that module calls logging.basicConfig(level=INFO) on import, which would
    # flood every edgeopt command with onnx-ir/onnxscript INFO lines.
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(proto, block_size=block_size, is_symmetric=symmetric,
                                     nodes_to_exclude=small, nodes_to_include=include,
                                     quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    out: onnx.ModelProto = quantizer.model.model
    kind = "DequantizeLinear" if fmt == "qdq" else "MatMulNBits"
    count = sum(1 for n in out.graph.node if n.op_type == kind)
    return ir.serde.deserialize_model(out), count


def default_int4_format(ctx: PassContext) -> str:
    backend = getattr(ctx.target, "default_backend", "onnxruntime") if ctx.target is not None else "onnxruntime"
    return "matmulnbits" if backend == "onnxruntime" else "qdq"


@register_pass("quantize-int4-weights")
class QuantizeInt4Weights(Pass):
    """Quantize MatMul/Gemm weights to block-wise INT4 (MatMulNBits, or DequantizeLinear int4 at opset 21)."""

    Options = Int4Options
    numerics = "lossy"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        fmt = self.options.format if self.options.format != "auto" else default_int4_format(ctx)
        if fmt not in ("matmulnbits", "qdq"):
            raise PipelineError(f"pass '{self.name}': option 'format={fmt}' is not matmulnbits or qdq")
        new, count = quantize_int4(model, self.options.block_size, self.options.symmetric, fmt,
                                   min_elements=self.options.min_elements)
        if count == 0:
            return PassResult(model, False, notes=["no MatMul/Gemm with a constant 2-D weight to quantize"])
        replace_model(model, new)
        return PassResult(model, True, counts={"int4_weights": count},
                          notes=[f"format {fmt}, block {self.options.block_size}"])
