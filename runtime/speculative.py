"""The speculative decoding loop: prefill, then rounds of draft -> verify -> accept -> rollback.

Read top to bottom. Invariants held across rounds:
  * `tokens` ends with `last`, the newest emitted token; its K/V are not in the cache yet.
  * `position` is the position of `last`; the cache holds validated K/V for positions < position.
  * `hidden` is the target's final hidden state at position - 1: the state that produced `last`.
A round drafts K tokens from (last, hidden) at the constant `position`, verifies [last, d1..dK]
in one target pass at positions position..position+K, keeps the longest accepted prefix plus the
target's own next token, and rolls the cache back to the new validated length. K = 0 is plain
autoregressive decoding through the same code.

K is fixed (`k=N`) or chosen before every round by a DraftPolicy (`k="auto"`, runtime/draft_policy.py):
the draft length with the most expected tokens per second from the measured call costs and the
running acceptance, K = 0 where drafting does not pay. A draft may also stop early when the
drafter's own top probability falls below `draft_p_min`: decided from the drafter's distribution
before its token is drawn, never from the value drawn, so the rejection rule stays unbiased.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .backend import Backend
from .draft_policy import DraftPolicy
from .errors import GenerationError
from .sampling import (SamplingConfig, SplitMix64, accept_drafts, choose, coupled_accept, coupled_choose, coupled_draft,
                       draft_token, probabilities)


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
    early_stops: int = 0  # drafts cut short by draft_p_min
    draft_calls: int = 0  # rounds drafted by one draft_chain call (greedy) rather than step by step
    policy: dict | None = None  # k="auto": the draft lengths chosen, plain rounds, the cost table used
    round_log: list[Round] = field(default_factory=list)

    @property
    def k_histogram(self) -> dict[int, int]:
        """Rounds per draft length actually drafted (0 = the round decoded plainly)."""
        counts: dict[int, int] = {}
        for r in self.round_log:
            counts[r.drafted] = counts.get(r.drafted, 0) + 1
        return dict(sorted(counts.items()))

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
            k_histogram={str(k): n for k, n in self.k_histogram.items()},
            plain_rounds=self.k_histogram.get(0, 0),
        )
        return d


@dataclass
class Generation:
    tokens: list[int]  # the new tokens only, EOS included when generation stopped on it
    stats: GenerationStats


def check_request(backend: Backend, prompt: Sequence[int], k: int | str, max_new_tokens: int) -> None:
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
    if k == "auto":
        k = 0 if not backend.has_drafter else backend.max_draft
    if isinstance(k, bool) or not isinstance(k, int):
        raise GenerationError(f"K (draft tokens per round) must be a whole number or 'auto', got {k!r}.")
    if k < 0:
        raise GenerationError(f"K (draft tokens per round) must be >= 0, got {k}.")
    if k > backend.max_draft:
        reason = "it has no drafter" if not backend.has_drafter else f"it was built for K <= {backend.max_draft}"
        raise GenerationError(f"K={k} is not available on this backend: {reason}.")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")


def prefill(backend: Backend, prompt: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return backend.prefill(torch.tensor(prompt, dtype=torch.long))


@dataclass(frozen=True)
class EarlyStop:
    """--draft-p-min: a draft stops before a step whose drafter top probability p (its processed
    distribution over its candidates) is below p_min, judged before anything is drawn from it, so
    greedy and sampling stay exact.

    k="auto" does not stop drafts on its own. A cost-based rule (stop when S * p, S the product of
    the earlier steps' p, is worth less than the step's time) was measured here and dropped: the
    shipped drafter's top probability is well below its acceptance, so the rule stopped drafts that
    paid (eager, 8 held-out prompts: auto 118 tok/s with it, 141 without, best fixed K 156)."""

    p_min: float = 0.0

    def stops(self, p: float) -> bool:
        return p < self.p_min


def draft(
    backend: Backend, last: int, hidden: torch.Tensor, position: int, k: int, sampling: SamplingConfig, rng: SplitMix64,
    early_stop: EarlyStop | None = None, timer: Callable[[str, int, float], None] | None = None,
) -> tuple[list[int], list[torch.Tensor | None]]:
    """Up to k drafter steps at a constant position, each fed the drafter's own projected hidden.

    A step is timed with the work around its call (the p-min test, drawing the token): the policy
    weighs what a step costs the loop, and on a fast backend that work is a good part of it."""
    drafts, probs = [], []
    token = last
    for step in range(k):
        started = time.perf_counter()
        out = backend.draft(token, hidden, position, validated_length=position)
        stop = early_stop is not None and early_stop.stops(_top_probability(out.candidate_logits, sampling))
        if not stop:
            if sampling.coupled:  # the noise of the position this draft would take
                token, q = coupled_draft(out, sampling, sampling.seed, position + 1 + step), None
            else:
                token, q = draft_token(out, backend.vocab_size, sampling, rng)
            drafts.append(token)
            probs.append(q)
            hidden = out.hidden
        if timer is not None:
            timer("draft_step", 1, time.perf_counter() - started)
        if stop:
            break
    return drafts, probs


def draft_in_one_call(
    backend: Backend, last: int, hidden: torch.Tensor, position: int, k: int,
    early_stop: EarlyStop | None = None, timer: Callable[[str, int, float], None] | None = None,
) -> tuple[list[int], list[torch.Tensor | None]]:
    """k greedy drafts from one backend call (draft_chain). It cannot stop early, but an early stop
    still cuts the drafts it would have stopped before, so the verify pays for the rest only."""
    started = time.perf_counter()
    drafts, top = backend.draft_chain(last, hidden, position, position, k)
    if early_stop is not None:
        for i, p in enumerate(top.tolist()):
            if early_stop.stops(p):
                drafts = drafts[:i]
                break
    if timer is not None:
        timer("draft_call", k, time.perf_counter() - started)
    return drafts, [None] * len(drafts)


def _top_probability(candidate_logits: torch.Tensor, sampling: SamplingConfig) -> float:
    if sampling.greedy:
        return float(torch.softmax(candidate_logits.double(), dim=-1).max())
    return float(probabilities(candidate_logits, sampling).max())


def speculative_decode(
    backend: Backend, last: int, hidden: torch.Tensor, position: int, k: int, sampling: SamplingConfig, rng: SplitMix64,
    early_stop: EarlyStop | None = None, timer: Callable[[str, int, float], None] | None = None, one_call: bool = False,
) -> tuple[list[int], int, int, torch.Tensor]:
    """One round: draft up to k tokens (one_call: greedy, in one draft_chain call), verify
    [last, d1..dn] in one target pass, accept.

    Returns (new tokens: the accepted drafts then the target's next token, how many drafts were
    made, how many accepted, the target hidden state that produced the final new token).
    """
    if one_call:
        drafts, draft_probs = draft_in_one_call(backend, last, hidden, position, k, early_stop, timer)
    else:
        drafts, draft_probs = draft(backend, last, hidden, position, k, sampling, rng, early_stop, timer)
    started = time.perf_counter()  # timed with the accept rule, as draft steps are with theirs
    target_logits, target_hidden = backend.verify(torch.tensor([last, *drafts], dtype=torch.long), position)
    if sampling.coupled:  # verify row j chooses the token at position + 1 + j
        accepted, next_token = coupled_accept(drafts, target_logits, sampling, sampling.seed, position + 1)
    else:
        accepted, next_token = accept_drafts(drafts, draft_probs, target_logits, sampling, rng)
    if timer is not None:
        timer("verify", len(drafts) + 1, time.perf_counter() - started)
    return [*drafts[:accepted], next_token], len(drafts), accepted, target_hidden[accepted]


_backend_locks: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()
_generating = threading.local()  # ids of the backends this thread is generating on


def one_generation_per_backend(fn):
    """A backend's cache holds one sequence: generations on one backend object from several threads
    run one after the other, never interleaved (which would mix their K/V). A generation started on a
    backend from inside its own generation (an on_token callback) would deadlock, and is refused."""

    @functools.wraps(fn)
    def run(backend, *args, **kwargs):
        active = _generating.__dict__.setdefault("ids", set())
        if id(backend) in active:
            raise GenerationError("generate was called on a backend from inside a generation on that same backend "
                                  "(an on_token callback?); open a second backend, or generate after this one returns.")
        with _locks_guard:
            lock = _backend_locks.setdefault(backend, threading.Lock())
        with lock:
            active.add(id(backend))
            try:
                return fn(backend, *args, **kwargs)
            finally:
                active.discard(id(backend))

    return run


@one_generation_per_backend
def generate(
    backend: Backend,
    prompt: Sequence[int],
    *,
    k: int | str = 0,
    max_k: int | None = None,
    policy: DraftPolicy | None = None,
    draft_p_min: float | None = None,
    max_new_tokens: int = 64,
    sampling: SamplingConfig = SamplingConfig(),
    eos_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Generate up to max_new_tokens after the prompt.

    k: draft tokens per round (0 = the target alone), or "auto": a DraftPolicy picks each round's
    draft length (at most max_k, default the backend's K) from measured costs (runtime/tuning.py)
    and the acceptance so far; pass `policy` to supply your own. draft_p_min: stop a draft before a
    step whose top probability is below it (no value: no draft stops early).
    """
    check_request(backend, prompt, k, max_new_tokens)
    if draft_p_min is not None and not 0.0 <= draft_p_min <= 1.0:
        raise GenerationError(f"draft_p_min must be a probability in [0, 1], got {draft_p_min}.")
    if k == "auto" and backend.has_drafter and backend.max_draft > 0:
        bound = backend.max_draft if max_k is None else max_k
        if not 0 <= bound <= backend.max_draft:
            raise GenerationError(f"max_k must be in 0..{backend.max_draft} on this backend, got {bound}.")
        bound = min(bound, backend.max_seq_len - 2)  # a verify of bound + 1 tokens must fit the cache
        if policy is None:
            from .tuning import make_policy

            # A seeded run under the rejection rule draws different tokens for different draft
            # lengths: its policy must not follow live timings, or the run would not repeat.
            policy, source = make_policy(backend, bound, frozen=sampling.depends_on_draft_lengths, greedy=sampling.greedy)
        else:
            if policy.max_k > bound:
                raise GenerationError(f"the given draft policy drafts up to {policy.max_k} tokens, but this backend verifies at most "
                                      f"{bound} per round here: build it with max_k <= {bound}.")
            source = "given"
    elif k == "auto":  # no drafter: nothing to choose
        k, policy = 0, None
    elif policy is not None:
        raise GenerationError(f"a draft policy chooses K itself: pass k='auto' with it, not k={k}.")
    rng = SplitMix64(sampling.seed)
    stats = GenerationStats(prompt_tokens=len(prompt))
    eos = set(eos_ids)
    out: list[int] = []
    timer = policy.observe_call if policy is not None else None
    # One-call drafts are greedy: sampling needs each step's distribution on the runtime side.
    chains = getattr(backend, "draft_chains", frozenset()) if sampling.greedy else frozenset()

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
    if sampling.coupled:
        last = coupled_choose(logits, sampling, sampling.seed, len(prompt))
    else:
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
        early_stop = None if draft_p_min is None else EarlyStop(p_min=draft_p_min)
        if policy is not None:
            plan = policy.next_plan()
            k_wanted, one_call = plan.k, plan.draft_mode == "call"
        else:  # a fixed K drafts in one call where it can, unless asked to stop drafts early
            k_wanted, one_call = k, draft_p_min is None
        # A round emits at most k_round + 1 tokens and writes positions position..position + k_round:
        # shrink K so that neither the token budget nor the cache can overflow.
        k_round = min(k_wanted, remaining - 1, backend.max_seq_len - 1 - position)
        one_call = one_call and sampling.greedy and k_round in chains
        new, drafted, accepted, hidden = speculative_decode(
            backend, out[-1], hidden, position, k_round, sampling, rng, early_stop, timer, one_call)
        if policy is not None:
            policy.observe(drafted, accepted)

        stats.rounds += 1
        stats.drafted += drafted
        stats.accepted += accepted
        stats.early_stops += drafted < k_round
        stats.draft_calls += one_call
        stats.round_log.append(Round(position, drafted, accepted))
        # Validated now: the old last token and the accepted drafts; the new last token is not cached yet.
        position += accepted + 1
        backend.rollback(position)
        stopped = emit(new)
    stats.decode_s = time.perf_counter() - started
    stats.new_tokens = len(out)
    if not stats.stop_reason:
        stats.stop_reason = "max_new_tokens"
    if policy is not None:
        stats.policy = {**policy.stats(), "cost_source": source}
        if not policy.frozen:
            from .tuning import remember

            remember(backend, policy)
    return Generation(out, stats)
