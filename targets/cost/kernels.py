"""Kernel detection: group graph nodes into the kernels a backend would actually run.

A backend never runs an ONNX graph node by node: ONNX Runtime folds BatchNorm into
the Conv and fuses a residual Add and an activation into it (FusedConv / NCHWc
Sum fusion), OpenVINO, TVM and TensorRT fuse whole chains of elementwise ops into
the producing kernel, and every backend that runs quantized graphs absorbs the
QuantizeLinear/DequantizeLinear pairs into the integer kernel. Latency is a sum
over those kernels, not over nodes (nn-Meter's "kernel detection",
https://github.com/microsoft/nn-Meter). No library exposes a backend's fusion
decisions without running it, so the rules are written here, one table per backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from edgeopt.targets.cost.patterns import attention_blocks, islands

CLASSES = ("conv", "depthwise", "gemm", "elementwise", "pooling", "normalization", "softmax",
           "data", "recurrent", "shape", "free", "attention")
PRECISIONS = ("fp32", "fp16", "int8", "int4")

_CONV = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}
_GEMM = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul", "Einsum"}
_POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool"}
_NORM = {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
         "LpNormalization", "RMSNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
         "ReduceL2", "ReduceProd", "ReduceSumSquare", "ArgMax", "ArgMin", "TopK", "CumSum"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Attention", "MultiHeadAttention"}
_RECURRENT = {"LSTM", "GRU", "RNN"}
_DATA = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Pad",
         "Resize", "Upsample", "Expand", "Tile", "ScatterND", "DepthToSpace", "SpaceToDepth",
         "NonZero", "Range", "OneHot"}
# Views and metadata: ORT runs them in place (or folds them), fusing backends drop them.
_FREE = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Constant"}
_UNARY_ACT = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
                "HardSwish", "Tanh", "Exp", "Log", "Erf", "Gelu", "Sqrt", "Pow", "Neg", "Abs", "Max",
                "Min", "Where", "Mish", "Softplus", "Elu", "Selu", "PRelu", "Silu", "Reciprocal",
                "Cast", "Equal", "Less", "Greater", "Not", "And", "Or", "Floor", "Ceil", "Round",
                "Sin", "Cos", "Sign", "QuantizeLinear", "DequantizeLinear", "BiasGelu", "FastGelu"}
SMALL_TENSOR = 64  # int64 tensors up to this many elements are shape arithmetic


@dataclass(frozen=True)
class FusionRules:
    """What one backend fuses. ``epilogue`` ops join the anchor kernel that feeds them."""

    epilogue_anchors: frozenset[str]  # ops that take a fused epilogue
    epilogue_ops: frozenset[str]  # ops that may join an anchor's epilogue
    max_binary: int  # residual Adds (non-constant second input) one epilogue may take
    max_unary: int  # activations one epilogue may take
    fuse_elementwise_chains: bool  # standalone elementwise runs become one kernel
    absorb_qdq: bool = True
    fuse_gelu: bool = True  # Erf-based GELU islands become one kernel
    free_is_free: bool = False  # views cost no dispatch at all (compiled backends)
    binary_ops: frozenset[str] | None = None  # binary epilogue ops allowed (None: any epilogue op)
    binary_anchors: frozenset[str] | None = None  # anchors whose epilogue takes binary ops (None: all)
    same_shape_binary: bool = False  # a binary post-op must not broadcast the kernel's output bigger
    binary_first: bool = False  # a residual Add fuses only before any activation (sum post-op first)
    chain_ops: frozenset[str] | None = None  # ops elementwise chains take (None: epilogue_ops)
    islands_join_epilogue: bool = False  # SiLU / GELU after an anchor become its post-ops
    fuse_attention: bool = False  # MatMul-Softmax-MatMul blocks run as one kernel


_ANY_ELEMENTWISE = frozenset(_ELEMENTWISE - _QDQ - {"Cast"})
# OpenVINO CPU: activations oneDNN takes as convolution / FullyConnected post-ops (checked one by
# one on compiled Conv->op models; Erf, Exp, Pow, Log, Reciprocal, Floor, HardSigmoid, Selu are not).
_OV_POST_OPS = {"BatchNormalization", "Add", "Sum", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "HardSwish",
                "Clip", "LeakyRelu", "Elu", "Softplus", "Abs", "Sqrt", "Neg", "Mish", "Gelu", "PRelu"}
_OV_LONE = {"HardSigmoid", "Selu", "Softplus", "Mish", "Log"}  # own kernel, never in an eltwise chain
RULES: dict[str, FusionRules] = {
    # onnxruntime CPU: ConvBNFusion, ConvAddFusion/ConvMulFusion (constant operands), FusedConv
    # (Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, Tanh), NCHWc Conv+Sum(+activation),
    # MatMulAdd/Gemm + activation, QDQ -> QLinearConv/QLinearMatMul, GeluFusion.
    "onnxruntime": FusionRules(
        epilogue_anchors=frozenset(_CONV | _GEMM),
        epilogue_ops=frozenset({"BatchNormalization", "Add", "Sum", "Mul", "Sub", "Div", "HardSwish", *_UNARY_ACT}),
        max_binary=1, max_unary=1, fuse_elementwise_chains=False, binary_ops=frozenset({"Add", "Sum"})),
    # OpenVINO CPU plugin, read off compiled models' runtime graphs (get_runtime_model(): ops'
    # layerType and originalLayersNames): Convolution takes BN, bias, a residual Add of its own
    # output shape ahead of any activation, and the oneDNN-fusable activations (incl. Swish =
    # x*Sigmoid(x)); an SE scale Mul that broadcasts a [N,C,1,1] gate over the feature map stays
    # its own Eltwise.
    # FullyConnected takes bias, activations and GELU but no residual Add. Reduce (global pools)
    # and MVN (LayerNorm) take activations; Max/AvgPool and Softmax take nothing. HardSigmoid and
    # Selu run as "Math" nodes, Softplus/Mish/Log as lone Eltwise: neither joins a Snippets
    # elementwise chain. MatMul-[scale]-[mask]-Softmax-MatMul runs as one MHA "Subgraph".
    "openvino": FusionRules(
        epilogue_anchors=frozenset(_CONV | _GEMM | {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                                                   "ReduceSum", "LayerNormalization"}),
        epilogue_ops=frozenset(_OV_POST_OPS),
        max_binary=2, max_unary=8, fuse_elementwise_chains=True, free_is_free=True,
        binary_anchors=frozenset(_CONV), same_shape_binary=True, binary_first=True,
        chain_ops=frozenset(_ANY_ELEMENTWISE - _OV_LONE | {"BatchNormalization"}),
        islands_join_epilogue=True, fuse_attention=True),
    # TVM (FuseOps: OutEWiseFusable + injective), TensorRT (pointwise fusion), CoreML/TFLite
    # delegates: any elementwise epilogue.
    "tvm": FusionRules(
        epilogue_anchors=frozenset(_CONV | _GEMM | _POOL | {"LayerNormalization", "Softmax"}),
        epilogue_ops=frozenset(_ANY_ELEMENTWISE | {"BatchNormalization"}),
        max_binary=4, max_unary=8, fuse_elementwise_chains=True, free_is_free=True),
}
for _name in ("tensorrt", "coreml", "tflite"):
    RULES[_name] = RULES["tvm"]


@dataclass
class Kernel:
    """One kernel the backend runs: its nodes, class, precision and static cost."""

    name: str  # the anchor node's name (first node for elementwise runs)
    kind: str  # one of CLASSES
    precision: str
    nodes: list[ir.Node] = field(default_factory=list)
    flops: int = 0
    activation_bytes: int = 0  # values read from or written to other kernels
    weight_bytes: int = 0
    attrs: dict[str, float] = field(default_factory=dict)  # shape features for calibration

    @property
    def bytes(self) -> int:
        return self.activation_bytes + self.weight_bytes

    @property
    def ops(self) -> str:
        return "+".join(node.op_type for node in self.nodes)

    @property
    def node_names(self) -> list[str]:
        return [node.name or f"<{node.op_type}>" for node in self.nodes]


def classify(node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> str:
    op = node.op_type
    if op in _CONV:
        weight = node.inputs[3 if op == "QLinearConv" else 1] if len(node.inputs) > 1 else None
        group = node.attributes.get_int("group", 1)
        if group > 1 and weight is not None and weight.shape is not None and len(weight.shape) > 1 \
                and weight.shape[1] == 1:
            return "depthwise"
        return "conv"
    if op in _GEMM:
        return "gemm"
    if op in _POOL:
        return "pooling"
    if op in _NORM:
        return "normalization"
    if op in _SOFTMAX:
        return "softmax"
    if op in _RECURRENT:
        return "recurrent"
    if op in _FREE:
        return "free"
    if _is_shape_math(node, shapes):
        return "shape"
    if op in _DATA:
        return "data"
    return "elementwise"


def _is_shape_math(node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Shape, Gather on shapes, ConstantOfShape…: int64 bookkeeping whose cost is the dispatch."""
    if node.op_type in ("Shape", "Size", "ConstantOfShape"):
        return True
    for value in node.outputs:
        dims = shapes.get(value.name or "")
        if dims is None or math.prod(dims) > SMALL_TENSOR or value.dtype not in (
                ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL):
            return False
    return bool(node.outputs)


