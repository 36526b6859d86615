"""Acceptance checks of the reference runtime: losslessness, oracle parity, rollback, accounting, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends_for_tests import ScriptedDrafts
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate


def _prompt(seed: int, length: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    prompt_len=st.integers(1, 12),
    k=st.integers(1, 8),
    max_new_tokens=st.integers(1, 40),
    max_seq_len=st.sampled_from([16, 24, 48]),
    scripted=st.booleans(),
)
def test_greedy_speculative_equals_target_only(backend_for, seed, prompt_len, k, max_new_tokens, max_seq_len, scripted):
    backend = backend_for(max_seq_len)
    prompt = _prompt(seed, prompt_len, backend.vocab_size)
    plain = generate(backend, prompt, k=0, max_new_tokens=max_new_tokens)
    assert len(plain.tokens) == min(max_new_tokens, max_seq_len - prompt_len + 1)
    if scripted:  # mostly right drafts with mistakes: long accepts and rejections past the window
        wrong = set(torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist())
        backend = ScriptedDrafts(backend, prompt + plain.tokens, wrong)
    spec = generate(backend, prompt, k=k, max_new_tokens=max_new_tokens)
    assert spec.tokens == plain.tokens
    assert spec.stats.stop_reason == plain.stats.stop_reason


def test_matches_transformers_generate_and_assisted(hf_tiny, backend_for):
    backend = backend_for(64)
    prompt = _prompt(11, 6, backend.vocab_size)
    ids = torch.tensor([prompt])
    ref = hf_tiny.target.generate(ids, do_sample=False, max_new_tokens=30)[0, len(prompt):].tolist()
    hf_tiny.drafter.generation_config.num_assistant_tokens = 4
    assisted = hf_tiny.target.generate(ids, do_sample=False, max_new_tokens=30, assistant_model=hf_tiny.drafter)
    assert assisted[0, len(prompt):].tolist() == ref
    for k in (0, 1, 4, 7):
        assert generate(backend, prompt, k=k, max_new_tokens=30).tokens == ref


def test_eos_is_emitted_like_transformers(hf_tiny, backend_for):
    backend = backend_for(64)
    prompt = _prompt(12, 5, backend.vocab_size)
    free = generate(backend, prompt, k=0, max_new_tokens=30).tokens
    eos = next(t for t in free[3:] if t not in free[:3])  # a token first produced mid-generation
    ref = hf_tiny.target.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=30, eos_token_id=eos)
    ref = ref[0, len(prompt):].tolist()
    assert ref[-1] == eos
    for k in (0, 3):
        got = generate(ScriptedDrafts(backend, prompt + free), prompt, k=k, max_new_tokens=30, eos_ids=[eos])
        assert got.tokens == ref and got.stats.stop_reason == "eos"


def test_rejected_writes_past_the_window_do_not_corrupt(backend_for):
    """Rejections placed where a `window`-slot ring would overwrite keys still inside the window.

    A verify at position p writes p..p+K; in a ring of `window` slots, writing p+j clobbers
    position p+j-window, which the next round still attends when j >= accepted + 2.
    """
    backend = backend_for(64)
    window = backend.target.cfg.sliding_window
    prompt = _prompt(13, 3, backend.vocab_size)
    plain = generate(backend, prompt, k=0, max_new_tokens=55)
    wrong = set(range(window + 2, 58, 7))  # every seventh position, all past the window
    spec = generate(ScriptedDrafts(backend, prompt + plain.tokens, wrong), prompt, k=4, max_new_tokens=55)
    assert spec.tokens == plain.tokens
    clobbering = [r for r in spec.stats.round_log if r.position > window and r.drafted - r.accepted >= 2]
    assert len(clobbering) >= 5


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 4, 5, 9, 17])
def test_budget_counts_emitted_tokens_only(backend_for, max_new_tokens):
    backend = backend_for(64)
    prompt = _prompt(14, 4, backend.vocab_size)
    plain = generate(backend, prompt, k=0, max_new_tokens=40)
    perfect = ScriptedDrafts(backend, prompt + plain.tokens)
    got = generate(perfect, prompt, k=3, max_new_tokens=max_new_tokens)
    assert got.tokens == plain.tokens[:max_new_tokens]
    assert got.stats.accepted == got.stats.drafted  # the drafter always proposes and is always right
    assert got.stats.stop_reason == "max_new_tokens"


def test_stats_are_consistent(backend_for):
    backend = backend_for(64)
    prompt = _prompt(15, 4, backend.vocab_size)
    g = generate(backend, prompt, k=3, max_new_tokens=20)
    s = g.stats
    assert s.new_tokens == len(g.tokens) == 20 and s.prompt_tokens == 4
    assert s.new_tokens - 1 == s.rounds + s.accepted
    assert s.tokens_per_target_call == pytest.approx((s.new_tokens - 1) / s.rounds)
    assert s.decode_tokens_per_s > 0 and s.prefill_s > 0
    streamed = []
    generate(backend, prompt, k=3, max_new_tokens=20, on_token=streamed.append)
    assert streamed == g.tokens


def test_cache_end_shrinks_k(backend_for):
    backend = backend_for(16)
    prompt = _prompt(16, 10, backend.vocab_size)
    g = generate(backend, prompt, k=8, max_new_tokens=50)
    assert g.stats.stop_reason == "cache_full" and len(g.tokens) == 16 - 10 + 1
    assert all(r.position + r.drafted < 16 for r in g.stats.round_log)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=[3, 512]), "token id 512 is outside the vocabulary [0, 512)"),
        (dict(prompt=[3, -1]), "token id -1 is outside"),
        (dict(prompt=[1] * 16), "the prompt has 16 tokens but the cache holds 16"),
        (dict(k=-1), "K (draft tokens per round) must be >= 0"),
        (dict(k=99), "K=99 is not available"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    ],
)
def test_bad_requests(backend_for, kwargs, message):
    args = dict(prompt=[2, 3], k=2, max_new_tokens=5) | kwargs
    with pytest.raises(GenerationError) as info:
        generate(backend_for(16), args.pop("prompt"), **args)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in (0, 1]"),
        (dict(top_p=1.5), "top_p must be in (0, 1]"),
        (dict(top_k=-2), "top_k must be >= 0"),
    ],
)
def test_bad_sampling(kwargs, message):
    with pytest.raises(GenerationError) as info:
        SamplingConfig(**kwargs)
    assert message in str(info.value)


def test_two_threads_on_one_backend_run_one_after_the_other(backend_for):
    """Generations from two threads on one backend object give exactly their single-threaded tokens."""
    import threading

    backend = backend_for(64)
    prompts = [[2, 3, 5, 7], [11, 13]]
    alone = [generate(backend, p, k=3, max_new_tokens=24).tokens for p in prompts]
    results = [[] for _ in prompts]

    def worker(i):
        for _ in range(3):
            results[i].append(generate(backend, prompts[i], k=3, max_new_tokens=24).tokens)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[a] * 3 for a in alone]


def test_a_generation_inside_a_generation_on_one_backend_is_refused(backend_for):
    backend = backend_for(64)
    with pytest.raises(GenerationError, match="from inside a generation on that same backend"):
        generate(backend, [2, 3], k=2, max_new_tokens=4, on_token=lambda t: generate(backend, [4], max_new_tokens=2))
    assert generate(backend, [2, 3], max_new_tokens=3).tokens  # the lock was released
