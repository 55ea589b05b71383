"""edgeopt.targets: hardware targets (data files), the cost model, calibration and emitters.

Targets are data: one TOML file per device in ``targets/devices/`` (every figure
with its source); ``host-cpu`` is read off this machine at run time. Emitters
write and validate one backend's artifact.
"""

from edgeopt.targets.catalog import (
    Target,
    builtin_targets,
    get_target,
    list_targets,
    load_target_file,
    register_target,
)
from edgeopt.targets.emitters import EmitResult, Emitter, get_emitter, register_emitter, registered_emitters

__all__ = [
    "EmitResult",
    "Emitter",
    "Target",
    "builtin_targets",
    "get_emitter",
    "get_target",
    "list_targets",
    "load_target_file",
    "register_emitter",
    "register_target",
    "registered_emitters",
]