def _consumers(value: ir.Value) -> list[ir.Node]:
    return [user for user, _ in value.uses()]


def _is_const(value: ir.Value | None, constants: set[str]) -> bool:
    return value is None or value.const_value is not None or (value.name or "") in constants


def group_kernels(model: ir.Model, shapes: Mapping[str, tuple[int, ...]], backend: str,
                  precision: Mapping[str, str] | None = None, fp16_as_fp32: bool = False) -> list[Kernel]:
    """The kernels ``backend`` runs for ``model``, in execution order.

    ``fp16_as_fp32``: the backend computes fp16 nodes in fp32 (CostModel.fp16_runs_as_fp32).
    """
    rules = RULES.get(backend, RULES["tvm"])
    precision = precision or {}
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    # Constant nodes are folded into initializers by every backend.
    constants = {v.name for n in graph if n.op_type == "Constant" for v in n.outputs if v.name}
    owner: dict[int, Kernel] = {}
    kernels: list[Kernel] = []
    nodes = _live_nodes(graph)
    patterns = islands(nodes, constants) if rules.fuse_gelu else {}
    island_of = {id(n): members for members in patterns.values() for n in members}
    blocks = attention_blocks(nodes, constants, shapes) if rules.fuse_attention else {}

    def single_consumer(node: ir.Node) -> ir.Node | None:
        if len(node.outputs) != 1 or node.outputs[0].name in outputs:
            return None
        users = _consumers(node.outputs[0])
        return users[0] if len(users) == 1 and id(users[0]) not in owner else None

    def add(kernel: Kernel, node: ir.Node) -> None:
        kernel.nodes.append(node)
        owner[id(node)] = kernel
        # Identity / Dropout after a kernel vanish into it (ORT removes them at level 1).
        nxt = single_consumer(node)
        while nxt is not None and nxt.op_type in _ALIAS:
            kernel.nodes.append(nxt)
            owner[id(nxt)] = kernel
            nxt = single_consumer(nxt)

    for node in nodes:
        if id(node) in owner or node.op_type in _ALIAS:
            continue  # aliases are removed before fusion; they join whichever kernel reaches them
        kind = classify(node, shapes)
        if node.op_type == "Constant":
            continue
        if node.inputs and all(_is_const(v, constants) for v in node.inputs) and node.op_type not in _QDQ:
            # Every input is a constant: the backend folds the node when it loads the model.
            constants.update(v.name for v in node.outputs if v.name)
            continue
        if rules.absorb_qdq and node.op_type == "DequantizeLinear" and _absorbable_dq(node, constants):
            continue  # taken by the kernel that consumes it (see _absorb_inputs)
        if rules.absorb_qdq and node.op_type == "QuantizeLinear" and _feeds_only_dq(node):
            # A Q whose producer is an anchor was absorbed there; one after a non-fused op
            # (or at the graph input) still runs as its own quantize kernel.
            kind = "elementwise"
        kernel = Kernel(node.name or node.op_type, kind, "fp32")
        kernels.append(kernel)
        block = blocks.get(id(node))
        if block is not None and not any(id(n) in owner for n in block):
            kernel.kind = "attention"
            for member in block:
                add(kernel, member)
            continue
        island = patterns.get(id(node))
        if island is not None and not any(id(n) in owner for n in island):
            kernel.kind = "elementwise"
            for member in island:
                add(kernel, member)
            continue
        add(kernel, node)
        if rules.absorb_qdq:
            _absorb_inputs(kernel, node, constants, owner)
        if node.op_type in rules.epilogue_anchors:
            _extend_epilogue(kernel, rules, constants, single_consumer, add, shapes, island_of, owner)
        elif kind == "elementwise" and rules.fuse_elementwise_chains and \
                (rules.chain_ops is None or node.op_type in rules.chain_ops):
            _extend_epilogue(kernel, rules, constants, single_consumer, add, shapes, chain=True)
        if rules.absorb_qdq:
            tail = single_consumer(kernel.nodes[-1])
            if tail is not None and tail.op_type == "QuantizeLinear" and kind not in ("free", "shape"):
                add(kernel, tail)
    if blocks:  # a block is found at its first node but runs once its last input exists
        position = {id(n): i for i, n in enumerate(nodes)}
        kernels.sort(key=lambda k: max(position.get(id(n), -1) for n in k.nodes))
    from edgeopt.targets.cost.measure import measure_kernel  # measure needs this module's tables

    for kernel in kernels:
        measure_kernel(kernel, shapes, constants, precision, fp16_as_fp32)
    return kernels


