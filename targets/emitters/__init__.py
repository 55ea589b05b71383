"""Backend emitters: write the artifact for one runtime and validate it where it runs."""

from edgeopt.targets.emitters.base import (
    EmitResult,
    Emitter,
    get_emitter,
    register_emitter,
    registered_emitters,
)

__all__ = ["EmitResult", "Emitter", "get_emitter", "register_emitter", "registered_emitters"]
