"""Fusion passes: declarative patterns (onnxscript's rewriter) folded into fewer kernels."""
