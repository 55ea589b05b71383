"""How isolated kernel times add up inside a model: the terms ``edgeopt calibrate`` fits on networks.

A kernel timed alone runs with its weights and inputs hot in cache; inside a model they were
evicted by the kernels before it. Measured on 30 random networks here (ORT, one thread), a
plain sum of isolated times was off by 12 % on average, worst on networks whose GEMMs read
far more weight bytes than they compute with (2x slower in the model) and on depthwise-heavy
ones (inverted residual blocks). The fitted model time is

    run overhead + scale * sum(t) + depthwise_scale * sum(t_depthwise)
    + per_kernel * dispatching kernels + layout bytes * layout_s_per_byte
    + weight_stream * sum(max(0, weight bytes / bandwidth - t))

where the last term is the part of streaming a kernel's weights from memory (at the target's
bandwidth figure) that the kernel's own time does not cover; it cut the mean error on those
networks from 12 % to 6 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeopt.targets.cost.kernels import Kernel

WEIGHT_READERS = ("conv", "depthwise", "gemm")  # kernels whose weights stream through the cache


def weight_stream_s(kernel: Kernel, isolated_s: float, bandwidth: float) -> float:
    """Seconds of weight streaming the kernel's isolated time does not hide."""
    if kernel.kind not in WEIGHT_READERS or bandwidth <= 0:
        return 0.0
    return max(0.0, kernel.weight_bytes / bandwidth - isolated_s)


@dataclass
class CompositionTerms:
    """One network's kernels summed per fitted term (a row of the composition fit)."""

    isolated_s: float  # kernels other than depthwise
    depthwise_s: float
    dispatching: int
    weight_stream_s: float

    @classmethod
    def of(cls, kernels: Sequence[Kernel], isolated: Sequence[float], bandwidth: float) -> CompositionTerms:
        depthwise = sum(t for k, t in zip(kernels, isolated, strict=True) if k.kind == "depthwise")
        return cls(sum(isolated) - depthwise, depthwise, sum(1 for k in kernels if k.kind != "free"),
                   sum(weight_stream_s(k, t, bandwidth) for k, t in zip(kernels, isolated, strict=True)))


def kernel_in_model_s(kernel: Kernel, isolated_s: float, composition: Mapping[str, float], bandwidth: float) -> float:
    """A kernel's predicted time inside the model, from its isolated time and the fitted composition."""
    scale = composition["scale"]
    own = composition.get("depthwise_scale", scale) if kernel.kind == "depthwise" else scale
    seconds = own * isolated_s + (composition["per_kernel_s"] if kernel.kind != "free" else 0.0)
    seconds += composition.get("weight_stream", 0.0) * weight_stream_s(kernel, isolated_s, bandwidth)
    # A fitted dispatch credit (negative per_kernel) never takes a kernel below a quarter of its time.
    return max(seconds, 0.25 * scale * isolated_s)
