"""Token choice: greedy, temperature/top-k/top-p sampling, and the lossless speculative accept rule.

Randomness comes from a small explicit generator (SplitMix64) rather than torch's, so that a
native runner can reproduce a seeded run token for token. Distributions are computed in
float64 in a fixed order for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


SAMPLING_RULES = ("rejection", "coupled")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    seed: int = 0
    # How speculative sampling stays exact (greedy ignores it). "rejection": accept a draft with
    # probability min(1, p/q), else resample the residual; the output is distributed as the target's,
    # but a seeded run's tokens depend on how many drafts each round made. "coupled": Gumbel-max with
    # noise keyed by (seed, position, token); the output is token for token plain seeded sampling,
    # whatever the draft lengths, the policy or the drafter.
    rule: str = "rejection"

    def __post_init__(self):
        if self.rule not in SAMPLING_RULES:
            raise GenerationError(f"sampling rule {self.rule!r} is unknown; choose from {', '.join(SAMPLING_RULES)}.")
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def coupled(self) -> bool:
        return self.rule == "coupled" and not self.greedy

    @property
    def depends_on_draft_lengths(self) -> bool:
        """Seeded output that changes with the draft lengths: the policy must then ignore live timings."""
        return not self.greedy and self.rule == "rejection"


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


# --- Drafter-invariant sampling: Gumbel-max coupling --------------------------------------------
#
# Daliri, Musco and Suresh (2024), "Coupling without communication and drafter-invariant speculative
# decoding". Every (seed, absolute position, token id) has its own Gumbel noise g from a counter-based
# hash; the target's token at a position is argmax over tokens of (processed score + g), and the
# drafter drafts with the same noise over its candidates. A draft is accepted iff it equals the
# target's token at its position, so the output is a function of (seed, target) alone: exactly what
# the target samples by itself with that seed, for any K, any draft policy and any drafter.
#
# Positions: `position` is the absolute index, in prompt + generated tokens, of the token being
# chosen (the first generated token is at len(prompt)). In a round whose `last` token sits at
# position P, draft i (0-based) and verify row i are at P + 1 + i; the correction or bonus token
# after `a` accepted drafts is at P + 1 + a.
#
# Numerics, all float64, reproduced bit for bit by android_demo/native/sampling.cpp:
#   * bits(seed, pos, t) = mix(row_key + (t + 1) * GAMMA), row_key = mix(mix(seed + GAMMA) ^ pos),
#     with mix SplitMix64's finalizer: token t's bits are draw t of SplitMix64(row_key), and
#     mix(seed + GAMMA) is SplitMix64(seed)'s first draw.
#   * u = (2 * (bits >> 12) + 1) / 2^53: the midpoints of 2^52 equal cells, strictly inside (0, 1)
#     (53 bits plus a half would round 2^53 - 1/2 up to 1).
#   * g = -log(-log(u)) with `portable_log`, fdlibm's log algorithm written with + - * / and bit
#     operations only (no FMA: build C++ with -ffp-contract=off). torch.log (SLEEF vector code plus
#     libm for the tails) and numpy.log each disagree with glibc's log in the last bit on 0.04% and
#     0.13% of random inputs (measured here), which could flip a near-tie between two tokens; IEEE
#     basic operations cannot. (gumbel_argmax ranks with the fast numpy log first and lets the
#     portable one decide among the near-best: the same result, at libm speed.)
#   * score = logits.double() / temperature (one correctly rounded division), -inf where top-k or
#     top-p removed the token. The log-softmax normaliser is one constant per row and leaves the
#     argmax unchanged, so it is not subtracted: no exp or log of the logits is needed. Top-k is
#     comparisons only; top-p takes the kept set from `probabilities()` (exp and sums, the same
#     last-bit caveat as the rejection rule: only a token at the top-p boundary can move).
#   * ties of score + g: the lowest token id wins.

_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB

# fdlibm e_log.c constants, given as exact bit patterns (C++ uses the same hex floats).
_LN2_HI = float.fromhex("0x1.62e42feep-1")
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_LG1 = float.fromhex("0x1.5555555555593p-1")
_LG2 = float.fromhex("0x1.999999997fa04p-2")
_LG3 = float.fromhex("0x1.2492494229359p-2")
_LG4 = float.fromhex("0x1.c71c51d8e78afp-3")
_LG5 = float.fromhex("0x1.7466496cb03dep-3")
_LG6 = float.fromhex("0x1.39a09d078c69fp-3")
_LG7 = float.fromhex("0x1.2f112df3e5244p-3")

# Every g lies in [GUMBEL_LOW, GUMBEL_HIGH] (u runs from 2^-53 to 1 - 2^-53: g from -3.61 to 36.74),
# so a token whose score is more than GUMBEL_SPAN below the best can never win and needs no noise.
GUMBEL_LOW = -3.7
GUMBEL_HIGH = 36.8
GUMBEL_SPAN = GUMBEL_HIGH - GUMBEL_LOW
# The fast (libm) and exact (portable) totals of a token differ by far less than this, relative to
# 1 + |total|: any token that can win exactly is within it of the fast maximum.
_FILTER_TOL = 1e-9


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over a uint64 array (multiplications wrap mod 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def noise_row_key(seed: int, position: int) -> int:
    """The counter-stream key of one (seed, position) row."""
    if position < 0:
        raise GenerationError(f"position must be >= 0, got {position}.")
    return _mix_int(_mix_int((seed + _GAMMA) & MASK64) ^ (position & MASK64))


def _as_ids(token_ids) -> np.ndarray:
    if isinstance(token_ids, torch.Tensor):
        ids = token_ids.detach().to("cpu", torch.int64).numpy()
    else:
        ids = np.asarray(token_ids, dtype=np.int64)
    ids = ids.reshape(-1)
    if ids.size and ids.min() < 0:
        raise GenerationError(f"token ids must be >= 0, got {int(ids.min())}.")
    return ids


def noise_bits(seed: int, position: int, token_ids) -> np.ndarray:
    """uint64 hash of each (seed, position, token): draw `token` of SplitMix64(noise_row_key(seed, position))."""
    ids = _as_ids(token_ids).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix((ids + np.uint64(1)) * np.uint64(_GAMMA) + np.uint64(noise_row_key(seed, position)))


def bits_to_uniform(bits: np.ndarray) -> np.ndarray:
    """(2 * (bits >> 12) + 1) * 2^-53: exact in float64, strictly inside (0, 1)."""
    odd = ((bits >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)
    return odd.astype(np.float64) * (2.0**-53)


def portable_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float64 values, the same bits in every IEEE-754 implementation.

    fdlibm's algorithm (x = 2^k (1 + f), sqrt(2)/2 <= 1 + f < sqrt(2), s = f / (2 + f),
    log(1 + f) = f - s (f - R(s^2))) in its one-branch form, from correctly rounded + - * / only;
    within about one ulp of the true log.
    """
    x = np.asarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    hx = (bits >> np.uint64(32)) & np.uint64(0x000FFFFF)
    i = (hx + np.uint64(0x95F64)) & np.uint64(0x100000)  # set iff the mantissa is >= sqrt(2)
    k = (bits >> np.uint64(52)).astype(np.int64) - 1023 + (i >> np.uint64(20)).astype(np.int64)
    m = ((hx | (i ^ np.uint64(0x3FF00000))) << np.uint64(32)) | (bits & np.uint64(0xFFFFFFFF))
    f = m.view(np.float64) - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    dk = k.astype(np.float64)
    return dk * _LN2_HI - ((s * (f - r) - dk * _LN2_LO) - f)


