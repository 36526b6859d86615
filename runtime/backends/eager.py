"""The eager PyTorch backend over mtp_edge.models: the reference every other backend is held to."""

from __future__ import annotations

import torch

from mtp_edge.models import Gemma4Drafter, Gemma4Target

from ..backend import DraftOutput


class EagerBackend:
    def __init__(self, target: Gemma4Target, drafter: Gemma4Drafter | None = None, max_draft: int = 16):
        self.target = target
        self.drafter = drafter
        self.vocab_size = target.cfg.vocab_size
        self.max_seq_len = target.max_seq_len
        self.max_draft = max_draft if drafter is not None else 0
        self.has_drafter = drafter is not None
        self.validated_length = 0

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = torch.tensor([tokens.numel() - 1])
        logits, hidden = self.target(tokens.view(1, -1), torch.tensor([0]), logits_at=last)
        self.validated_length = tokens.numel()
        return logits[0, 0], hidden[0, -1]

    @torch.inference_mode()
    def verify(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = self.target(tokens.view(1, -1), torch.tensor([start]))
        return logits[0], hidden[0]

    @torch.inference_mode()
    def draft(self, token: int, hidden: torch.Tensor, position: int, validated_length: int) -> DraftOutput:
        embedding = self.target.embed(torch.tensor([[token]]))
        ids, logits, projected, best = self.drafter.draft_step(
            embedding, hidden.view(1, 1, -1), torch.tensor([position]), torch.tensor([validated_length]), self.target.store_kv()
        )
        return DraftOutput(ids, logits, projected, int(best[0]))

    def rollback(self, length: int) -> None:
        # Static cache: a query never reads keys at or after its own position, so a length is all there is to roll back.
        self.validated_length = length
