"""Exports shared by every test of one pytest run, across pytest-xdist workers.

An export costs from seconds (ONNX of a tiny pair) to minutes (a quantized XNNPACK program), and
several test files read the same bundle: the same pair exported with the same ExportSettings is
exported once per run, not once per file or per worker. `run_dir` is one folder for the whole run
(under pytest-xdist: the parent of the workers' own base temp folders), and `shared_bundle`
exports into it under a file lock: the first process to ask exports, the others wait for it and
read the same folder. Shared bundles are read-only for the tests: copy one before changing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mtp_edge.export.cache import exclusive


def run_dir(tmp_path_factory) -> Path:
    """A folder of this pytest run that every xdist worker sees (and no other run)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    shared.mkdir(exist_ok=True)
    return shared


def shared_bundle(root: Path, pair_dirs: tuple[Path, Path], settings) -> Path:
    """The pair (target dir, drafter dir) exported with `settings` (an ExportSettings), once per run.

    The bundle is root/bundles/<label>/bundle, alone in its folder (tests check that an export
    leaves nothing beside the bundle); the lock files live one level up.
    """
    from mtp_edge.export.bundle import write_bundle

    key = json.dumps({"pair": [str(Path(p).resolve()) for p in pair_dirs], "settings": settings.to_json()}, sort_keys=True)
    label = "-".join([Path(pair_dirs[0]).parent.name, settings.backend, "+".join(settings.formats),
                      hashlib.sha256(key.encode()).hexdigest()[:12]])
    out = root / "bundles" / label / "bundle"
    if not (out / "manifest.json").is_file():
        with exclusive(root / "bundles" / f"{label}.lock"):
            if not (out / "manifest.json").is_file():  # another worker may have written it meanwhile
                write_bundle(*pair_dirs, out, settings, progress=False)
    return out
