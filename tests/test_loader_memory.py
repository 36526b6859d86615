"""The streaming loader's peak memory stays near the size of the loaded model (bf16 file -> fp32 model)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import torch

from mtp_edge.models import Gemma4Target, preset
from mtp_edge.models.hf_format import save_target

CHILD = """
import json, resource, sys, torch
import transformers.models.gemma4  # imports that any load needs, outside the measured span
from mtp_edge.models import load_target
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_target(sys.argv[1], max_seq_len=8, dtype=torch.float32)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak,
                  "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def test_peak_rss_is_about_the_model(tmp_path):
    cfg = replace(preset("e2b").target, vocab_size=65536, ple_vocab_size=65536, num_layers=2,
                  layer_types=("sliding_attention", "full_attention"), head_dims=(256, 512), num_kv_heads=(1, 1),
                  num_kv_shared_layers=0)
    with torch.device("meta"):
        model = Gemma4Target(cfg, max_seq_len=8)
    model.to_empty(device="cpu")
    model.reset_derived_buffers()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    save_target(model, tmp_path / "target", dtype=torch.bfloat16)
    del model
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "target")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["model_bytes"] > 500e6  # large enough for the allocator's slack not to dominate
    assert (r["peak_kib"] - r["base_kib"]) * 1024 <= 1.2 * r["model_bytes"]
