"""Quantized bundles: every recipe, both formats, lossless speculative decoding on the quantized pair.

One bundle per recipe holds both formats (torchao + XNNPACK for the .pte, onnxruntime's
quantization tools for the ONNX graphs); the pte exports are the slow part (about a minute each).
"""

from __future__ import annotations

import onnx
import pytest
import torch

from mtp_edge.export.bundle import read_manifest, write_bundle
from mtp_edge.models import load_pair
from mtp_edge.quantize.modules import quantize_pair
from mtp_edge.quantize.recipes import parse_recipe
from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.backends.eager import EagerBackend
from mtp_edge.runtime.speculative import generate

K, CHUNK, MAX_SEQ = 3, 4, 40

RECIPES = [
    "target=8da4w+emb4,drafter=8da4w+emb4",
    "target=8da8w+emb8,drafter=8da8w+emb8,drafter.pre_projection=none",
    "target=int4:64+emb4:16,drafter=none+emb8",
]


def _rand(seed: int, n: int, high: int = 512) -> list[int]:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module", params=RECIPES)
def quantized(request, tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "bundle"
    write_bundle(*tiny_dirs, out, k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, formats="pte,onnx",
                 quantize=request.param, progress=False)
    return request.param, out


@pytest.mark.parametrize("backend", ["pte", "onnx"])
def test_speculative_is_lossless_on_the_quantized_pair(quantized, backend):
    recipe, bundle = quantized
    runner = open_bundle(bundle, backend, threads=1)
    for seed, prompt_len in ((1, 3), (2, 11)):
        prompt = _rand(seed, prompt_len)
        spec = generate(runner, prompt, k=K, max_new_tokens=2 * MAX_SEQ)
        plain = generate(runner, prompt, k=0, max_new_tokens=2 * MAX_SEQ)
        assert spec.tokens == plain.tokens, (recipe, backend)
        assert spec.stats.stop_reason == "cache_full" and spec.stats.rounds < len(spec.tokens)


def test_manifest_records_the_recipe_and_what_it_quantized(quantized):
    recipe, bundle = quantized
    manifest = read_manifest(bundle)
    q = manifest["quantization"]
    parsed = parse_recipe(recipe)
    assert q["recipe"] == parsed.text() and parse_recipe(q["recipe"]) == parsed
    assert q["target"]["linear"] == parsed.target.linear and q["drafter"]["embedding"] == parsed.drafter.embedding
    # torchao side (pte): the recipe's linears and tables, overrides honoured.
    pte = q["pte"]
    if parsed.target.linear != "none":
        assert pte["target"]["linears"] and "lm_head" in pte["target"]["linears"]
    assert ("embed_tokens_per_layer" in pte["target"]["embeddings"]) == (parsed.target.embedding != "none")
    if "drafter.pre_projection=none" in recipe:
        assert "pre_projection" not in pte["drafter"]["linears"] and "post_projection" in pte["drafter"]["linears"]
    # onnxruntime side: the graphs hold the quantized operators and no fp32 copy of a quantized table.
    for role in ("target", "drafter"):
        graph = onnx.load(str(bundle / manifest["onnx"][role]["file"]))
        ops = {n.op_type for n in graph.graph.node}
        linear = getattr(parsed, role).linear
        if linear in ("8da4w", "int4"):
            assert "MatMulNBits" in ops
        if linear == "8da8w":
            assert "MatMulInteger" in ops
        if getattr(parsed, role).embedding != "none" or role == "drafter" and parsed.target.embedding != "none":
            assert "GatherBlockQuantized" in ops
        onnx.checker.check_model(str(bundle / manifest["onnx"][role]["file"]), full_check=True)
    fp32 = sum(t.numel() * 4 for m in load_pair(*[manifest["source"][r] for r in ("target", "drafter")], max_seq_len=8)
               for t in m.parameters())
    assert manifest["artifacts"]["onnx_target"]["bytes"] + manifest["artifacts"]["onnx_drafter"]["bytes"] < fp32


def test_eager_quantized_modules_track_the_fp32_pair(tiny_dirs):
    """torchao's 8da4w+emb4 on the eager modules: logits stay close to fp32 and greedy output is
    still lossless between plain and speculative decoding (the eager backend runs quantized modules)."""
    target, drafter = load_pair(*tiny_dirs, max_seq_len=MAX_SEQ)
    reference = EagerBackend(*load_pair(*tiny_dirs, max_seq_len=MAX_SEQ), max_draft=K)
    report = quantize_pair(target, drafter, parse_recipe("target=8da4w+emb4,drafter=8da4w+emb4"), progress=False)
    assert report["target"]["linears"] and report["target"]["embeddings"]
    quantized = EagerBackend(target, drafter, max_draft=K)
    prompt = torch.tensor(_rand(5, 12))
    q_logits, _ = quantized.prefill(prompt)
    r_logits, _ = reference.prefill(prompt)
    spread = float(r_logits.max() - r_logits.min())
    assert 0 < float((q_logits - r_logits).abs().max()) < 0.2 * spread
    spec = generate(quantized, prompt.tolist(), k=K, max_new_tokens=20)
    assert spec.tokens == generate(quantized, prompt.tolist(), k=0, max_new_tokens=20).tokens
