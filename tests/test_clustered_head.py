"""The drafter's clustered (centroid) head, fused into the exported draft step.

The step returns candidate ids, their logits and the argmax id; no activation of the step, in
the aten graph, the .pte or the ONNX graph, has the vocabulary's size. Quantized heads (emb4 /
emb8 row gathers) are checked in test_quantize.py with the same helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from graph_shapes import aten_shapes, onnx_shapes, pte_shapes, vocabulary_sized
from mtp_edge.export.bundle import ExportSettings, read_manifest
from mtp_edge.export.pte import buffer_length, method_modules
from mtp_edge.models import load_pair
from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.backends.eager import EagerBackend
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate

K, CHUNK, MAX_SEQ = 3, 4, 40


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    target, drafter = load_pair(*tiny_dirs, max_seq_len=buffer_length(MAX_SEQ, K, CHUNK))
    # No other dimension of this pair may equal the vocabulary's, or the checks below would be blind.
    cfg = drafter.cfg
    assert cfg.decoder.vocab_size == 512 and cfg.num_candidates == 128 and target.max_seq_len != 512
    return target, drafter


@pytest.fixture(scope="module")
def bundle(tiny_dirs, shared_export):
    # The run's shared export (conftest.shared_export), test_export_pte's XNNPACK bundle: the tests
    # reading it carry its xdist group.
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="xnnpack",
                                                   formats="pte,onnx", quantize="none", draft_chains=()))


SHARED_BUNDLE = pytest.mark.xdist_group("tiny-xnnpack")


DRAFT_METHODS = ["draft", f"draft_chain_{K}"]  # one step; K greedy steps in one call


def _draft_graph(target, drafter, method="draft"):
    module, inputs = method_modules(target, drafter, K, CHUNK)[method]
    with torch.no_grad():
        return torch.export.export(module.eval(), inputs, strict=False)


@pytest.mark.parametrize("method", DRAFT_METHODS)
def test_draft_step_computes_no_vocabulary_sized_tensor(pair, method):
    target, drafter = pair
    vocab = drafter.cfg.decoder.vocab_size
    shapes = aten_shapes(_draft_graph(target, drafter, method))
    assert len(shapes) > 50  # the whole step was visited, every op of it
    assert vocabulary_sized(shapes, vocab) == []
    assert (drafter.cfg.num_candidates,) in [s for _, s in shapes]
    # The same check on the full head finds the vocabulary: it can see what it must rule out.
    clustered, drafter.masked_embedding = drafter.masked_embedding, None
    try:
        assert vocabulary_sized(aten_shapes(_draft_graph(target, drafter, method)), vocab)
    finally:
        drafter.masked_embedding = clustered


@SHARED_BUNDLE
# The bundle has no one-call draft (draft_chains=(), test_export_pte): the exported draft_chain_K is
# checked on the shipped pair's programs (test_quantize.test_shipped_programs_gather_candidate_rows_only).
@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_exported_draft_steps_hold_no_vocabulary_sized_tensor(bundle, fmt):
    manifest = read_manifest(bundle)
    vocab = manifest.vocab_size
    if fmt.startswith("pte"):
        shapes = pte_shapes(bundle / "model.pte", "draft")
        # Non-constant values include the cache buffers and the outputs: the check reads real tensors.
        d = manifest.drafter_config
        candidates = d.centroid_top_k * vocab // d.num_centroids
        assert (candidates,) in [s for _, s in shapes]
    else:
        shapes = onnx_shapes(bundle, "drafter")
    assert len(shapes) > 20
    assert vocabulary_sized(shapes, vocab) == []


@SHARED_BUNDLE
@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_argmax_output_is_the_best_candidate_and_the_reference_greedy_draft(bundle, tiny_dirs, fmt):
    runner = open_bundle(bundle, fmt, threads=1)
    eager = EagerBackend(*load_pair(*tiny_dirs, max_seq_len=runner.max_seq_len), max_draft=K)
    prompt = torch.randint(0, 512, (13,), generator=torch.Generator().manual_seed(3))
    _, hidden = runner.prefill(prompt)
    _, eager_hidden = eager.prefill(prompt)
    token = int(prompt[-1])
    for _ in range(3):  # chained steps: each fed the previous step's projected hidden and argmax
        out, ref = runner.draft(token, hidden, 13, 13), eager.draft(token, eager_hidden, 13, 13)
        assert out.argmax_id == int(out.candidate_ids[out.candidate_logits.argmax()])
        # The reference drafter's pick: argmax of its full-vocabulary scatter of the candidates.
        h, _ = eager.drafter(eager.target.embed(torch.tensor([[token]])), eager_hidden.view(1, 1, -1),
                             torch.tensor([13]), torch.tensor([13]), eager.target.store_kv())
        assert out.argmax_id == ref.argmax_id == int(eager.drafter.scattered_logits(h).argmax())
        token, hidden, eager_hidden = out.argmax_id, out.hidden, ref.hidden


@SHARED_BUNDLE
@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_sampled_drafts_come_from_the_candidates(bundle, fmt):
    """Seeded sampling drafts only candidate tokens and stays a function of the seed."""
    runner = open_bundle(bundle, fmt, threads=1)
    prompt = torch.randint(0, 512, (9,), generator=torch.Generator().manual_seed(5)).tolist()
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=11)
    first = generate(runner, prompt, k=K, max_new_tokens=20, sampling=sampling)
    again = generate(runner, prompt, k=K, max_new_tokens=20, sampling=sampling)
    assert first.tokens == again.tokens and first.stats.drafted > 0


@pytest.mark.slow
def test_bench_head_cli(tmp_path):
    """`mtp-edge bench head` at the tiny geometry: both heads timed on eager and pte, bytes from the shapes."""
    done = subprocess.run([sys.executable, "-m", "mtp_edge.runtime.commands.cli", "bench", "head", "--preset", "tiny",
                           "--context", "48", "--repeats", "3", "--json"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    clustered, full = report["heads"]["clustered"], report["heads"]["full"]
    d = report["drafter"]
    assert clustered["outputs"] == d["candidates"] == d["clusters_kept"] * d["tokens_per_cluster"]
    assert full["outputs"] == d["vocab"]
    assert full["head_bytes_read"] == d["vocab"] * d["hidden"] * 4
    assert clustered["head_bytes_read"] == (d["clusters"] + d["candidates"]) * d["hidden"] * 4 + d["candidates"] * 8
    for row in (clustered, full):
        assert row["pte_argmax_equals_eager"]
        assert all(row[f"{b}_{part}_ms"] > 0 for b in ("eager", "pte") for part in ("step", "head"))
    assert report["target_decode"]["eager_ms_extrapolated"] > 0
    assert "clustered" in done.stderr  # progress lines
