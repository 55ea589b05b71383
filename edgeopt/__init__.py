"""edgeopt: a compiler for edge AI models."""

__version__ = "0.1.0"
