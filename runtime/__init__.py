"""Artifacts -> tokens: the speculative decoding loop and its backends."""
