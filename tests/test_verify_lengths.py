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
    """PteBackend that records each method call of a round: (name, the shape of its first input).
    Prompt chunks, which run verify too, are recorded apart, in `chunks`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.chunks, self._prefilling = [], [], False

    def prefill(self, tokens):
        self._prefilling = True
        try:
            return super().prefill(tokens)
        finally:
            self._prefilling = False

    def _run(self, name, *inputs):
        (self.chunks if self._prefilling else self.calls).append((name, tuple(inputs[0].shape)))
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
    # No decode: verify takes one token too. draft_chain_k: k greedy draft steps in one call.
    # No prefill either: a prompt chunk is a verify with logits at its last token.
    assert set(manifest.methods) == {"verify", "draft", *(f"draft_chain_{k}" for k in range(2, K + 1))}
    assert set(inspect_program(bundle / PROGRAM_FILE)) == set(manifest.methods)
    verify = manifest.methods["verify"]
    longest = max(K + 1, CHUNK)
    assert verify.lengths == (1, longest)  # the shapes give the longest
    assert verify.input("tokens").shape == (1, longest) and verify.input("start_pos").shape == (1,)
    assert verify.input("logits_at").shape == (K + 1,)  # one row for a chunk, up to K + 1 for a round
    assert verify.output("logits").shape == (K + 1, 512) and verify.output("hidden").shape == (K + 1, manifest.hidden_size)
    assert manifest.methods["draft"].lengths is None
    assert read_manifest(bundle).to_json()["methods"]["verify"]["lengths"] == [1, longest]


def test_a_prompt_goes_through_verify_in_unpadded_chunks(pte, eager):
    prompt = _rand(7, 2 * CHUNK + 1)
    pte.chunks.clear()
    for got, want in zip(pte.prefill(prompt), eager.prefill(prompt)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert pte.chunks == [("verify", (1, CHUNK)), ("verify", (1, CHUNK)), ("verify", (1, 1))]


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


def test_a_one_call_draft_is_the_draft_steps(pte):
    """draft_chain_k: the k greedy tokens of k draft steps fed their own argmax, and each step's top
    candidate probability, in one call."""
    assert pte.draft_chains == frozenset(range(2, K + 1))
    prompt = _rand(4, 6)
    logits, hidden = pte.prefill(prompt)
    position, first = len(prompt), int(logits.argmax())
    for k in sorted(pte.draft_chains):
        token, h, steps, tops = first, hidden, [], []
        for _ in range(k):
            out = pte.draft(token, h, position, position)
            token, h = out.greedy_token(), out.hidden
            steps.append(token)
            tops.append(float(torch.softmax(out.candidate_logits.double(), -1).max()))
        ids, top = pte.draft_chain(first, hidden, position, position, k)
        assert ids == steps
        torch.testing.assert_close(top.double(), torch.tensor(tops, dtype=torch.float64), atol=1e-5, rtol=1e-4)


def test_greedy_rounds_draft_in_one_call(pte):
    """A greedy fixed-K round drafts with one draft_chain call, not K draft steps; an early stop
    (--draft-p-min) or sampling drafts step by step. The tokens are plain decoding's."""
    from mtp_edge.runtime.sampling import SamplingConfig

    prompt = _rand(5, 4).tolist()
    plain = generate(pte, prompt, k=0, max_new_tokens=12)
    pte.calls.clear()
    assert generate(pte, prompt, k=K, max_new_tokens=12).tokens == plain.tokens
    names = [name for name, _ in pte.calls]
    # Steps only where the budget's end shrinks a round to one draft (no chain of one).
    assert f"draft_chain_{K}" in names and names.count("draft") <= 2, names
    pte.calls.clear()
    assert generate(pte, prompt, k=K, draft_p_min=0.0, max_new_tokens=12).tokens == plain.tokens
    assert "draft" in {name for name, _ in pte.calls} and not any(n.startswith("draft_chain") for n, _ in pte.calls)
    pte.calls.clear()
    generate(pte, prompt, k=K, max_new_tokens=12, sampling=SamplingConfig(temperature=0.8, seed=3))
    assert not any(n.startswith("draft_chain") for n, _ in pte.calls)


def test_auto_weighs_one_call_drafts(pte):
    """k="auto" measures every draft_chain length in its warm-up and drafts in one call where the
    table says it is cheaper than steps: here a one-call draft costs nothing."""
    from mtp_edge.runtime import tuning

    tuning._measured.pop(pte, None)
    prompt = _rand(6, 5).tolist()
    plain = generate(pte, prompt, k=0, max_new_tokens=16)
    measured = generate(pte, prompt, k="auto", max_new_tokens=16)
    assert measured.tokens == plain.tokens
    assert set(measured.stats.policy["costs"]["draft_call"]) == {str(k) for k in range(2, K + 1)}
    costs = CostTable(decode=1.0, draft_step=0.5, verify={2: 1.01, 3: 1.02, 4: 1.03}, draft_call={2: 0.0, 3: 0.0})
    policy = DraftPolicy(costs, K, acceptance=AcceptanceEstimate(K, prior_accept=9.0), frozen=True)
    pte.calls.clear()
    assert generate(pte, prompt, k="auto", policy=policy, max_new_tokens=16).tokens == plain.tokens
    assert f"draft_chain_{K}" in {name for name, _ in pte.calls}


def test_a_bundle_without_one_call_drafts_drafts_step_by_step(bundle_copy):
    """Bundles exported before draft_chain (or whose manifest lists none) keep drafting step by step."""
    _edit_manifest(bundle_copy, lambda m: [m["methods"].pop(f"draft_chain_{k}") for k in range(2, K + 1)])
    backend = Recording(bundle_copy)
    assert backend.draft_chains == frozenset()
    prompt = _rand(7, 4).tolist()
    plain = generate(backend, prompt, k=0, max_new_tokens=10)
    assert generate(backend, prompt, k=K, max_new_tokens=10).tokens == plain.tokens
    assert "draft" in {name for name, _ in backend.calls}


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


@pytest.mark.parametrize("old, why", [(1, "verify at one padded length"), (3, "prefill through a separate method")])
def test_older_schema_bundles_are_refused_with_the_fix(bundle_copy, old, why):
    assert SCHEMA_VERSION == 4
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=old))
    with pytest.raises(BundleError, match=rf"schema_version {old} is not supported \(schema {old} \w+ {why}\).*reads "
                                          r"schema_version 4\. Re-export the bundle") as e:
        PteBackend(bundle_copy)
    assert "\n" not in str(e.value)


def test_a_verify_short_of_a_length_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["methods"]["verify"].update(lengths=[2, K + 1]))
    with pytest.raises(BundleError, match=rf"lists a verify of 2\.\.{K + 1} tokens; this runtime verifies 1\.\.{K + 1} tokens "
                                          rf"\(K={K}, prefill chunks of {CHUNK}\)\. Re-export the bundle"):
        PteBackend(bundle_copy)
    _edit_manifest(bundle_copy, lambda m: m["methods"]["verify"].pop("lengths"))
    with pytest.raises(BundleError, match="lists a verify of one fixed length"):
        PteBackend(bundle_copy)
