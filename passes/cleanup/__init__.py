"""Cleanup passes: dead code, no-op elimination, constant folding, CSE, dedup."""
