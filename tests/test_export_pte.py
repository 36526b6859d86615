"""ExecuTorch export: one .pte whose three methods share the KV cache, the bundle format, the pte backend.

One bundle of the random tiny pair per backend (XNNPACK, then portable) is exported per run, the
slow part (about 100 s and 40 s on two busy cores), and every check below reads it. Both are the
run's shared exports (conftest.shared_export): the XNNPACK one, which holds the ONNX graphs too, is
test_clustered_head's; the portable one is test_native_runner's and test_android_bridge's.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from backends_for_tests import ScriptedDrafts
from mtp_edge.export import pte as pte_export
from mtp_edge.export.bundle import MANIFEST, PROGRAM_FILE, SCHEMA_VERSION, BundleError, ExportSettings, read_manifest, write_bundle
from mtp_edge.models import load_pair
from mtp_edge.runtime.backends.eager import EagerBackend
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.speculative import generate

K, CHUNK, MAX_SEQ = 3, 4, 40  # the tiny preset's sliding window is 8: generations run well past it
# fp32 vs eager PyTorch, measured on this pair (XNNPACK and portable alike): logits within 2e-5
# of a range of about 4, hidden states within 2e-5 (summation order only). The bound leaves 10x room.
ATOL, RTOL = 2e-4, 1e-4


def _rand(seed: int, n: int, high: int = 512) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


# The XNNPACK bundle has no one-call drafts (draft_chains=()): lowering them doubled its export time
# in the suite, and the shipped pair's demo bundle (test_quantize, test_native_runner) holds them
# lowered to XNNPACK; the portable bundle, which the native runner and the fuzzer share, has them all.
XNNPACK_CHAINS: tuple[int, ...] = ()


@pytest.fixture(scope="module", params=[pytest.param("xnnpack", marks=pytest.mark.xdist_group("tiny-xnnpack")),
                                        pytest.param("portable", marks=pytest.mark.xdist_group("tiny-portable"))])
def bundle(request, tiny_dirs, shared_export):
    formats = "pte,onnx" if request.param == "xnnpack" else "pte"
    chains = XNNPACK_CHAINS if request.param == "xnnpack" else None
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend=request.param,
                                                   formats=formats, quantize="none", draft_chains=chains))


@pytest.fixture(scope="module")
def pte(bundle):
    return PteBackend(bundle)


@pytest.fixture(scope="module")
def eager(tiny_dirs):
    return EagerBackend(*load_pair(*tiny_dirs, max_seq_len=MAX_SEQ), max_draft=K)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- bundle contents


def test_manifest_describes_the_bundle(bundle, pte):
    manifest = read_manifest(bundle).to_json()
    assert manifest["schema_version"] == SCHEMA_VERSION
    chains = XNNPACK_CHAINS if manifest["backend"] == "xnnpack" else range(2, K + 1)
    assert set(manifest["methods"]) == {"verify", "draft", *(f"draft_chain_{k}" for k in chains)}
    sig = manifest["methods"]
    # verify takes a prompt chunk or a round: any token count up to max(CHUNK, K + 1) (the shapes give
    # the longest), logits at up to K + 1 of them.
    assert sig["verify"]["inputs"][0] == {"name": "tokens", "shape": [1, max(CHUNK, K + 1)], "dtype": "int64"}
    assert sig["verify"]["inputs"][2] == {"name": "logits_at", "shape": [K + 1], "dtype": "int64"}
    assert sig["verify"]["outputs"][0] == {"name": "logits", "shape": [K + 1, 512], "dtype": "float32"}
    assert sig["verify"]["lengths"] == [1, max(CHUNK, K + 1)]
    assert [o["name"] for o in sig["draft"]["outputs"]] == ["candidate_ids", "candidate_logits", "hidden", "argmax_id"]
    if K in chains:
        assert sig[f"draft_chain_{K}"]["outputs"] == [{"name": "draft_ids", "shape": [K], "dtype": "int64"},
                                                      {"name": "top_probs", "shape": [K], "dtype": "float32"}]
    cache = manifest["cache"]
    assert cache["max_seq_len"] == MAX_SEQ and cache["buffer_length"] == MAX_SEQ + max(K, CHUNK - 1)
    assert all(b["shape"][2] == cache["buffer_length"] for b in cache["buffers"])
    assert (manifest["k"], manifest["prefill_chunk"], manifest["quantization"]["recipe"]) == (K, CHUNK, "none")
    assert manifest["eos_token_ids"] == list(manifest["target_config"]["eos_token_ids"])
    assert {"torch", "executorch", "transformers", "mtp-edge"} <= set(manifest["versions"])
    assert manifest["target_config"]["sliding_window"] == 8
    assert manifest["drafter_config"]["backbone_hidden_size"] == manifest["target_config"]["hidden_size"]
    assert (pte.max_seq_len, pte.max_draft, pte.vocab_size, pte.has_drafter) == (MAX_SEQ, K, 512, True)
    # Nothing but the bundle is left in the parent folder (the partial folder was renamed into place).
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


# --------------------------------------------------------------------------- parity


def test_methods_match_eager(pte, eager):
    prompt = _rand(1, 10)  # three prefill chunks, the last one of 2 tokens
    for backend_out, eager_out in zip(pte.prefill(prompt), eager.prefill(prompt)):
        _close(backend_out, eager_out)
    tokens = _rand(2, K + 1)
    for n in (K + 1, 2, 1):  # full verify, a shrunken round, one token: all through verify, unpadded
        for backend_out, eager_out in zip(pte.verify(tokens[:n], 10), eager.verify(tokens[:n], 10)):
            assert backend_out.shape[0] == n
            _close(backend_out, eager_out)
    # Three chained draft steps reading validated K/V of positions < 11.
    _, hidden = eager.verify(tokens[:1], 10)
    hidden_p = hidden_e = hidden[0]
    token_p = token_e = int(tokens[0])
    for _ in range(3):
        out_p = pte.draft(token_p, hidden_p, 11, 11)
        out_e = eager.draft(token_e, hidden_e, 11, 11)
        assert torch.equal(out_p.candidate_ids, out_e.candidate_ids)
        _close(out_p.candidate_logits, out_e.candidate_logits)
        _close(out_p.hidden, out_e.hidden)
        token_p = token_e = int(out_e.candidate_ids[out_e.candidate_logits.argmax()])
        hidden_p, hidden_e = out_p.hidden, out_e.hidden


@pytest.mark.parametrize("prompt_len", [1, 6, 13])
def test_greedy_generation_matches_target_only_and_eager(pte, eager, prompt_len):
    prompt = _rand(10 + prompt_len, prompt_len).tolist()
    budget = 2 * MAX_SEQ  # runs into the end of the cache: K shrinks, verify pads, stop_reason is cache_full
    spec = generate(pte, prompt, k=K, max_new_tokens=budget)
    plain = generate(pte, prompt, k=0, max_new_tokens=budget)
    reference = generate(eager, prompt, k=0, max_new_tokens=budget)
    assert spec.tokens == plain.tokens == reference.tokens
    assert spec.stats.stop_reason == plain.stats.stop_reason == "cache_full"
    assert prompt_len + len(spec.tokens) > 3 * 8  # well past the sliding window
    assert spec.stats.drafted > spec.stats.accepted  # the random drafter was rejected
    assert any(0 < r.drafted < K for r in spec.stats.round_log)  # shrunken rounds ran (at their own length)


def test_long_accepts_and_rejections_on_the_pte(pte):
    """Mostly right drafts with planted mistakes: rollback past the window over the shared cache."""
    prompt = _rand(7, 5).tolist()
    plain = generate(pte, prompt, k=0, max_new_tokens=MAX_SEQ)
    scripted = ScriptedDrafts(pte, prompt + plain.tokens, wrong_at={9, 10, 17, 26, 30})
    spec = generate(scripted, prompt, k=K, max_new_tokens=MAX_SEQ)
    assert spec.tokens == plain.tokens
    assert spec.stats.accepted >= 20 and spec.stats.accepted < spec.stats.drafted


# --------------------------------------------------------------------------- the shared cache


def test_draft_reads_the_cache_verify_wrote(bundle, eager):
    """Raw executorch.runtime: verify writes K/V, then draft (another method) must read them.

    If draft had a frozen copy of the cache it would see the export-time zeros instead; the
    eager drafter over a zeroed cache shows that the two answers are far apart.
    """
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(bundle / PROGRAM_FILE)
    verify, draft = program.load_method("verify"), program.load_method("draft")
    tokens = _rand(3, K + 1)
    logits, hidden = verify.execute([tokens.view(1, -1), torch.tensor([0]), torch.arange(K + 1)])
    ids, cand_logits, projected, best = draft.execute(
        [torch.tensor([5]), hidden[-1].contiguous(), torch.tensor([K + 1]), torch.tensor([K + 1])]
    )

    eager_logits, eager_hidden = eager.verify(tokens, 0)
    _close(logits, eager_logits)
    expected = eager.draft(5, eager_hidden[-1], K + 1, K + 1)
    assert torch.equal(ids, expected.candidate_ids) and int(best[0]) == expected.argmax_id
    _close(cand_logits, expected.candidate_logits)
    _close(projected, expected.hidden)

    eager.target.cache.reset()
    frozen = eager.draft(5, eager_hidden[-1], K + 1, K + 1)
    assert (frozen.hidden - projected).abs().max() > 100 * ATOL


def test_memory_plan_shares_one_cache_arena(bundle):
    manifest = read_manifest(bundle).to_json()
    cache = manifest["cache"]
    cache_bytes = sum(torch.Size(b["shape"]).numel() * 4 for b in cache["buffers"])
    assert cache["bytes"] == cache_bytes
    plan = pte_export.inspect_program(bundle / PROGRAM_FILE)
    assert set(plan) == set(manifest["methods"])
    names = [b["name"] for b in cache["buffers"]]
    placements = []
    for method, info in plan.items():
        sizes = info["non_const_buffer_sizes"]
        # [reserved, activations, shared mutable state]; the state arena is the cache, once.
        assert len(sizes) == 3, method
        assert cache_bytes <= sizes[2] <= cache_bytes + 16 * len(names), (method, sizes, cache_bytes)
        assert set(info["mutable_buffers"]) == set(names), method
        placements.append({n: (b["memory_id"], b["offset"]) for n, b in info["mutable_buffers"].items()})
        assert {mem_id for mem_id, _ in placements[-1].values()} == {2}
        # K/V writes are in place: no full-buffer functional copy and no write-back copy per step.
        assert "aten::index_put_" in info["operators"], method
        assert "aten::index_put" not in info["operators"] and "aten::copy_" not in info["operators"], method
    assert all(p == placements[0] for p in placements)  # every method addresses the same bytes
    assert manifest["sizes"]["non_const_buffer_sizes"] == {m: i["non_const_buffer_sizes"] for m, i in plan.items()}


# --------------------------------------------------------------------------- bad inputs


def test_profile_splits_each_call_between_xnnpack_and_other_kernels(bundle):
    """`bench methods --profile`: ExecuTorch's own record of every kernel and delegate call, per call of the loop."""
    from mtp_edge.runtime.bench.op_profile import profile_pte

    manifest = read_manifest(bundle)
    report = profile_pte(bundle, repeats=3, warmup=1, top=1000)
    chains = {name for name in manifest.methods if name.startswith("draft_chain_")}
    assert set(report) == {"prefill", "verify", "decode", "draft", *chains}
    for name, profile in report.items():
        assert profile["total_ms"] > 0, name
        assert profile["xnnpack_ms"] + profile["outside_xnnpack_ms"] == pytest.approx(profile["total_ms"])
        # Kernel calls outside a delegate are named: the cache writes run there in every call.
        outside = {op["op"] for op in profile["outside_xnnpack_ops"]}
        assert profile["operator_calls"] > 0 and any(op.startswith("index_put") for op in outside), (name, outside)
        if manifest.backend == "xnnpack":
            assert profile["delegate_calls"] > 0 and profile["xnnpack_ops"] and profile["outside_xnnpack_share"] < 1, name
        else:
            assert profile["delegate_calls"] == 0 and profile["xnnpack_ms"] == 0 and profile["outside_xnnpack_share"] == 1, name
    # One target method serves the prompt chunk, the round and the single token: the same kernels run.
    assert report["prefill"]["operator_calls"] == report["verify"]["operator_calls"] == report["decode"]["operator_calls"]


