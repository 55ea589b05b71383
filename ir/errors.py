"""Error hierarchy shared by every layer.

A ``UserError`` is a mistake in what the user gave us (a file, an option, a
pipeline); it carries a one-line message naming the thing at fault, and the CLI
prints it without a traceback. An ``InternalError`` is our bug; it may carry the
path of a reproducer folder. Only the CLI turns these into exit codes.
"""

from __future__ import annotations

from pathlib import Path


class EdgeoptError(Exception):
    """Base of every error edgeopt raises on purpose."""

    exit_code = 1


class UserError(EdgeoptError):
    """Bad input: the message is one line that names the file, node or option."""

    exit_code = 2


class ModelLoadError(UserError):
    """A model file is missing, unreadable, not ONNX, or unsafe to load."""


class PipelineError(UserError):
    """A pipeline text or config names an unknown pass or a bad option."""


class PluginError(UserError):
    """A plugin failed to load or raised while registering."""


class TargetError(UserError):
    """An unknown target, or a target file that does not validate."""


class PassFailedError(EdgeoptError):
    """A pass raised; ``reproducer`` is the folder holding the input model and pipeline."""

    exit_code = 3

    def __init__(self, message: str, reproducer: Path | None = None) -> None:
        super().__init__(message)
        self.reproducer = reproducer


class InternalError(EdgeoptError):
    """A bug in edgeopt itself."""

    exit_code = 70
