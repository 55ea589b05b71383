"""An example plugin pass: magnitude pruning of Conv/Gemm/MatMul weights.

Load it with `edgeopt compile model.onnx --plugin examples/plugins/prune_small_weights.py
--passes "cleanup,prune-small-weights{threshold=0.01}" --verify`. It is registered
exactly like a built-in pass, shows in `edgeopt passes --plugin ...`, declares a
search space for its option, and declares itself lossy so `--verify` holds it to
a cosine bound instead of element-wise equality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.passes import FloatRange, Pass, PassContext, PassResult, option, register_pass

_WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class PruneSmallWeightsOptions:
    threshold: float = option(0.01, help="zero weights whose magnitude is below this fraction of "
                              "the tensor's largest magnitude", space=FloatRange(1e-4, 0.2, log=True))


@register_pass("prune-small-weights")
class PruneSmallWeights(Pass):
    """Zero Conv/Gemm/MatMul weights below a fraction of each tensor's largest magnitude."""

    Options = PruneSmallWeightsOptions
    numerics = "lossy"
    preserves = ("shapes", "graph")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        zeroed = tensors = 0
        for node in model.graph:
            index = _WEIGHTED_OPS.get(node.op_type)
            if index is None or len(node.inputs) <= index:
                continue
            weight = node.inputs[index]
            if weight is None or weight.const_value is None or not weight.is_initializer():
                continue
            array = weight.const_value.numpy()
            if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
                continue
            cutoff = self.options.threshold * float(np.abs(array).max())
            mask = np.abs(array) < cutoff
            newly = int(np.count_nonzero(mask & (array != 0)))
            if newly:
                weight.const_value = ir.Tensor(np.where(mask, 0, array).astype(array.dtype), name=weight.name)
                zeroed += newly
                tensors += 1
        return PassResult(model, zeroed > 0, counts={"weights_zeroed": zeroed, "tensors": tensors})