def test_methods_report_decode_bandwidth(bundle):
    """`bench methods --bandwidth`: the weight bytes one decode reads (every weight of the fp32 tiny
    target once, one row per embedding table, at 4 bytes each), over the measured decode time, beside
    the machine's measured read bandwidth."""
    from mtp_edge.models.config import target_config_from_folder
    from mtp_edge.models.sizes import build_target, target_step_reads
    from mtp_edge.runtime.bench.bandwidth import decode_bandwidth, machine_read_bandwidth
    from mtp_edge.runtime.bench.methods import bench_methods

    report = bench_methods(bundle, "pte", repeats=2, warmup=1, fill_chunks=1)
    decode_ms = report["methods"]["decode"]["median_ms"]
    machine = machine_read_bandwidth(size_bytes=64 << 20, repeats=2)
    b = decode_bandwidth(bundle, "pte", decode_ms, machine)
    reads = target_step_reads(build_target(target_config_from_folder(bundle)))
    assert b["recipe"] == "none" and b["weight_bytes_per_decode"] == 4 * reads["parameters"] > 0
    assert b["achieved_gb_s"] == pytest.approx(b["weight_bytes_per_decode"] / decode_ms / 1e6)
    assert machine > 1e8 and b["fraction_of_machine"] == pytest.approx(b["achieved_gb_s"] * 1e9 / machine)


