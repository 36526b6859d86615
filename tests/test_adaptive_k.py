"""k="auto": the draft-length policy inside the loop never changes greedy output, switches between
plain and speculative rounds as costs and acceptance say, and reports what it chose."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends_for_tests import ScriptedDrafts, assert_greedy_auto_is_plain, auto_cases
from mtp_edge.runtime.draft_policy import AcceptanceEstimate, CostTable, DraftPolicy
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import EarlyStop, generate


def _prompt(seed: int, length: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_seq_len=st.sampled_from([16, 24, 48]), **auto_cases())
def test_greedy_auto_equals_target_only(backend_for, max_seq_len, **case):
    """Any cost table, any acceptance history, live or frozen timings, early stops: the tokens of plain
    decoding (eager; tests/test_verify_lengths.py and test_export_onnx.py run it on pte and onnx)."""
    assert_greedy_auto_is_plain(backend_for(max_seq_len), **case)


def test_policy_switches_between_plain_and_drafting_mid_generation(backend_for):
    """A drafter right for a stretch, then wrong, then right again: the policy drafts, falls back to
    plain decoding, probes, and drafts again; the tokens stay the target's."""
    backend = backend_for(128)
    prompt = _prompt(3, 4, backend.vocab_size)
    plain = generate(backend, prompt, k=0, max_new_tokens=100)
    wrong = set(range(30, 60))  # every draft for these positions is wrong
    scripted = ScriptedDrafts(backend, prompt + plain.tokens, wrong)
    costs = CostTable(1.0, 0.05, {n: 1.0 + 0.6 * (n - 1) for n in range(2, 6)})
    policy = DraftPolicy(costs, 4, probe_every=2, frozen=True, acceptance=AcceptanceEstimate(4, decay=0.5))
    got = generate(scripted, prompt, k="auto", policy=policy, max_new_tokens=100)
    assert got.tokens == plain.tokens
    kinds = [r.drafted > 0 for r in got.stats.round_log]
    switches = sum(a != b for a, b in zip(kinds, kinds[1:]))
    assert got.stats.k_histogram.get(0, 0) > 0 and any(kinds)
    assert switches >= 3  # on, off, probe on, ...
    assert got.stats.policy["plain_rounds"] > 0 and got.stats.policy["probe_rounds"] > 0


def test_auto_measures_costs_and_reports_them(backend_for):
    backend = backend_for(64)
    prompt = _prompt(5, 6, backend.vocab_size)
    plain = generate(backend, prompt, k=0, max_new_tokens=24)
    got = generate(backend, prompt, k="auto", max_new_tokens=24)
    assert got.tokens == plain.tokens
    policy = got.stats.policy
    assert policy["cost_source"] == "measured" and not policy["frozen"]
    assert set(policy["costs"]["verify"]) == {str(n) for n in range(2, backend.max_draft + 2)}
    assert policy["costs"]["decode"] > 0 and policy["costs"]["draft_step"] > 0
    d = got.stats.as_dict()
    assert sum(d["k_histogram"].values()) == got.stats.rounds and d["plain_rounds"] == got.stats.k_histogram.get(0, 0)


class _Calls:
    """A backend that records the token count of every verify call (a round's kind: 1 + its drafts)."""

    def __init__(self, inner):
        self.inner, self.verify_lengths = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def verify(self, tokens, start):
        self.verify_lengths.append(len(tokens))
        return self.inner.verify(tokens, start)


@pytest.mark.parametrize("repeats, rounds_per_kind", [(3, [3]), (7, [4, 4, 2])])
def test_measure_costs_spreads_each_kind_over_passes(backend_for, repeats, rounds_per_kind):
    """The live warm-up (3 repeats) runs each round kind 3 times in a row, all timed; tune's (more
    repeats) runs passes over every kind, each kind 3 timed rounds after an untimed one per pass, so
    that a slow stretch of the machine is shared by all kinds; the cache is rolled back after."""
    from mtp_edge.runtime.tuning import measure_costs

    backend = _Calls(backend_for(64))
    prompt = _prompt(8, 5, backend.vocab_size)
    table = measure_costs(backend, 2, repeats, prompt=prompt)
    expected = [1 + k for rounds in rounds_per_kind for k in range(3) for _ in range(rounds)]
    assert backend.verify_lengths == expected
    assert table.max_k == 2 and table.decode > 0
    assert generate(backend.inner, prompt, k=0, max_new_tokens=8).tokens == generate(backend_for(64), prompt, k=0, max_new_tokens=8).tokens


def test_seeded_rejection_sampling_with_auto_repeats(backend_for):
    """Under the rejection rule the policy runs from a frozen table: a seeded run repeats exactly."""
    backend = backend_for(64)
    prompt = _prompt(6, 5, backend.vocab_size)
    cfg = SamplingConfig(temperature=0.8, top_p=0.95, seed=42)
    a = generate(backend, prompt, k="auto", max_new_tokens=30, sampling=cfg)
    b = generate(backend, prompt, k="auto", max_new_tokens=30, sampling=cfg)
    assert a.tokens == b.tokens and a.stats.policy["frozen"] and a.stats.policy["cost_source"] == "default"


