"""Layout chains: consecutive Transpose / Reshape / Unsqueeze merged, Squeeze+Reshape(-1) of 1-D removed.

All are onnxscript's rules (each checks what makes the merge legal: constant
shapes, no 0 that would copy from the dropped intermediate, non-negative
axes). Cast+Cast is not taken: dropping an intermediate cast changes rounding.
"""

from __future__ import annotations

from onnxscript.rewriter.rules.common import _basic_rules

from edgeopt.passes.fusion.registry import PRIORITY_LAYOUT, register_fusion

register_fusion("transpose-transpose", _basic_rules.transpose_transpose_rule, priority=PRIORITY_LAYOUT,
                summary="two Transposes composed into one (or removed when they cancel)")
register_fusion("reshape-reshape", _basic_rules.reshape_reshape_rule, priority=PRIORITY_LAYOUT, min_opset=14,
                summary="Reshape of a Reshape reads the original tensor")
register_fusion("unsqueeze-unsqueeze", _basic_rules.unsqueeze_unsqueeze_rule, priority=PRIORITY_LAYOUT,
                min_opset=13, summary="two Unsqueezes merged into one")
register_fusion("squeeze-reshape-1d", _basic_rules.squeeze_reshape_1d_rule, priority=PRIORITY_LAYOUT,
                min_opset=13, summary="Reshape(Squeeze(x), [-1]) of a 1-D x removed")
