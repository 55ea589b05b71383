"""Imports every built-in pass module so their @register_pass decorators run."""

from edgeopt.passes.cleanup import (  # noqa: F401
    cleanup,
    dead_code,
    dedup,
    fold_constants,
    lift_constants,
    noop,
    rnn_states,
    shapes,
)
from edgeopt.passes.fusion import (  # noqa: F401
    conv_bn,
    fuse,
    ort_contrib,
    rules_activation,
    rules_conv,
    rules_layout,
    rules_linear,
)
from edgeopt.passes.quant import fp16, int4, quantize  # noqa: F401
