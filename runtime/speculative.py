"""The speculative decoding loop: prefill, then rounds of draft -> verify -> accept -> rollback.

Read top to bottom. Invariants held across rounds:
  * `tokens` ends with `last`, the newest emitted token; its K/V are not in the cache yet.
  * `position` is the position of `last`; the cache holds validated K/V for positions < position.
  * `hidden` is the target's final hidden state at position - 1: the state that produced `last`.
A round drafts K tokens from (last, hidden) at the constant `position`, verifies [last, d1..dK]
in one target pass at positions position..position+K, keeps the longest accepted prefix plus the
target's own next token, and rolls the cache back to the new validated length. K = 0 is plain
autoregressive decoding through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .backend import Backend
from .errors import GenerationError
from .sampling import SamplingConfig, SplitMix64, accept_drafts, choose, draft_token


@dataclass
class Round:
    position: int  # position of the token the round started from
    drafted: int
    accepted: int


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    rounds: int = 0  # target verify calls (one per round)
    drafted: int = 0
    accepted: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""  # "eos", "max_new_tokens" or "cache_full"
    round_log: list[Round] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """Tokens emitted per verify pass (the first token comes from prefill and is not counted)."""
        return (self.new_tokens - 1) / self.rounds if self.rounds else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("round_log")
        d.update(
            acceptance_rate=self.acceptance_rate,
            tokens_per_target_call=self.tokens_per_target_call,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
        )
        return d


@dataclass
class Generation:
    tokens: list[int]  # the new tokens only, EOS included when generation stopped on it
    stats: GenerationStats


def check_request(backend: Backend, prompt: Sequence[int], k: int, max_new_tokens: int) -> None:
    if len(prompt) == 0:
        raise GenerationError("the prompt is empty: give at least one token (for example the BOS id).")
    bad = [t for t in prompt if not 0 <= t < backend.vocab_size]
    if bad:
        raise GenerationError(f"prompt token id {bad[0]} is outside the vocabulary [0, {backend.vocab_size}).")
    if len(prompt) >= backend.max_seq_len:
        raise GenerationError(
            f"the prompt has {len(prompt)} tokens but the cache holds {backend.max_seq_len} positions: "
            "raise --max-seq-len or shorten the prompt."
        )
    if k < 0:
        raise GenerationError(f"K (draft tokens per round) must be >= 0, got {k}.")
    if k > backend.max_draft:
        reason = "it has no drafter" if not backend.has_drafter else f"it was built for K <= {backend.max_draft}"
        raise GenerationError(f"K={k} is not available on this backend: {reason}.")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")


def prefill(backend: Backend, prompt: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return backend.prefill(torch.tensor(prompt, dtype=torch.long))


def draft(
    backend: Backend, last: int, hidden: torch.Tensor, position: int, k: int, sampling: SamplingConfig, rng: SplitMix64
) -> tuple[list[int], list[torch.Tensor | None]]:
    """K drafter steps at a constant position, each fed the drafter's own projected hidden."""
    drafts, probs = [], []
    token = last
    for _ in range(k):
        out = backend.draft(token, hidden, position, validated_length=position)
        token, q = draft_token(out, backend.vocab_size, sampling, rng)
        drafts.append(token)
        probs.append(q)
        hidden = out.hidden
    return drafts, probs


def speculative_decode(
    backend: Backend, last: int, hidden: torch.Tensor, position: int, k: int, sampling: SamplingConfig, rng: SplitMix64
) -> tuple[list[int], int, torch.Tensor]:
    """One round: draft k tokens, verify [last, d1..dk] in one target pass, accept.

    Returns (new tokens: the accepted drafts then the target's next token, how many drafts were
    accepted, the target hidden state that produced the final new token).
    """
    drafts, draft_probs = draft(backend, last, hidden, position, k, sampling, rng)
    target_logits, target_hidden = backend.verify(torch.tensor([last, *drafts], dtype=torch.long), position)
    accepted, next_token = accept_drafts(drafts, draft_probs, target_logits, sampling, rng)
    return [*drafts[:accepted], next_token], accepted, target_hidden[accepted]


def generate(
    backend: Backend,
    prompt: Sequence[int],
    *,
    k: int = 0,
    max_new_tokens: int = 64,
    sampling: SamplingConfig = SamplingConfig(),
    eos_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Generate up to max_new_tokens after the prompt; k = 0 decodes with the target alone."""
    check_request(backend, prompt, k, max_new_tokens)
    rng = SplitMix64(sampling.seed)
    stats = GenerationStats(prompt_tokens=len(prompt))
    eos = set(eos_ids)
    out: list[int] = []

    def emit(new: list[int]) -> bool:
        """Stream tokens out; True when an EOS ended the generation (it is emitted, as transformers does)."""
        for token in new:
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in eos:
                stats.stop_reason = "eos"
                return True
        return False

    started = time.perf_counter()
    logits, hidden = prefill(backend, prompt)
    last = choose(logits, sampling, rng)
    stats.prefill_s = time.perf_counter() - started
    position = len(prompt)
    stopped = emit([last])

    started = time.perf_counter()
    while not stopped:
        remaining = max_new_tokens - len(out)
        if remaining == 0:
            stats.stop_reason = "max_new_tokens"
            break
        if position >= backend.max_seq_len:
            stats.stop_reason = "cache_full"
            break
        # A round emits at most k_round + 1 tokens and writes positions position..position + k_round:
        # shrink K so that neither the token budget nor the cache can overflow.
        k_round = min(k, remaining - 1, backend.max_seq_len - 1 - position)
        new, accepted, hidden = speculative_decode(backend, out[-1], hidden, position, k_round, sampling, rng)

        stats.rounds += 1
        stats.drafted += k_round
        stats.accepted += accepted
        stats.round_log.append(Round(position, k_round, accepted))
        # Validated now: the old last token and the accepted drafts; the new last token is not cached yet.
        position += accepted + 1
        backend.rollback(position)
        stopped = emit(new)
    stats.decode_s = time.perf_counter() - started
    stats.new_tokens = len(out)
    if not stats.stop_reason:
        stats.stop_reason = "max_new_tokens"
    return Generation(out, stats)
