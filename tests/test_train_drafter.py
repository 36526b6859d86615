"""train-drafter end to end on a small slice: writes a folder both loaders read, resumes, is deterministic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma4AssistantForCausalLM

from mtp_edge.models import load_drafter
from mtp_edge.models.shipped import default_pair_dir

EXE = str(Path(sys.executable).with_name("mtp-edge"))
TARGET = default_pair_dir() / "target"
ARGS = ["--hidden", "32", "--intermediate", "64", "--heads", "2", "--centroids", "64", "--top-k", "4",
        "--batch-size", "2", "--seq-len", "48", "--unroll", "2"]


def _train(out: Path, steps: int, *extra) -> subprocess.CompletedProcess:
    corpus = Path(__file__).resolve().parents[1] / "runtime" / "speculative.py"
    done = subprocess.run([EXE, "train-drafter", "--target", str(TARGET), "--corpus", str(corpus), "--out", str(out),
                           "--steps", str(steps), *ARGS, *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_smoke_resume_and_determinism(tmp_path):
    stopped = _train(tmp_path / "a", 4, "--stop-after", "2")
    assert "stopped at step 2 of 4" in stopped.stdout and not (tmp_path / "a").exists()
    resumed = _train(tmp_path / "a", 4)  # same work folder: continues from step 2
    assert "2/4" in resumed.stderr
    _train(tmp_path / "b", 4)  # fresh run, same seed: resuming changed nothing
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ours = load_drafter(tmp_path / "a")
    theirs = Gemma4AssistantForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32)
    assert torch.equal(theirs.masked_embedding.token_ordering, ours.masked_embedding.token_ordering)
    assert torch.equal(theirs.pre_projection.weight, ours.pre_projection.weight)


def test_missing_corpus_is_one_line(tmp_path):
    done = subprocess.run([EXE, "train-drafter", "--target", str(TARGET), "--corpus", str(tmp_path / "nope.txt"),
                           "--out", str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "corpus file" in done.stderr and "Traceback" not in done.stderr
