"""`mtp-edge fuzz` (runtime/fuzz.py): random pairs and requests pass, cover what they claim to, and a
subtly broken backend is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_edge.export.bundle import ExportSettings
from mtp_edge.runtime.fuzz import (EXERCISED, build_pair, export_pair, fuzz_bundle, fuzz_eager, fuzz_exported,
                                   fuzz_native, random_case, random_pair_config, reproduce)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def slice_report():
    return fuzz_eager(300, seed=0, progress=False)


def test_a_fuzz_slice_passes_and_exercises_everything(slice_report):
    r = slice_report
    assert r.cases == 300 and r.mismatches == 0, r.reproducers[:3]
    assert r.pairs >= 30 and r.greedy and r.coupled and r.rejection and r.auto
    missing = [name for name in EXERCISED if r.exercised[name] == 0]
    assert not missing, r.exercised


def test_random_pairs_are_valid_and_varied():
    pairs = [random_pair_config(seed) for seed in range(60)]
    for pair in pairs[:20]:
        build_pair(pair)  # the model classes accept the configuration
    targets = [p.target_cfg for p in pairs]
    assert {t.num_kv_shared_layers > 0 for t in targets} == {True, False}
    assert {len(set(t.layer_types)) for t in targets} == {1, 2}
    assert {p.drafter_cfg.use_ordered_embeddings for p in pairs} == {True, False}
    assert {t.ple_dim > 0 for t in targets} == {True, False}
    assert len({t.vocab_size for t in targets}) > 10
    assert len({(t.head_dims, t.num_kv_heads) for t in targets}) > 10


def test_cases_repeat_from_their_seed():
    a = random_case(5, vocab=32, max_seq_len=24, max_k=4, window=5)
    b = random_case(5, vocab=32, max_seq_len=24, max_k=4, window=5)
    assert a == b


class DroppedBonusRow:
    """A backend whose verify returns the second-to-last row's logits for the last row: a full acceptance
    then takes the wrong bonus token, and nothing else changes."""

    def __init__(self, inner):
        self.inner = inner
        self.vocab_size, self.max_seq_len = inner.vocab_size, inner.max_seq_len
        self.max_draft, self.has_drafter = inner.max_draft, inner.has_drafter

    def prefill(self, tokens):
        return self.inner.prefill(tokens)

    def draft(self, token, hidden, position, validated_length):
        return self.inner.draft(token, hidden, position, validated_length)

    def rollback(self, length):
        self.inner.rollback(length)

    def verify(self, tokens, start):
        logits, hidden = self.inner.verify(tokens, start)
        if tokens.numel() > 1:
            logits = logits.clone()
            logits[-1] = logits[-2]
        return logits, hidden


class ShiftedPositions(DroppedBonusRow):
    """Verifies of more than one token past the sliding window run one position late (RoPE and masks)."""

    def verify(self, tokens, start):
        window = self.inner.target.cfg.sliding_window
        late = tokens.numel() > 1 and start > window
        return self.inner.verify(tokens, start + 1 if late and start + tokens.numel() < self.max_seq_len else start)


@pytest.mark.parametrize("broken", [DroppedBonusRow, ShiftedPositions])
def test_a_broken_backend_is_caught(broken):
    report = fuzz_eager(80, seed=1, wrap=broken, progress=False)
    assert report.mismatches > 0
    first = report.reproducers[0]
    assert "tokens differ" in " ".join(first["problems"]) or "stop_reason" in " ".join(first["problems"])
    # The reproducer line reruns the case: failing with the broken backend, passing without it.
    assert not reproduce(first["reproducer"], wrap=broken).ok
    assert reproduce(first["reproducer"]).ok


def test_the_cli_reports_json():
    done = subprocess.run([str(BIN / "mtp-edge"), "fuzz", "--backends", "eager", "--cases", "20", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["backends"][0]["cases"] == 20 and report["backends"][0]["mismatches"] == 0
    assert set(report["backends"][0]["exercised"]) == set(EXERCISED)
    assert "[fuzz] eager: 20/20 cases" in done.stderr


def test_the_cli_refuses_a_bundle_backend_without_a_bundle(capsys):
    from mtp_edge.runtime.commands.cli import main

    assert main(["fuzz", "--backends", "pte"]) == 2
    assert "--bundle DIR" in capsys.readouterr().err


@pytest.mark.xdist_group("tiny-portable")
def test_fuzz_the_shared_portable_bundle(tiny_dirs, shared_export):
    """Random requests against the run's shared portable .pte of the tiny pair (test_verify_lengths' bundle),
    with its own plain decoding and the eager source pair as references."""
    bundle = shared_export(tiny_dirs, ExportSettings(k=3, max_seq_len=40, prefill_chunk=4, backend="portable",
                                                     formats="pte", quantize="none"))
    report = fuzz_bundle(bundle, "pte", 15, seed=0, progress=False)
    assert report.cases == 15 and report.mismatches == 0, report.reproducers[:3]
    assert report.eager_compared > 0 and report.eager_differences == 0


def _shipped_demo_bundle(demo_cache) -> Path:
    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.shipped import default_pair_dir
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT

    return cached_bundle(default_pair_dir(), root=demo_cache, settings=DEMO_EXPORT)


@pytest.mark.native
@pytest.mark.xdist_group("shipped-demo")  # the demo test's bundle, exported once per run
def test_fuzz_the_native_runner_on_the_shipped_bundle(demo_cache):
    """The C++ runner held to the Python pte backend on random requests, token for token and stat for stat;
    the shipped pair's trained drafter gets drafts accepted, rejected and cut by EOS."""
    report = fuzz_native(_shipped_demo_bundle(demo_cache), 20, seed=4, progress=False)
    assert report.cases == 20 and report.mismatches == 0, report.reproducers[:3]
    assert report.greedy and report.coupled and report.rejection and report.auto and report.one_call_cases
    missing = [name for name in EXERCISED if report.exercised[name] == 0]
    assert not missing, report.exercised
    assert report.x86_differences is None  # the desktop runner is held to x86 exactly


