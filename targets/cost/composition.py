"""How isolated kernel times add up inside a model: the terms ``edgeopt calibrate`` fits on networks.

A kernel timed alone runs with its weights and inputs hot in cache; inside a model they were
evicted by the kernels before it. Measured on 30 random networks here (ORT, one thread), a
plain sum of isolated times was off by 12 % on average, worst on networks whose GEMMs read
far more weight bytes than they compute with (2x slower in the model), on depthwise-heavy
ones (inverted residual blocks) and on transformer blocks, whose GEMMs ran 15-20 % slower in
the model than alone while conv kernels ran as timed. The fitted model time is

    run overhead + scale * sum(t) + depthwise_scale * sum(t_depthwise) + gemm_scale * sum(t_gemm)
    + per_kernel * dispatching kernels + layout bytes * layout_s_per_byte
    + weight_stream * sum(max(0, weight bytes / bandwidth - t))  (vector_stream for vector kernels)

where the last term is the part of streaming a kernel's weights from memory (at the target's
bandwidth figure) that the kernel's own time does not cover; it cut the mean error on those
networks from 12 % to 6 %; the GEMMs' own scale took it to 5 % and the transformer networks
from -18 % to within 10 %. Calibration times 45-50 networks and keeps a term beyond the shared
scale and dispatch only where they support it (``compose.fit_composition``); a term left out takes
its neutral value or its parent's (a class scale the shared one).

Where the backend's profiler times each kernel inside a network (ONNX Runtime, OpenVINO), those
in-network timings also train the kernel predictor, a scale per kernel class (vector kernels and
1x1 convs classes of their own) is read off them for what the predictor's fit leaves, and only
the dispatch term is fitted on the totals (``compose.fit_profiled_composition``): the totals alone
could not tell the classes apart (see there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeopt.targets.cost.kernels import Kernel

WEIGHT_READERS = ("conv", "depthwise", "gemm")  # kernels whose weights stream through the cache


def is_vector(kernel: Kernel) -> bool:
    """One output row per weight read: a batch-1 classifier GEMV, an SE 1x1 conv on a pooled vector.

    Their weight streaming composes apart from that of GEMMs over many rows: measured here in
    ONNX Runtime, a 5 MB batch-1 classifier streamed at 22 GB/s inside a MobileNetV2, while
    the 16-token GEMMs of transformer blocks with 25-38 MB of weights reached 9-12 GB/s.
    """
    if kernel.kind == "gemm":
        return kernel.attrs.get("m", 2.0) <= 1
    return kernel.kind == "conv" and kernel.attrs.get("hw", 2.0) <= 1 and \
        kernel.attrs.get("out_elems", 0.0) <= kernel.attrs.get("cout", 0.0)


EXTRA_CLASSES = ("vector", "pointwise")  # composition classes beyond the kernel kinds


def kernel_class(kernel: Kernel) -> str:
    """The class a kernel composes by: ``vector`` (``is_vector``), ``pointwise`` (a 1x1 conv), or its kind.

    1x1 convs apart from spatial ones: profiled in ONNX Runtime, the pointwise convs of
    MobileNetV2/V3 ran at 1.08-1.12x their isolated prediction while the 3x3 convs that fill
    the ResNet-style networks ran at 0.92x.
    """
    if is_vector(kernel):
        return "vector"
    if kernel.kind == "conv" and kernel.attrs.get("k", 0.0) == 1:
        return "pointwise"
    return kernel.kind


def weight_stream_s(kernel: Kernel, isolated_s: float, bandwidth: float) -> float:
    """Seconds of weight streaming the kernel's isolated time does not hide."""
    if kernel.kind not in WEIGHT_READERS or bandwidth <= 0:
        return 0.0
    return max(0.0, kernel.weight_bytes / bandwidth - isolated_s)


@dataclass
class CompositionTerms:
    """One network's kernels summed per fitted term (a row of the composition fit)."""

    isolated_s: float  # kernels other than depthwise and GEMM
    depthwise_s: float
    dispatching: int
    weight_stream_s: float  # of kernels over many rows
    gemm_s: float = 0.0
    vector_stream_s: float = 0.0  # of vector kernels (is_vector)

    @classmethod
    def of(cls, kernels: Sequence[Kernel], isolated: Sequence[float], bandwidth: float) -> CompositionTerms:
        pairs = list(zip(kernels, isolated, strict=True))
        depthwise = sum(t for k, t in pairs if k.kind == "depthwise")
        gemm = sum(t for k, t in pairs if k.kind == "gemm")
        streams = [(is_vector(k), weight_stream_s(k, t, bandwidth)) for k, t in pairs]
        return cls(sum(isolated) - depthwise - gemm, depthwise, sum(1 for k in kernels if k.kind != "free"),
                   sum(w for vector, w in streams if not vector), gemm, sum(w for vector, w in streams if vector))


def kernel_in_model_s(kernel: Kernel, isolated_s: float, composition: Mapping[str, float], bandwidth: float) -> float:
    """A kernel's predicted time inside the model, from its isolated time and the fitted composition."""
    scale = composition["scale"]
    # A profiled calibration has a scale per class, a fit on network totals one for depthwise and
    # GEMM kernels; a class without one (a 1x1 conv seen in too few networks) takes its kind's.
    own = composition.get(f"{kernel_class(kernel)}_scale", composition.get(f"{kernel.kind}_scale", scale))
    seconds = own * isolated_s + (composition["per_kernel_s"] if kernel.kind != "free" else 0.0)
    stream = composition.get("weight_stream", 0.0)
    if is_vector(kernel):
        stream = composition.get("vector_stream", stream)
    seconds += stream * weight_stream_s(kernel, isolated_s, bandwidth)
    # A fitted dispatch credit (negative per_kernel) never takes a kernel below a quarter of its time.
    return max(seconds, 0.25 * scale * isolated_s)
