"""fold-constants: evaluate subgraphs whose inputs are all constants.

Built on onnxscript's constant folder (it evaluates with the ONNX reference
implementation, knows shape-only ops like Shape/Size and skips random ops).
What we add is the size policy, so folding never bloats the file. Folding is
first tried on a clone (onnx-ir clones share tensors, so this is cheap): if
the weights then take at most ``growth_ratio`` times their bytes before, the
model is folded the same way. Otherwise each fold is judged alone: a node is
folded only if its result is small (``always_fold_bytes``, e.g. a shape
vector) or at most ``growth_ratio`` times the bytes of the constant inputs it
frees (inputs nobody else reads). A whole-model check first matters because
exporters slice one weight into gates and concatenate them back (LSTM/GRU):
no single Slice frees its input, but all of them together do.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from edgeopt.ir.model_io import model_bytes
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.options import FloatRange, IntRange, option
from edgeopt.passes.registry import register_pass

logger = logging.getLogger(__name__)

_NON_DETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                                "Multinomial", "Bernoulli", "Dropout"})


@dataclass
class FoldConstantsOptions:
    input_size_limit: int = option(
        1 << 20, help="largest input tensor (elements) a folded node may read",
        space=IntRange(1 << 10, 1 << 24, log=True))
    output_size_limit: int = option(
        1 << 20, help="largest tensor (elements) folding may create; bigger results stay computed")
    growth_ratio: float = option(
        1.0, help="a fold may create at most this many bytes per byte of constant input it frees",
        space=FloatRange(0.5, 4.0))
    always_fold_bytes: int = option(1024, help="results up to this size always fold (shape vectors)")


def _static_bytes(value: ir.Value) -> int | None:
    if value.shape is None or value.dtype is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return math.prod(value.shape) * value.dtype.itemsize


def _freed_bytes(node: ir.Node) -> int:
    """Bytes of the constant inputs only ``node`` reads: what folding it removes from the file."""
    freed = 0
    for value in {v for v in node.inputs if v is not None}:
        if value.const_value is not None and not value.is_graph_output() \
                and all(user is node for user, _ in value.uses()):
            freed += value.const_value.nbytes
    return freed


class _SizePolicy:
    """The folder's ``should_fold`` hook: refuse random ops, and folds known in advance to grow the file."""

    def __init__(self, options: FoldConstantsOptions, per_node: bool = True) -> None:
        self.options = options
        self.per_node = per_node
        self.refused = 0

    def allows(self, node: ir.Node, produced: float) -> bool:
        if not self.per_node:
            return True
        if produced <= self.options.always_fold_bytes or produced <= self.options.growth_ratio * _freed_bytes(node):
            return True
        self.refused += 1
        return False

    def __call__(self, node: ir.Node) -> bool | None:
        if node.op_type in _NON_DETERMINISTIC and node.domain in ("", "ai.onnx"):
            return False
        sizes = [_static_bytes(out) for out in node.outputs]
        if any(s is None for s in sizes):
            return None  # decided once evaluated, in _SizeCappedFolder.new_initializer
        return None if self.allows(node, sum(sizes)) else False  # type: ignore[arg-type]


class _SizeCappedFolder(FoldConstantsPass):
    """onnxscript's folder with the growth check also applied to results whose size was unknown up front."""

    def __init__(self, policy: _SizePolicy, **kwargs: object) -> None:
        super().__init__(should_fold=policy, **kwargs)  # type: ignore[arg-type]
        self.policy = policy

    def process_node(self, node: ir.Node, is_function: bool) -> object:
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and node.attributes:
            # onnxscript rewrites CastLike into a Cast without its attributes, which drops
            # saturate=0 / round_mode and changes float8 results (onnx node test
            # castlike_no_saturate_FLOAT_to_FLOAT8E5M2): such a CastLike stays as it is.
            return None
        try:
            return super().process_node(node, is_function)
        except RuntimeError as error:
            # One of onnxscript's partial evaluators failed on an unusual node (e.g. SplitToSequence
            # with a scalar split): leave that node computed instead of failing the whole pass.
            logger.debug("not folding %s (%s): %s", node.name, node.op_type, error.__cause__ or error)
            return None

    def new_initializer(self, node: ir.Node, array: object) -> ir.Value | None:
        nbytes = getattr(array, "nbytes", None)
        if nbytes is not None and not self.policy.allows(node, nbytes):
            return None
        return super().new_initializer(node, array)


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold nodes whose inputs are all constants into initializers, never growing the file."""

    Options = FoldConstantsOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = len(model.graph)
        policy = _SizePolicy(self.options)
        limits = {"shape_inference": False, "input_size_limit": self.options.input_size_limit,
                  "output_size_limit": self.options.output_size_limit}
        before = model_bytes(model)
        modified = _SizeCappedFolder(policy, **limits)(model).modified
        if policy.refused:
            # Some folds were refused one by one; try them all together on a clone.
            trial = model.clone()
            _SizeCappedFolder(_SizePolicy(self.options, per_node=False), **limits)(trial)
            RemoveUnusedNodesPass()(trial)
            allowed = max(before * self.options.growth_ratio, before + self.options.always_fold_bytes)
            if model_bytes(trial) <= allowed:
                unbounded = _SizeCappedFolder(_SizePolicy(self.options, per_node=False), **limits)
                modified |= unbounded(model).modified
        folded = nodes - len(model.graph)
        return PassResult(model, modified, counts={"nodes_folded": folded} if folded else {})
