"""The cost model: fusion-aware kernels, roofline bounds, liveness memory, calibrated latency.

    from edgeopt.targets import get_target
    from edgeopt.targets.cost import CostModel
    cost = CostModel(get_target("host-cpu"))          # uses `edgeopt calibrate`'s file if present
    cost.latency(model, {"conv3": "int8"})            # seconds; CostQuery protocol for passes
"""

from edgeopt.targets.cost.kernels import CLASSES, RULES, FusionRules, Kernel, group_kernels
from edgeopt.targets.cost.memory import peak_activation_bytes, weight_bytes
from edgeopt.targets.cost.model import CostModel, Estimate, KernelEstimate
from edgeopt.targets.cost.roofline import DEFAULT_FACTORS, Roofline, effective_peak, roofline

__all__ = [
    "CLASSES",
    "DEFAULT_FACTORS",
    "RULES",
    "CostModel",
    "Estimate",
    "FusionRules",
    "Kernel",
    "KernelEstimate",
    "Roofline",
    "effective_peak",
    "group_kernels",
    "peak_activation_bytes",
    "roofline",
    "weight_bytes",
]
