"""The streaming loader's peak memory stays near the size of the loaded model (bf16 file -> fp32 model),
and quantizing while loading never holds the fp32 model: its peak stays near the quantized size."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
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


QUANTIZED_CHILD = """
import json, resource, sys, torch
import transformers.models.gemma4, torchao.quantization  # imports outside the measured span
from mtp_edge.models import load_target
from mtp_edge.quantize.recipes import parse_recipe
from mtp_edge.quantize.streaming import StreamingQuantizer
scheme = parse_recipe("target=8da4w+emb4", "pte").target
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_target(sys.argv[1], max_seq_len=8, sink=lambda m: StreamingQuantizer(m, scheme, name="target", progress=False))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak,
                  "quantized": sum(type(p).__name__ != "Parameter" for p in model.parameters())}))
"""


def _e2b_width_checkpoint(tmp_path):
    """A 2-layer E2B-width target at vocabulary 65,536, saved in bf16: (folder, fp32 parameter bytes)."""
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
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    save_target(model, tmp_path / "target", dtype=torch.bfloat16)
    return tmp_path / "target", fp32_bytes


@pytest.mark.slow
def test_peak_rss_is_about_the_model(tmp_path):
    folder, _ = _e2b_width_checkpoint(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["model_bytes"] > 500e6  # large enough for the allocator's slack not to dominate
    assert (r["peak_kib"] - r["base_kib"]) * 1024 <= 1.2 * r["model_bytes"]


@pytest.mark.slow
def test_quantizing_while_loading_never_holds_the_fp32_model(tmp_path):
    folder, fp32_bytes = _e2b_width_checkpoint(tmp_path)
    done = subprocess.run([sys.executable, "-c", QUANTIZED_CHILD, str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["quantized"] > 10  # the tables and the linears came out as torchao tensors
    # int8-unpacked 4-bit data + group scales: about 0.3 of the fp32 bytes, plus one 64 MiB chunk.
    assert (r["peak_kib"] - r["base_kib"]) * 1024 <= 0.45 * fp32_bytes
