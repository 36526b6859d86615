"""Speculative sampling is lossless: the first tokens are distributed exactly as under target-only sampling.

A chi-square goodness-of-fit test over 20,000 seeds (significance level 0.001) compares the
joint distribution of the first four tokens from the real loop (K = 3) with the exact
target-only distribution, and a control shows the same test rejects a subtly biased rule
(resampling from p instead of the residual after a rejection).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from backends_for_tests import MarkovBackend
from mtp_edge.runtime import speculative
from mtp_edge.runtime.backend import DraftOutput
from mtp_edge.runtime.sampling import SamplingConfig, choose, probabilities, sample
from mtp_edge.runtime.speculative import generate

ALPHA = 0.001
# Generations per test. The controls below (biased rules) give p = 4e-88 and 9e-270 at 10,000, 8e-33 and
# 5e-111 at 5,000 (measured): 6,000 keeps them far below ALPHA at 30% of the time 20,000 took.
SEEDS = 6_000
TOKENS = 4
VOCAB = 5
CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.8, top_k=4, top_p=0.9),
]


class PartialDrafter(MarkovBackend):
    """The drafter scores only a subset of the vocabulary, like the clustered head."""

    def draft(self, token, hidden, position, validated_length):
        ids = torch.tensor([t for t in range(self.vocab_size) if t != (token + 1) % self.vocab_size])
        return DraftOutput(ids, self.drafter_table[token][ids], hidden)


def _tables():
    g = torch.Generator().manual_seed(0)
    return torch.randn(VOCAB, VOCAB, generator=g) * 1.5, torch.randn(VOCAB, VOCAB, generator=g) * 1.5


def _exact(target_table, prompt_last, cfg) -> dict[tuple, float]:
    rows = [probabilities(target_table[t], cfg) for t in range(VOCAB)]
    dist = {}
    for seq in itertools.product(range(VOCAB), repeat=TOKENS):
        p, prev = 1.0, prompt_last
        for t in seq:
            p *= float(rows[prev][t])
            prev = t
        dist[seq] = p
    return dist


def _p_value(counts: Counter, exact: dict[tuple, float]) -> float:
    assert all(exact[seq] > 0 for seq in counts), "a token with zero target probability was sampled"
    cells = sorted((p, counts.get(seq, 0)) for seq, p in exact.items() if p > 0)
    observed, expected, acc_o, acc_e = [], [], 0, 0.0
    for p, c in cells:  # merge the rarest cells until each expects at least 5
        acc_o, acc_e = acc_o + c, acc_e + p * SEEDS
        if acc_e >= 5:
            observed.append(acc_o)
            expected.append(acc_e)
            acc_o, acc_e = 0, 0.0
    observed[-1] += acc_o
    expected[-1] += acc_e
    return chisquare(observed, expected).pvalue


def _run(cfg: SamplingConfig, **generate_kwargs) -> Counter:
    backend = PartialDrafter(*_tables())
    counts = Counter()
    generate_kwargs = {"k": 3} | generate_kwargs
    for seed in range(SEEDS):
        out = generate(backend, [2], max_new_tokens=TOKENS, sampling=dataclasses.replace(cfg, seed=seed), **generate_kwargs)
        counts[tuple(out.tokens)] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CONFIGS, ids=["t1", "t0.8-topk4-topp0.9"])
def test_speculative_sampling_matches_target_distribution(cfg):
    counts = _run(cfg)
    assert _p_value(counts, _exact(_tables()[0], 2, cfg)) > ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("rule, generate_kwargs", [
    ("rejection", dict(k="auto", draft_p_min=0.7)),  # early stops in about half the rounds
    ("coupled", dict(k="auto")),
    ("coupled", dict(k=3, draft_p_min=0.7)),
], ids=["rejection-auto-pmin", "coupled-auto", "coupled-k3-pmin"])
def test_policy_and_early_stop_keep_sampling_lossless(rule, generate_kwargs):
    cfg = dataclasses.replace(CONFIGS[1], rule=rule)
    counts = _run(cfg, **generate_kwargs)
    assert _p_value(counts, _exact(_tables()[0], 2, cfg)) > ALPHA


def test_early_stops_trigger_often():
    """The threshold above stops a real share of drafts (else the tests above would prove nothing)."""
    backend = PartialDrafter(*_tables())
    stops = rounds = 0
    for seed in range(200):
        out = generate(backend, [2], k=3, draft_p_min=0.7, max_new_tokens=TOKENS,
                       sampling=dataclasses.replace(CONFIGS[1], seed=seed))
        stops, rounds = stops + out.stats.early_stops, rounds + out.stats.rounds
    assert stops > 0.2 * rounds


@pytest.mark.slow
def test_control_early_stop_on_the_drawn_token_is_rejected(monkeypatch):
    """Dropping a draft because the token drawn had a low drafter probability biases the output:
    the chi-square test catches it, so the tests above would catch such a stop rule."""
    real = speculative.draft

    def biased_draft(backend, last, hidden, position, k, sampling, rng, early_stop=None, timer=None):
        drafts, probs = real(backend, last, hidden, position, k, sampling, rng)
        for i, (token, q) in enumerate(zip(drafts, probs)):
            if float(q[token]) < 0.45:  # the bug: judged on the value drawn
                return drafts[:i], probs[:i]
        return drafts, probs

    monkeypatch.setattr(speculative, "draft", biased_draft)
    cfg = CONFIGS[0]
    assert _p_value(_run(cfg), _exact(_tables()[0], 2, cfg)) < ALPHA


@pytest.mark.slow
def test_control_biased_rule_is_rejected(monkeypatch):
    def resample_from_p(drafts, draft_probs, target_logits, cfg, rng):
        for i, token in enumerate(drafts):
            p, q = probabilities(target_logits[i], cfg), draft_probs[i]
            if rng.uniform() * float(q[token]) >= float(p[token]):
                return i, sample(p, rng)  # the bug: p instead of the residual max(p - q, 0)
        return len(drafts), choose(target_logits[len(drafts)], cfg, rng)

    monkeypatch.setattr(speculative, "accept_drafts", resample_from_p)
    cfg = CONFIGS[0]
    assert _p_value(_run(cfg), _exact(_tables()[0], 2, cfg)) < ALPHA