def test_profile_is_for_the_pte_only():
    import argparse

    from mtp_edge.models.errors import MtpEdgeError
    from mtp_edge.runtime.bench import _methods

    args = argparse.Namespace(bundle="unused", backend="onnx", threads=None, repeats=1, fill_chunks=1, profile=True)
    with pytest.raises(MtpEdgeError, match=r"--profile reads ExecuTorch's operator record: it profiles --backend pte only, not onnx"):
        _methods(args)


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def test_tampered_program_is_refused(bundle_copy):
    path = bundle_copy / PROGRAM_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.pte was modified after export"):
        PteBackend(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy):
    path = bundle_copy / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"schema_version 99 is not supported.*reads schema_version {SCHEMA_VERSION}") as e:
        read_manifest(bundle_copy)
    assert "\n" not in str(e.value)


def test_missing_artifact_is_named(bundle_copy):
    (bundle_copy / PROGRAM_FILE).unlink()
    with pytest.raises(BundleError, match=r"missing artifact model\.pte"):
        PteBackend(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        read_manifest(bundle_copy)


def test_requests_beyond_the_export_are_refused(pte):
    with pytest.raises(GenerationError, match=rf"K={K + 1} is not available.*K <= {K}"):
        generate(pte, [1, 2, 3], k=K + 1, max_new_tokens=4)
    with pytest.raises(GenerationError, match=rf"cache holds {MAX_SEQ} positions"):
        generate(pte, [1] * MAX_SEQ, k=0, max_new_tokens=4)
    # Direct calls past the usable context or the exported K (the buffer's slack is not usable).
    with pytest.raises(GenerationError, match="outside the exported context"):
        pte.prefill(torch.ones(MAX_SEQ + 1, dtype=torch.long))
    with pytest.raises(GenerationError, match="outside the exported context"):
        pte.verify(torch.ones(2, dtype=torch.long), MAX_SEQ - 1)
    with pytest.raises(GenerationError, match=rf"verify takes 1\.\.{K + 1} tokens"):
        pte.verify(torch.ones(K + 2, dtype=torch.long), 0)


def test_interrupted_export_leaves_no_bundle(tiny_dirs, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        (args[2]).write_bytes(b"half a program")
        raise KeyboardInterrupt

    monkeypatch.setattr(pte_export, "export_pte", fail)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        write_bundle(*tiny_dirs, out, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, quantize="none"),
                     progress=False)
    assert list(tmp_path.iterdir()) == []


def test_write_bundle_replaces_a_bundle_but_not_other_folders(tiny_dirs, tmp_path, monkeypatch):
    def fake_export(target, drafter, out_path, **kwargs):
        out_path.write_bytes(b"program %d" % kwargs["k"])
        return {"methods": {}, "cache": {}, "sizes": {}}

    monkeypatch.setattr(pte_export, "export_pte", fake_export)
    out = tmp_path / "bundle"
    for k in (1, 2):
        write_bundle(*tiny_dirs, out, ExportSettings(k=k, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, quantize="none"),
                     progress=False)
        assert read_manifest(out).k == k and (out / PROGRAM_FILE).read_bytes() == b"program %d" % k
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle; refusing to replace it"):
        write_bundle(*tiny_dirs, other, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, quantize="none"),
                     progress=False)
    assert (other / "keep.txt").read_text() == "mine"