def test_frozen_default_costs_are_the_backends_kinds():
    """Eager and ONNX verify nearly flat in the token count; the .pte (and the native runner, whose
    default_costs() must equal it) grows a quarter of a decode per token; an unknown backend gets the .pte's."""
    from mtp_edge.runtime.backends.eager import EagerBackend
    from mtp_edge.runtime.backends.onnx import OnnxBackend
    from mtp_edge.runtime.backends.pte import PteBackend
    from mtp_edge.runtime.tuning import DEFAULT_COSTS, FLAT_VERIFY_COSTS, default_costs

    kinds = {cls: default_costs(cls) for cls in (EagerBackend, OnnxBackend, PteBackend, ScriptedDrafts)}
    assert kinds[EagerBackend] is kinds[OnnxBackend] is FLAT_VERIFY_COSTS
    assert kinds[PteBackend] is kinds[ScriptedDrafts] is DEFAULT_COSTS
    assert FLAT_VERIFY_COSTS.verify[5] < DEFAULT_COSTS.verify[5] and FLAT_VERIFY_COSTS.draft_step < DEFAULT_COSTS.draft_step


def test_draft_p_min_rule():
    assert EarlyStop(p_min=0.5).stops(0.49) and not EarlyStop(p_min=0.5).stops(0.5)
    assert not EarlyStop().stops(0.0)  # p_min 0 never stops


@pytest.mark.parametrize("kwargs, message", [
    (dict(k="often"), "must be a whole number or 'auto'"),
    (dict(k="auto", max_k=99), "max_k must be in 0.."),
    (dict(k="auto", draft_p_min=1.5), "draft_p_min must be a probability"),
])
def test_bad_auto_requests(backend_for, kwargs, message):
    with pytest.raises(GenerationError) as info:
        generate(backend_for(16), [2, 3], max_new_tokens=5, **kwargs)
    assert message in str(info.value)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**63 - 1),
    prompt_len=st.integers(1, 10),
    max_new_tokens=st.integers(1, 30),
    k=st.sampled_from([1, 2, 4, 8, "auto"]),
    temperature=st.sampled_from([0.7, 1.0, 1.5]),
    top_k=st.sampled_from([0, 20]),
    top_p=st.sampled_from([1.0, 0.9]),
    p_min=st.sampled_from([None, 0.2]),
)
def test_coupled_rule_gives_plain_seeded_sampling_tokens(backend_for, seed, prompt_len, max_new_tokens, k, temperature,
                                                         top_k, top_p, p_min):
    """Under the coupled rule a seeded run is token for token the target's own seeded run, for any K or policy."""
    backend = backend_for(48)
    prompt = _prompt(seed % 10_000, prompt_len, backend.vocab_size)
    cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, rule="coupled")
    plain = generate(backend, prompt, k=0, max_new_tokens=max_new_tokens, sampling=cfg)
    spec = generate(backend, prompt, k=k, draft_p_min=p_min, max_new_tokens=max_new_tokens, sampling=cfg)
    assert spec.tokens == plain.tokens


def test_a_policy_needs_k_auto(backend_for):
    costs = CostTable(1.0, 0.1, {2: 1.2})
    with pytest.raises(GenerationError) as info:
        generate(backend_for(16), [2, 3], k=1, policy=DraftPolicy(costs), max_new_tokens=3)
    assert "pass k='auto'" in str(info.value)


def test_a_policy_must_fit_the_backend(backend_for):
    backend = backend_for(64)
    costs = CostTable(1.0, 0.0, {n: 1.0 for n in range(2, backend.max_draft + 3)})
    with pytest.raises(GenerationError) as info:
        generate(backend, [2, 3], k="auto", policy=DraftPolicy(costs), max_new_tokens=3)
    assert f"verifies at most {backend.max_draft}" in str(info.value)


def test_the_next_generation_starts_from_the_last_acceptance(backend_for):
    """A live generation leaves its acceptance estimate to the next one on the same backend; a frozen
    (seeded rejection-rule) run starts from the prior, so that it repeats."""
    from mtp_edge.runtime.tuning import starting_acceptance

    backend = backend_for(48)
    first = generate(backend, [2, 3, 5], k="auto", max_new_tokens=20)
    bound = min(backend.max_draft, backend.max_seq_len - 2)
    assert list(starting_acceptance(backend, bound, frozen=False).rates()) == first.stats.policy["acceptance"]
    assert starting_acceptance(backend, bound, frozen=True) is None
    assert first.stats.policy["acceptance"] != [0.5] * bound  # it learned something to pass on
