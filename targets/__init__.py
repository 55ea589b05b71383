"""edgeopt.targets: hardware targets (data files), the cost model, calibration and emitters.

Targets are data: one TOML file per device in ``targets/devices/`` (every figure
with its source); ``host-cpu`` is read off this machine at run time. Emitters
write and validate one backend's artifact.
"""

from edgeopt.targets.catalog import (
    DEVICES_DIR,
    Target,
    builtin_targets,
    get_target,
    list_targets,
    load_target_file,
    register_target,
    target_from_dict,
    unregister_target,
)
from edgeopt.targets.emitters import EmitResult, Emitter, get_emitter, register_emitter, registered_emitters
from edgeopt.targets.host import detect_host_cpu, fingerprint

__all__ = [
    "DEVICES_DIR",
    "EmitResult",
    "Emitter",
    "Target",
    "builtin_targets",
    "detect_host_cpu",
    "fingerprint",
    "get_emitter",
    "get_target",
    "list_targets",
    "load_target_file",
    "register_emitter",
    "register_target",
    "registered_emitters",
    "target_from_dict",
    "unregister_target",
]
