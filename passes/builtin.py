"""Imports every built-in pass module so their @register_pass decorators run."""

from edgeopt.passes.cleanup import cleanup, dead_code, dedup, fold_constants, noop  # noqa: F401
from edgeopt.passes.fusion import conv_bn  # noqa: F401
