"""The pair this project ships (models/default_pair): where it lies and its held-out prompts."""

from __future__ import annotations

import json
from pathlib import Path


def default_pair_dir() -> Path:
    return Path(__file__).resolve().parent / "default_pair"


def heldout_prompts(pair_dir: Path | None = None) -> list[dict]:
    """Prompts cut from held-out standard-library files (never trained on), shipped with the pair."""
    return json.loads(((pair_dir or default_pair_dir()) / "heldout.json").read_text())["prompts"]