_ALIAS = {"Identity", "Dropout"}


def _live_nodes(graph: ir.Graph) -> list[ir.Node]:
    """Nodes that contribute to a graph output; dead code is removed by every backend."""
    live: set[int] = set()
    wanted = {id(v) for v in graph.outputs}
    for node in reversed(list(graph)):
        if any(id(v) in wanted for v in node.outputs):
            live.add(id(node))
            wanted.update(id(v) for v in node.inputs if v is not None)
    return [node for node in graph if id(node) in live]


def _absorbable_dq(node: ir.Node, constants: set[str]) -> bool:
    """A DQ of a weight, or of a Q output (an activation pair), runs inside its consumer."""
    source = node.inputs[0]
    users = _consumers(node.outputs[0]) if node.outputs else []
    if not users or any(v.is_graph_output() for v in node.outputs):
        return False  # a DQ producing a graph output runs as its own kernel
    if _is_const(source, constants):
        return True
    producer = source.producer() if source is not None else None
    return producer is not None and producer.op_type == "QuantizeLinear"


def _feeds_only_dq(node: ir.Node) -> bool:
    users = _consumers(node.outputs[0]) if node.outputs else []
    return bool(users) and all(u.op_type == "DequantizeLinear" for u in users)


def _absorb_inputs(kernel: Kernel, node: ir.Node, constants: set[str], owner: dict[int, Kernel]) -> None:
    for value in node.inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear" and id(producer) not in owner \
                and _absorbable_dq(producer, constants):
            kernel.nodes.insert(0, producer)
            owner[id(producer)] = kernel


