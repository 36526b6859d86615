"""Backends: eager PyTorch, ExecuTorch (.pte) and ONNX Runtime, all behind runtime.backend.Backend."""

from __future__ import annotations

from pathlib import Path

BUNDLE_BACKENDS = ("pte", "onnx")


def open_bundle(bundle_dir: str | Path, backend: str | None = None, *, threads: int | None = None):
    """The backend that runs an exported bundle: `backend` (pte or onnx), or the bundle's first format."""
    from mtp_edge.export.manifest import BundleError, read_manifest

    if backend is None:
        backend = read_manifest(bundle_dir, verify_hashes=False).formats[0]
    if backend == "pte":
        from .pte import PteBackend

        return PteBackend(bundle_dir)
    if backend == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(bundle_dir, threads=threads)
    raise BundleError(f"--backend {backend} cannot run a bundle; use one of {', '.join(BUNDLE_BACKENDS)} (or --model DIR for eager).")
