"""The bundle cache: a pair exported once per (weights, export code, settings, library versions)
into a cache folder (MTP_EDGE_CACHE, default ~/.cache/mtp-edge) and reused by the demo, the
benchmarks, `validate` and the tests.

Several processes may ask for the same bundle at once (pytest-xdist workers, a demo beside a
benchmark): the first one exports it under an exclusive file lock, the others wait on the lock
and then find it written. A bundle appears only when complete (write_bundle renames a staged folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from .manifest import MANIFEST
from .settings import ExportSettings


def cache_root() -> Path:
    return Path(os.environ.get("MTP_EDGE_CACHE") or Path.home() / ".cache" / "mtp-edge")


def code_hash() -> str:
    """The sha256 of every source file the exported graphs depend on (models, quantize, export)."""
    import mtp_edge.export
    import mtp_edge.models
    import mtp_edge.quantize

    sources = sorted(p for pkg in (mtp_edge.models, mtp_edge.export, mtp_edge.quantize)
                     for p in Path(pkg.__file__).parent.rglob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()


@contextlib.contextmanager
def exclusive(lock_path: Path):
    """Hold an exclusive lock on lock_path (created if missing) for the block: one process at a time."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_bundle(pair_dir: Path, root: Path | None = None, *, name: str = "default-pair", settings: ExportSettings) -> Path:
    """The pair in pair_dir (target/ and drafter/ folders) exported with `settings` once into the cache
    folder (`root`, default cache_root()), keyed by its weights, the export code, settings.to_json()
    and library versions."""
    from mtp_edge.export.bundle import library_versions, sha256_file, write_bundle

    if not isinstance(settings, ExportSettings):
        raise TypeError(f"cached_bundle takes settings=ExportSettings(...), got {type(settings).__name__}.")
    pair_dir = Path(pair_dir)
    key = json.dumps({
        "weights": [sha256_file(pair_dir / sub / "model.safetensors") for sub in ("target", "drafter")],
        "code": code_hash(), "settings": settings.to_json(), "versions": library_versions(),
    }, sort_keys=True)
    bundle = (root or cache_root()) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (bundle / MANIFEST).is_file():
        with exclusive(bundle.with_name(bundle.name + ".lock")):
            if not (bundle / MANIFEST).is_file():  # another process may have written it meanwhile
                write_bundle(pair_dir / "target", pair_dir / "drafter", bundle, settings)
    return bundle