@pytest.mark.native
@pytest.mark.xdist_group("tiny-portable")
def test_the_native_fuzz_catches_a_runner_that_stops_one_token_early(tiny_dirs, shared_export, monkeypatch):
    from mtp_edge.runtime import fuzz

    bundle = shared_export(tiny_dirs, ExportSettings(k=3, max_seq_len=40, prefill_chunk=4, backend="portable",
                                                     formats="pte", quantize="none"))
    honest = fuzz.native_request

    def short(case):
        line = honest(case)
        if line["k"] != 0 and line["max_new_tokens"] > 1:
            line["max_new_tokens"] -= 1
        return line

    monkeypatch.setattr(fuzz, "native_request", short)
    report = fuzz_native(bundle, 8, seed=1, progress=False)
    assert report.mismatches > 0
    problems = " ".join(p for r in report.reproducers for p in r["problems"])
    assert "native tokens differ from the Python pte backend's" in problems
    assert "differs from its own plain decoding" in problems


@pytest.mark.native
@pytest.mark.xdist_group("tiny-arm64")  # test_native_arm64's runner and bundle
def test_fuzz_the_arm64_runner_under_qemu(tiny_dirs, shared_export):
    bundle = shared_export(tiny_dirs, ExportSettings(k=3, max_seq_len=40, prefill_chunk=4, backend="portable",
                                                     quantize="none"))
    report = fuzz_native(bundle, 15, seed=2, arch="arm64", progress=False)
    assert report.backend == "native-arm64" and report.cases == 15 and report.mismatches == 0, report.reproducers[:3]
    assert report.x86_differences is None  # an fp32 bundle: ARM must give x86's tokens
    assert report.exercised["rejections"] and report.exercised["cache_full"] and report.exercised["window_wraps"]


@pytest.mark.xdist_group("tiny-onnx")
def test_fuzz_random_pairs_exported_to_onnx():
    """Random pairs saved as checkpoints and exported: the bundle's plain decoding is the eager pair's and
    speculative decoding is plain's, on configurations no shipped bundle has."""
    report = fuzz_exported("onnx", 30, seed=0, pairs=2, progress=False)
    assert report.pairs == 2 and report.cases == 30 and report.mismatches == 0, report.reproducers[:3]
    assert report.eager_compared > 0 and report.eager_differences == 0
    assert report.exercised["rejections"] and report.exercised["full_accepts"] and report.exercised["window_wraps"]


@pytest.mark.slow
@pytest.mark.native
def test_a_pte_export_at_k_1_regression(tmp_path):
    """Found by the exported-pair fuzz: a .pte export at K = 1 raised (torch.export took verify's 1..2 tokens
    for the static size 2), and then the native runner refused verify's 3-token capacity. Reproducer
    {"backend":"pte-exported","pair_seed":9}: it now exports, and random requests pass in Python and natively."""
    pair = random_pair_config(9)
    assert pair.max_k == 1
    bundle = export_pair(pair, "pte", tmp_path)
    report = fuzz_bundle(bundle, "pte", 8, seed=0, progress=False)
    assert report.mismatches == 0 and report.eager_compared > 0 and report.eager_differences == 0, report.reproducers[:3]
    native = fuzz_native(bundle, 8, seed=1, progress=False)
    assert native.cases == 8 and native.mismatches == 0, native.reproducers[:3]
