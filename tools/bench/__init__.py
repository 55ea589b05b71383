"""Benchmarks against peers; each prints one table and can write it as markdown."""
