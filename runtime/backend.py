"""The interface every backend (eager, ExecuTorch, ONNX Runtime, native) implements.

Shapes are fixed where a device needs them and everything crossing the boundary is a tensor
or a plain int. The speculative loop owns the bookkeeping; a backend owns the cache memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class DraftOutput:
    candidate_ids: torch.Tensor  # [C] int64: the tokens the drafter scored
    candidate_logits: torch.Tensor  # [C] float: their logits
    hidden: torch.Tensor  # [backbone_hidden]: projected hidden, fed to the next draft step
    argmax_id: int | None = None  # the graph's greedy pick among the candidates (None: take it from the logits)

    def greedy_token(self) -> int:
        if self.argmax_id is not None:
            return self.argmax_id
        return int(self.candidate_ids[torch.argmax(self.candidate_logits)])


class Backend(Protocol):
    vocab_size: int
    max_seq_len: int  # cache positions; nothing is ever written at or past it
    max_draft: int  # largest K the backend can verify (K + 1 tokens per verify)
    has_drafter: bool
    # Optional: the draft lengths a backend drafts greedily in one call (draft_chain); absent or empty:
    # only step by step.
    draft_chains: frozenset[int]

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt [T] from position 0: (logits [vocab] at the last prompt position, its hidden [backbone])."""

    def verify(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run tokens [n <= max_draft + 1] at positions start..start+n-1: (logits [n, vocab], hidden [n, backbone])."""

    def draft(self, token: int, hidden: torch.Tensor, position: int, validated_length: int) -> DraftOutput:
        """One drafter step from the last token at `position`, reading K/V of positions < validated_length."""

    def draft_chain(self, token: int, hidden: torch.Tensor, position: int, validated_length: int, k: int
                    ) -> tuple[list[int], torch.Tensor]:
        """Optional, for k in draft_chains: k greedy draft steps in one call, each step's argmax feeding
        the next; (the k draft ids, each step's top candidate probability [k])."""

    def rollback(self, length: int) -> None:
        """Declare the cache valid for positions < length; later reads must mask the stale tail."""
