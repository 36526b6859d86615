"""Errors raised before any work starts, naming the bad argument and the accepted range."""

from mtp_edge.models.errors import MtpEdgeError


class GenerationError(MtpEdgeError, ValueError):
    """A generation request that cannot be served as asked."""
