"""Peak activation memory by liveness over a topological schedule, and weight size.

The schedule is the graph's own node order (ONNX keeps graphs topologically
sorted and backends execute them in that order on one stream). A value is
allocated when its producer runs and freed after its last consumer ran; graph
inputs live from the start and graph outputs to the end. When kernels are given,
values that never leave a fused kernel are never materialised and do not count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx_ir as ir

from edgeopt.targets.cost.kernels import Kernel


def _nbytes(value: ir.Value, shapes: Mapping[str, tuple[int, ...]], itemsize: int | None = None) -> int:
    dims = shapes.get(value.name or "")
    if dims is None:
        return 0
    size = itemsize if itemsize is not None else (
        max(1, math.ceil(value.dtype.itemsize)) if value.dtype is not None else 4)
    return math.prod(dims) * size


def peak_activation_bytes(model: ir.Model, shapes: Mapping[str, tuple[int, ...]],
                          kernels: Sequence[Kernel] | None = None) -> int:
    """Largest sum of live activation bytes at any step of the schedule."""
    graph = model.graph
    if kernels is None:
        steps: list[list[ir.Node]] = [[node] for node in graph if node.op_type != "Constant"]
    else:
        steps = [list(kernel.nodes) for kernel in kernels]
    step_of: dict[int, int] = {id(node): i for i, step in enumerate(steps) for node in step}
    last = len(steps) - 1
    outputs = {id(v) for v in graph.outputs}
    # Each materialised value: (first step alive, last step alive, bytes).
    intervals: list[tuple[int, int, int]] = []
    for value in graph.inputs:
        if value.is_initializer():
            continue
        uses = [step_of[id(u)] for u, _ in value.uses() if id(u) in step_of]
        intervals.append((0, last if id(value) in outputs else max(uses, default=0), _nbytes(value, shapes)))
    for i, step in enumerate(steps):
        members = {id(n) for n in step}
        for node in step:
            for value in node.outputs:
                users = [u for u, _ in value.uses()]
                if kernels is not None and users and id(value) not in outputs and \
                        all(id(u) in members for u in users):
                    continue  # stays in registers / cache inside the fused kernel
                end = last if id(value) in outputs else max(
                    (step_of[id(u)] for u in users if id(u) in step_of), default=i)
                intervals.append((i, max(end, i), _nbytes(value, shapes)))
    if not steps:
        return sum(size for _, _, size in intervals)
    live = [0] * len(steps)
    for start, end, size in intervals:
        for step in range(start, end + 1):
            live[step] += size
    return max(live)


def weight_bytes(model: ir.Model, kernels: Sequence[Kernel] | None = None) -> int:
    """Bytes of the weights, at the precision each kernel runs in when kernels are given."""
    if kernels is not None:
        return sum(kernel.weight_bytes for kernel in kernels)
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total