def _extend_epilogue(kernel: Kernel, rules: FusionRules, constants: set[str], single_consumer, add,
                     shapes: Mapping[str, tuple[int, ...]], island_of: Mapping[int, list[ir.Node]] | None = None,
                     owner: Mapping[int, Kernel] | None = None, chain: bool = False) -> None:
    """Grow ``kernel`` by the ops after it the backend fuses: an anchor's post-ops or an eltwise chain."""
    binary = unary = 0
    anchor = kernel.nodes[-1]
    allowed = (rules.chain_ops or rules.epilogue_ops) if chain else rules.epilogue_ops
    binary_ok = chain or rules.binary_anchors is None or anchor.op_type in rules.binary_anchors
    anchor_dims = shapes.get(anchor.outputs[0].name or "") if anchor.outputs else None
    # ORT fuses a MatMul's epilogue only for 2-D inputs (MatMulAddFusion -> Gemm); a batched
    # MatMul keeps just a constant scale (FusedMatMul alpha).
    batched = rules.max_binary == 1 and anchor.op_type == "MatMul" and len(
        shapes.get(anchor.inputs[0].name or "", ()) if anchor.inputs[0] is not None else ()) > 2
    while True:
        nxt = single_consumer(kernel.nodes[-1])
        if nxt is None and not chain and rules.islands_join_epilogue and island_of is not None:
            # x * Sigmoid(x) / GELU(x) read the kernel's output twice: oneDNN takes them as one post-op.
            if unary < rules.max_unary and _join_island(kernel, island_of, owner or {}, add):
                unary += 1
                continue
            return
        if nxt is None or nxt.op_type not in allowed:
            return
        if batched and not (nxt.op_type in ("Mul", "Div") and all(
                _is_const(v, constants) and _numel(tuple(v.const_value.shape.numpy()) if v is not None and
                                                   v.const_value is not None else ()) <= 1
                for v in nxt.inputs if v is not None and v is not kernel.nodes[-1].outputs[0])):
            return
        other = [v for v in nxt.inputs if v is not None and v is not kernel.nodes[-1].outputs[0]]
        is_binary = any(not _is_const(v, constants) for v in other)
        if nxt.op_type in ("BatchNormalization",) or (not is_binary and nxt.op_type in ("Add", "Mul", "Sub", "Div")):
            pass  # folded into weights / bias: free on every backend
        elif is_binary:
            if not binary_ok or binary >= rules.max_binary or (rules.binary_first and unary and not chain) or (
                    rules.binary_ops is not None and nxt.op_type not in rules.binary_ops):
                return
            if rules.same_shape_binary and not chain and anchor_dims is not None and \
                    shapes.get(nxt.outputs[0].name or "") != anchor_dims:
                return  # broadcasting a small output over a bigger tensor is no post-op (SE scale)
            binary += 1
        else:
            if unary >= rules.max_unary:
                return
            unary += 1
        add(kernel, nxt)


