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
        self.max_draft = 16
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
