"""Token choice: greedy, temperature/top-k/top-p sampling, and the lossless speculative accept rule.

Randomness comes from a small explicit generator (SplitMix64) rather than torch's, so that a
native runner can reproduce a seeded run token for token. Distributions are computed in
float64 in a fixed order for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import GenerationError

MASK64 = (1 << 64) - 1


class SplitMix64:
    """Seeded uniform numbers in [0, 1), 53 bits each; trivially portable to C++."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probabilities(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Processed distribution over the given logits [N] (float64): temperature, then top-k, then top-p.

    Applied identically to the target's full logits and to the drafter's candidate logits,
    so both sides of the accept rule see the same processing.
    """
    scaled = logits.double() / cfg.temperature
    if cfg.top_k and cfg.top_k < scaled.numel():
        kth = torch.topk(scaled, cfg.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        before = torch.cumsum(sorted_probs, 0) - sorted_probs  # mass strictly ahead of each token
        drop = order[before >= cfg.top_p]  # the token that crosses top_p is kept
        probs = probs.index_fill(0, drop, 0.0)
        probs = probs / probs.sum()
    return probs


def sample(probs: torch.Tensor, rng: SplitMix64) -> int:
    """Inverse-CDF draw in index order."""
    cdf = torch.cumsum(probs, 0)
    u = rng.uniform() * float(cdf[-1])
    index = int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype), right=True)[0])
    return min(index, probs.numel() - 1)


def choose(logits: torch.Tensor, cfg: SamplingConfig, rng: SplitMix64) -> int:
    """The target's own next token (no draft to check)."""
    if cfg.greedy:
        return int(torch.argmax(logits))
    return sample(probabilities(logits, cfg), rng)


def accept_drafts(
    drafts: list[int],
    draft_probs: list[torch.Tensor | None],
    target_logits: torch.Tensor,
    cfg: SamplingConfig,
    rng: SplitMix64,
) -> tuple[int, int]:
    """Check drafts against the verify pass's logits [len(drafts) + 1, vocab].

    Returns (accepted, next_token): the longest accepted prefix and the token that follows it
    (the target's correction after a rejection, or its bonus token after a full accept).
    Greedy: a draft stands if it is the target's argmax. Sampling: the standard rule; accept d
    with probability min(1, p(d) / q(d)), else draw from the residual max(p - q, 0), which keeps
    the output distributed exactly as target-only sampling.
    """
    for i, token in enumerate(drafts):
        if cfg.greedy:
            best = int(torch.argmax(target_logits[i]))
            if best != token:
                return i, best
            continue
        p = probabilities(target_logits[i], cfg)
        q = draft_probs[i]
        if rng.uniform() * float(q[token]) < float(p[token]):
            continue
        residual = (p - q).clamp_min(0.0)
        return i, sample(residual if residual.sum() > 0 else p, rng)
    return len(drafts), choose(target_logits[len(drafts)], cfg, rng)


def draft_token(out, vocab_size: int, cfg: SamplingConfig, rng: SplitMix64):
    """Pick a draft from a DraftOutput's candidates; returns (token, q over the vocabulary or None if greedy).

    Sampling draws from the drafter's distribution over its candidates only (the clustered head
    never scores the rest): q is zero outside them, and the accept rule uses that same q.
    """
    if cfg.greedy:
        return out.greedy_token(), None
    q_candidates = probabilities(out.candidate_logits, cfg)
    token = int(out.candidate_ids[sample(q_candidates, rng)])
    q = torch.zeros(vocab_size, dtype=torch.float64).index_put_((out.candidate_ids.long(),), q_candidates, accumulate=True)
    return token, q