def gumbel_noise(seed: int, position: int, token_ids) -> torch.Tensor:
    """Gumbel(0, 1) noise [len(token_ids)] float64 for these tokens at this (seed, absolute position)."""
    u = bits_to_uniform(noise_bits(seed, position, token_ids))
    return torch.from_numpy(-portable_log(-portable_log(u)))


def coupled_scores(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits.double() / temperature [N], -inf where top-k or top-p removes the token (sampling only).

    The processed log-probabilities up to one constant per row, which no argmax sees.
    """
    scaled = logits.double() / cfg.temperature
    if cfg.top_p < 1.0:
        return scaled.masked_fill(probabilities(logits, cfg) == 0, float("-inf"))
    if cfg.top_k and cfg.top_k < scaled.numel():
        kth = torch.topk(scaled, cfg.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled


def gumbel_argmax(scores: torch.Tensor, token_ids: torch.Tensor, seed: int, position: int) -> int:
    """The id maximising scores + gumbel_noise(seed, position, id); ties go to the lowest id.

    Equal to that full argmax, computed in three exact steps: tokens more than GUMBEL_SPAN (plus a
    rounding margin) below the best score lose whatever their noise and get none; the rest get
    their uniforms and a fast libm Gumbel (numpy's log, within a few ulp of the true one, so within
    1e-13 of the exact g); only tokens whose fast total is within _FILTER_TOL of the fast maximum
    (almost always one) get the exact portable g, and the exact totals decide.
    """
    scores = scores.detach().cpu().double().reshape(-1)
    ids = torch.as_tensor(token_ids).detach().cpu().reshape(-1).long()
    if scores.numel() == 0:
        raise GenerationError("no token to sample: the logits are empty or NaN.")
    top = float(scores.max())
    keep = scores >= top - (GUMBEL_SPAN + 1e-6 * (1.0 + abs(top)))
    if not bool(keep.any()):
        raise GenerationError("no token to sample: the logits are empty or NaN.")
    ids_np, scores_np = ids[keep].numpy(), scores[keep].numpy()
    u = bits_to_uniform(noise_bits(seed, position, ids_np))
    fast = scores_np - np.log(-np.log(u))
    best_fast = float(fast.max())
    near = fast >= best_fast - _FILTER_TOL * (1.0 + abs(best_fast))
    ids_np, exact = ids_np[near], scores_np[near] - portable_log(-portable_log(u[near]))
    return int(ids_np[exact == exact.max()].min())


def coupled_choose(logits: torch.Tensor, cfg: SamplingConfig, seed: int, position: int) -> int:
    """The target's token at absolute `position` from its logits [vocab] under Gumbel-max coupling.

    Distributed exactly as `probabilities(logits, cfg)`; greedy (temperature 0) is the argmax.
    """
    if cfg.greedy:
        return int(torch.argmax(logits))
    scores = coupled_scores(logits, cfg)
    return gumbel_argmax(scores, torch.arange(scores.numel()), seed, position)


def coupled_draft_candidates(
    candidate_ids: torch.Tensor, candidate_logits: torch.Tensor, cfg: SamplingConfig, seed: int, position: int
) -> int:
    """The drafter's token at `position` from its candidates, with the target's noise (sampling only)."""
    return gumbel_argmax(coupled_scores(candidate_logits, cfg), candidate_ids, seed, position)


def coupled_draft(out, cfg: SamplingConfig, seed: int, position: int) -> int:
    """The draft at absolute `position` from a DraftOutput, coupled to the target through the shared noise.

    Sampling: argmax over the candidates of (processed candidate logits + the noise of their ids),
    the same processing `draft_token` applies to the candidate logits (a repeated id keeps its best
    score). Greedy: the drafter's own greedy pick, as `draft_token`.
    """
    if cfg.greedy:
        return out.greedy_token()
    return coupled_draft_candidates(out.candidate_ids, out.candidate_logits, cfg, seed, position)


def coupled_accept(
    drafts: list[int], target_logits: torch.Tensor, cfg: SamplingConfig, seed: int, first_position: int
) -> tuple[int, int]:
    """`accept_drafts` for the coupled rule: verify logits [len(drafts) + 1, vocab], drafts[i] at first_position + i.

    A draft stands iff it is the target's own coupled token at its position; returns (accepted,
    next_token) with next_token the target's token at first_position + accepted.
    """
    for i, token in enumerate(drafts):
        best = coupled_choose(target_logits[i], cfg, seed, first_position + i)
        if best != token:
            return i, best
    return len(drafts), coupled_choose(target_logits[len(drafts)], cfg, seed, first_position + len(drafts))
