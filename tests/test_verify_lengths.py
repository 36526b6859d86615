"""A .pte bundle verifies at every length 1..K+1 through one verify method (a dynamic token count),
never padded.

Reads the run's shared portable export of the tiny pair (the one test_export_pte, test_native_runner
and test_android_bridge read: no export of its own when they run too; about a minute alone).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hypothesis import HealthCheck, given, settings

from backends_for_tests import ScriptedDrafts, assert_greedy_auto_is_plain, auto_cases
from mtp_edge.export.bundle import MANIFEST, PROGRAM_FILE, SCHEMA_VERSION, BundleError, ExportSettings, read_manifest
from mtp_edge.export.pte import inspect_program
from mtp_edge.models import load_pair
from mtp_edge.runtime.backends.eager import EagerBackend
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.draft_policy import AcceptanceEstimate, CostTable, DraftPolicy
from mtp_edge.runtime.speculative import generate

# The settings of test_export_pte's portable bundle: the same shared export.
K, CHUNK, MAX_SEQ = 3, 4, 40
# fp32 portable kernels vs eager PyTorch: summation order only (test_export_pte measured 2e-5).
ATOL, RTOL = 2e-4, 1e-4

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-portable")]


@pytest.fixture(scope="module")
def bundle(tiny_dirs, shared_export):
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable",
                                                   formats="pte", quantize="none"))


class Recording(PteBackend):
    """PteBackend that records each method call: (name, the shape of its first input)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def _run(self, name, *inputs):
        self.calls.append((name, tuple(inputs[0].shape)))
        return super()._run(name, *inputs)


@pytest.fixture(scope="module")
def pte(bundle):
    return Recording(bundle)


@pytest.fixture(scope="module")
def eager(tiny_dirs):
    return EagerBackend(*load_pair(*tiny_dirs, max_seq_len=MAX_SEQ), max_draft=K)


def _rand(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed))


def test_one_verify_method_takes_every_length(bundle):
    manifest = read_manifest(bundle)
    assert set(manifest.methods) == {"prefill", "verify", "draft"}  # no decode: verify takes one token too
    assert set(inspect_program(bundle / PROGRAM_FILE)) == set(manifest.methods)
    verify = manifest.methods["verify"]
    assert verify.lengths == (1, K + 1)  # the shapes give the longest
    assert verify.input("tokens").shape == (1, K + 1) and verify.input("start_pos").shape == (1,)
    assert verify.output("logits").shape == (K + 1, 512) and verify.output("hidden").shape[0] == K + 1
    assert manifest.methods["prefill"].lengths is None and manifest.methods["draft"].lengths is None
    assert read_manifest(bundle).to_json()["methods"]["verify"]["lengths"] == [1, K + 1]


@pytest.mark.parametrize("start", [0, 9, MAX_SEQ - K - 1])
def test_every_length_matches_eager_without_padding(pte, eager, start):
    prompt = _rand(start, max(start, 1))
    if start:
        for got, want in zip(pte.prefill(prompt), eager.prefill(prompt)):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    tokens = _rand(100 + start, K + 1)
    for n in (K + 1, *range(1, K + 1)):  # the longest first: shorter passes then rewrite its positions
        pte.calls.clear()
        got_logits, got_hidden = pte.verify(tokens[:n], start)
        want_logits, want_hidden = eager.verify(tokens[:n], start)
        assert pte.calls == [("verify", (1, n))]  # n tokens in, nothing padded
        assert got_logits.shape == (n, 512) and got_hidden.shape == want_hidden.shape
        torch.testing.assert_close(got_logits, want_logits, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got_hidden, want_hidden, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("drafter", ["bundle", "scripted"])
def test_adaptive_greedy_speculative_equals_plain(pte, eager, drafter):
    """k="auto" with a frozen cost table: the tokens stay plain decoding's (and eager PyTorch's), and
    every target pass runs verify on its own tokens. The bundle's random drafter is mostly
    rejected (the policy falls back to plain rounds and probes); with scripted drafts, right but
    for planted mistakes close together, the policy's k moves between 1 and 3 (and the cache end
    shortens the last rounds), so rounds verify at several lengths."""
    prompt = _rand(3, 5).tolist()
    budget = MAX_SEQ  # runs into the end of the cache
    plain = generate(pte, prompt, k=0, max_new_tokens=budget)
    assert plain.tokens == generate(eager, prompt, k=0, max_new_tokens=budget).tokens
    if drafter == "bundle":
        # draft_p_min=0: the random drafter's flat distribution would stop every draft before its first step.
        backend, p_min, acceptance = pte, 0.0, None
        costs = CostTable(decode=1.0, draft_step=0.02, verify={2: 1.05, 3: 1.1, 4: 1.15})
    else:
        # Optimistic prior, steep verify costs, mistakes close together: k moves between 1 and 3.
        backend, p_min = ScriptedDrafts(pte, prompt + plain.tokens, {8, 9, 10, 12, 13, 15}), None
        acceptance = AcceptanceEstimate(K, prior_accept=4.0, prior_reject=1.0)
        costs = CostTable(decode=1.0, draft_step=0.05, verify={2: 1.2, 3: 1.5, 4: 1.8})
    pte.calls.clear()
    policy = DraftPolicy(costs, K, acceptance=acceptance, frozen=True, probe_every=2)
    spec = generate(backend, prompt, k="auto", policy=policy, draft_p_min=p_min, max_new_tokens=budget)
    assert spec.tokens == plain.tokens
    assert spec.stats.stop_reason == plain.stats.stop_reason == "cache_full"
    assert spec.stats.drafted > spec.stats.accepted  # rejections ran
    lengths = {shape[1] for name, shape in pte.calls if name == "verify"}
    assert len(lengths - {1}) >= (1 if drafter == "bundle" else 2), lengths


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**auto_cases())
def test_greedy_auto_equals_plain_on_pte(pte, **case):
    """k="auto" on the .pte: any cost table and acceptance history, plain decoding's tokens."""
    assert_greedy_auto_is_plain(pte, **case)


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _edit_manifest(folder, edit) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_schema_1_bundles_are_refused_with_the_fix(bundle_copy):
    assert SCHEMA_VERSION == 3
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=1))
    with pytest.raises(BundleError, match=r"schema_version 1 is not supported.*reads schema_version 3\. Re-export the bundle") as e:
        PteBackend(bundle_copy)
    assert "\n" not in str(e.value)


def test_a_verify_short_of_a_length_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["methods"]["verify"].update(lengths=[2, K + 1]))
    with pytest.raises(BundleError, match=rf"lists a verify of 2\.\.{K + 1} tokens; this runtime verifies 1\.\.{K + 1} tokens "
                                          rf"\(K={K}\)\. Re-export the bundle"):
        PteBackend(bundle_copy)
    _edit_manifest(bundle_copy, lambda m: m["methods"]["verify"].pop("lengths"))
    with pytest.raises(BundleError, match="lists a verify of one fixed length"):
        PteBackend(bundle_copy)
