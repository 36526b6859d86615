"""Quantized while building: a 2-layer E2B-width slice (random weights, the real 262,144-token vocabulary
and PLE table, the real drafter) exports to quantized ONNX without ever holding its fp32 weights, and
speculative == plain on the bundle it writes.

The export runs in a fresh process (runtime.bench.export_cost.measure_export), whose own peak RSS,
imports included, must stay below half the slice's fp32 weight bytes (2.59 GiB): an export that
quantized an fp32 graph would hold the fp32 weights at least once."""

from __future__ import annotations

import gc

import pytest
import torch

from mtp_edge.export.bundle import ExportSettings, read_manifest
from mtp_edge.models.hf_format import save_drafter, save_target
from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.bench.e2b import e2b_slice_configs, fp32_weight_bytes, random_modules
from mtp_edge.runtime.bench.export_cost import measure_export
from mtp_edge.runtime.speculative import generate

RECIPE = "target=8da4w+emb4,drafter=8da4w+emb4"


@pytest.mark.slow
@pytest.mark.xdist_group("e2b-slice-onnx")
def test_e2b_slice_exports_to_quantized_onnx_below_half_its_fp32_size(tmp_path):
    target_cfg, drafter_cfg = e2b_slice_configs(2)
    assert target_cfg.vocab_size == 262144 and target_cfg.ple_vocab_size == 262144
    target, drafter = random_modules(target_cfg, drafter_cfg)
    save_target(target, tmp_path / "target", dtype=torch.bfloat16)
    save_drafter(drafter, tmp_path / "drafter", dtype=torch.bfloat16)
    del target, drafter
    gc.collect()
    fp32_bytes = fp32_weight_bytes(target_cfg, drafter_cfg)

    bundle = tmp_path / "bundle"
    settings = ExportSettings(formats="onnx", k=3, max_seq_len=64, prefill_chunk=16, quantize=RECIPE)
    measured = measure_export(tmp_path / "target", tmp_path / "drafter", bundle, settings)
    peak = measured["export_own_peak_rss_bytes"]
    assert peak < 0.5 * fp32_bytes, f"export peak {peak / 2**30:.2f} GiB, fp32 weights {fp32_bytes / 2**30:.2f} GiB"
    # 4-bit weights + fp32 scales per 32: 0.156 of fp32; the 262,144 x 1,536 table is stored three times
    # (the target's embedding and untied head, the drafter graph's copy), so 2.96x in all (measured).
    assert measured["onnx_bytes"] < fp32_bytes / 2.5

    manifest = read_manifest(bundle)
    counts = manifest.to_json()["quantization"]["onnx"]
    assert counts["target"]["emb4:32"] == 2 and counts["target"]["8da4w:32"] > 10, counts  # both tables, head, linears
    assert counts["drafter"]["emb4:32"] == 2, counts  # the target's table it embeds with, its own head rows

    runner = open_bundle(bundle, "onnx", threads=2)
    gen = torch.Generator().manual_seed(0)
    for prompt_len in (5, 19):
        prompt = torch.randint(0, target_cfg.vocab_size, (prompt_len,), generator=gen).tolist()
        spec = generate(runner, prompt, k=runner.k, max_new_tokens=12)
        plain = generate(runner, prompt, k=0, max_new_tokens=12)
        assert spec.tokens == plain.tokens and len(plain.tokens) == 12
