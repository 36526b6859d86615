"""Errors that reach the user as one line naming the problem and the fix."""


class MtpEdgeError(Exception):
    """Base class: the CLI prints these as a single line instead of a traceback."""


class CheckpointError(MtpEdgeError, ValueError):
    """A checkpoint folder, its config or its tensors are not what the models need."""
