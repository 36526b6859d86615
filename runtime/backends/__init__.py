"""Backends behind runtime.backend.Backend."""
