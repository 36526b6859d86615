"""`mtp-edge generate` end to end through the console script, held to transformers' generate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

MTP_EDGE = str(Path(sys.executable).with_name("mtp-edge"))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([MTP_EDGE, "generate", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_json_output_matches_transformers(hf_tiny, tiny_dirs):
    prompt = [2, 40, 41, 300, 7]
    eos = hf_tiny.target.generation_config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    ref = hf_tiny.target.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24)[0, len(prompt):].tolist()
    for k in (0, 3):
        done = _run("--model", tiny_dirs[0], "--drafter", tiny_dirs[1], "--prompt-ids", ",".join(map(str, prompt)),
                    "--k", k, "--max-new-tokens", 24, "--max-seq-len", 64, "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["tokens"] == ref
        assert doc["stats"]["new_tokens"] == len(ref)
        assert doc["stats"]["stop_reason"] == ("eos" if ref[-1] in eos_ids else "max_new_tokens")


def test_text_prompt_uses_tokenizer_json(tiny_dirs, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(tiny_dirs[0], target)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 50, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(target / "tokenizer.json"))
    done = _run("--model", target, "--drafter", tiny_dirs[1], "--prompt", "def add(", "--max-new-tokens", 8, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["prompt_ids"] == tok.encode("def add(").ids
    assert doc["text"] == tok.decode(doc["tokens"], skip_special_tokens=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt-ids", "1,2,9999"], "token id 9999 is outside the vocabulary"),
        (["--prompt-ids", ""], "prompt is empty"),
        (["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
        (["--prompt", "hello"], "no tokenizer.json: pass --prompt-ids"),
        (["--prompt-ids", "1,2", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt-ids", "1,2", "--k", "-1"], "must be >= 0"),
        (["--prompt-ids", ",".join(["3"] * 20), "--max-seq-len", "16"], "the prompt has 20 tokens but the cache holds 16"),
    ],
)
def test_bad_arguments_are_one_line(tiny_dirs, args, message):
    done = _run("--model", tiny_dirs[0], "--drafter", tiny_dirs[1], *args)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