def _join_island(kernel: Kernel, island_of: Mapping[int, list[ir.Node]], owner: Mapping[int, Kernel],
                 add) -> bool:
    tail = kernel.nodes[-1]
    if len(tail.outputs) != 1 or tail.outputs[0].is_graph_output():
        return False
    users = _consumers(tail.outputs[0])
    members = island_of.get(id(users[0])) if users else None
    if members is None or any(id(u) not in {id(m) for m in members} for u in users):
        return False
    rest = [m for m in members if owner.get(id(m)) is not kernel]
    inside = {id(n) for n in (*kernel.nodes, *members)}
    for member in rest:
        if id(member) in owner:
            return False
        for value in member.inputs:  # the island may read only the kernel's values and constants
            producer = value.producer() if value is not None else None
            if value is not None and value.const_value is None and not value.is_initializer() and (
                    producer is None or (id(producer) not in inside and producer.op_type != "Constant")):
                return False
    for member in rest:
        add(kernel, member)
    return True


def _numel(dims: Iterable[int] | None) -> int:
    return math.prod(dims) if dims is not None else 0


_NCHWC_KINDS = {"conv", "depthwise", "pooling"}
# Ops the NCHWc transformer runs in whichever layout their inputs have (no reorder either way).
_NCHWC_NEUTRAL = {"Add", "Sum", "Concat", "Resize", "Upsample", "Relu", "Tanh", "LeakyRelu", "BatchNormalization",
                  "Identity", "Dropout"}


def layout_boundary_bytes(kernels: list[Kernel], shapes: Mapping[str, tuple[int, ...]], backend: str) -> int:
    """Bytes ONNX Runtime's NCHWc layout reorders move (ReorderInput / ReorderOutput nodes).

    ORT's CPU provider runs convs and pools in a blocked NCHWc layout and converts every 4-D
    activation that crosses to or from a kernel without an NCHWc form (SiLU, SE Mul, Flatten,
    …), once per value. Other backends pick layouts inside their own fused graph: 0.
    """
    if backend != "onnxruntime":
        return 0
    kernel_of = {id(n): k for k in kernels for n in k.nodes}
    total = 0
    for kernel in kernels:
        for node in kernel.nodes:
            for value in node.outputs:
                dims = shapes.get(value.name or "")
                if dims is None or len(dims) != 4:
                    continue
                users = {id(kernel_of[id(u)]): kernel_of[id(u)] for u, _ in value.uses()
                         if id(u) in kernel_of and kernel_of[id(u)] is not kernel}
                if _neutral(kernel):
                    continue
                capable = _nchwc(kernel)
                if any(_nchwc(k) != capable and not _neutral(k) for k in users.values()):
                    total += math.prod(dims) * 4
    return total


def _nchwc(kernel: Kernel) -> bool:
    # Only float32 convs and pools have NCHWc kernels; QLinearConv runs NHWC behind a Transpose
    # at the quantized region's edges, fp16 convs run plain NCHW.
    return kernel.kind in _NCHWC_KINDS and kernel.precision == "fp32"


def _neutral(kernel: Kernel) -> bool:
    if kernel.precision != "fp32":
        return True  # no reorder between quantized / half-precision kernels (see _nchwc)
    return kernel.kind not in _NCHWC_KINDS and all(n.op_type in _NCHWC_NEUTRAL for n in kernel.nodes)
