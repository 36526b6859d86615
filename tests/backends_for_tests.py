"""Small real backends for testing the loop itself.

`MarkovBackend` is a complete Backend whose target and drafter are bigram tables: fast enough
to run the loop twenty thousand times for the sampling test, with distributions computable
exactly. `ScriptedDrafts` wraps a real backend and drafts from a known continuation with
mistakes at chosen positions, so a test can place rejections exactly where it wants them.
"""

from __future__ import annotations

import torch

from mtp_edge.runtime.backend import DraftOutput


class MarkovBackend:
    has_drafter = True

    def __init__(self, target_logits: torch.Tensor, drafter_logits: torch.Tensor, max_seq_len: int = 64, max_draft: int = 8):
        self.target_table = target_logits  # [vocab, vocab]: row = previous token
        self.drafter_table = drafter_logits
        self.vocab_size = target_logits.shape[0]
        self.max_seq_len = max_seq_len
        self.max_draft = max_draft
        self.writes: list[int] = []  # every cache position written, to check the loop never overflows

    def prefill(self, tokens):
        self.writes.extend(range(tokens.numel()))
        return self.target_table[tokens[-1]], torch.zeros(1)

    def verify(self, tokens, start):
        self.writes.extend(range(start, start + tokens.numel()))
        return self.target_table[tokens], torch.zeros(tokens.numel(), 1)

    def draft(self, token, hidden, position, validated_length):
        return DraftOutput(torch.arange(self.vocab_size), self.drafter_table[token], hidden)

    def rollback(self, length):
        pass


class ScriptedDrafts:
    def __init__(self, inner, sequence: list[int], wrong_at: set[int] = frozenset()):
        self.inner = inner
        self.sequence = sequence  # prompt + the target's own continuation
        self.wrong_at = wrong_at  # positions whose draft is deliberately wrong
        self.vocab_size, self.max_seq_len, self.has_drafter = inner.vocab_size, inner.max_seq_len, True
        self.max_draft = getattr(inner, "max_draft", 16)  # an exported bundle verifies at most K + 1 tokens
        self.step = 0

    def prefill(self, tokens):
        return self.inner.prefill(tokens)

    def verify(self, tokens, start):
        self.step = 0
        return self.inner.verify(tokens, start)

    def draft(self, token, hidden, position, validated_length):
        at = position + 1 + self.step
        self.step += 1
        true = self.sequence[at] if at < len(self.sequence) else 0
        guess = (true + 1) % self.vocab_size if at in self.wrong_at else true
        return DraftOutput(torch.tensor([guess]), torch.zeros(1), hidden)

    def rollback(self, length):
        self.inner.rollback(length)


# --------------------------------------------------------------------------- k="auto" greedy property


def auto_cases():
    """Hypothesis strategies (keyword -> strategy) of a greedy k="auto" case: prompt, budget, cost
    table, acceptance history, live or frozen timings, early stops, scripted drafts."""
    from hypothesis import strategies as st

    from mtp_edge.runtime.draft_policy import CostTable

    # call: the seconds per token of a one-call draft (draft_call[n] = call * n), or none in the table.
    costs = st.builds(
        lambda decode, step, per_token, k, call: CostTable(decode, step, {n: decode + per_token * (n - 1) for n in range(2, k + 2)},
                                                           {} if call is None else {n: call * n for n in range(2, k + 1)}),
        st.floats(0.5, 2.0), st.floats(0.0, 0.5), st.floats(0.0, 1.5), st.integers(1, 6), st.none() | st.floats(0.0, 0.5),
    )
    return dict(seed=st.integers(0, 10_000), prompt_len=st.integers(1, 12), max_new_tokens=st.integers(1, 40), costs=costs,
                history=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=8), frozen=st.booleans(),
                p_min=st.sampled_from([None, 0.0, 0.3, 0.9]), scripted=st.booleans())


def assert_greedy_auto_is_plain(backend, *, seed, prompt_len, max_new_tokens, costs, history, frozen, p_min, scripted) -> None:
    """Any cost table, any acceptance history, live or frozen timings, early stops: k="auto" gives the
    tokens of plain decoding on `backend`, and its stats add up."""
    from mtp_edge.runtime.draft_policy import AcceptanceEstimate, DraftPolicy
    from mtp_edge.runtime.speculative import generate

    prompt = torch.randint(0, backend.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    plain = generate(backend, prompt, k=0, max_new_tokens=max_new_tokens)
    if scripted:
        wrong = set(torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist())
        backend = ScriptedDrafts(backend, prompt + plain.tokens, wrong)
    max_k = min(costs.max_k, backend.max_draft)
    acceptance = AcceptanceEstimate(max_k)
    for drafted, accepted in history:
        drafted = min(drafted, max_k)
        acceptance = acceptance.observed(drafted, min(accepted, drafted))
    policy = DraftPolicy(costs, max_k, acceptance=acceptance, frozen=frozen, probe_every=3)
    spec = generate(backend, prompt, k="auto", policy=policy, draft_p_min=p_min, max_new_tokens=max_new_tokens)
    assert spec.tokens == plain.tokens
    assert spec.stats.stop_reason == plain.stats.stop_reason
    s = spec.stats
    assert s.new_tokens - 1 == s.rounds + s.accepted and sum(s.k_histogram.values()) == s.rounds
