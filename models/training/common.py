"""Pieces shared by target and drafter training: token streams, schedules, resumable checkpoints."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import MtpEdgeError


class TokenStream:
    """One long token tensor; batches are random windows drawn with a seeded generator."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens.long()

    def __len__(self) -> int:
        return self.tokens.numel()

    def batch(self, generator: torch.Generator, batch_size: int, length: int) -> torch.Tensor:
        """[batch_size, length + 1] windows: inputs are [:, :-1], next-token targets [:, 1:]."""
        if len(self) <= length + 1:
            raise MtpEdgeError(f"the corpus has {len(self)} tokens, fewer than one training window of {length + 1}: add text.")
        starts = torch.randint(0, len(self) - length - 1, (batch_size,), generator=generator)
        return torch.stack([self.tokens[s:s + length + 1] for s in starts.tolist()])


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """Decay matrices only: norms, scalars and 1-d tensors keep their scale."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


class Checkpoint:
    """Periodic, atomic training checkpoints (model, optimizer, step, data generator) for resuming."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def save(self, step: int, model, optimizer, generator: torch.Generator, extra: dict | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self, model, optimizer, generator: torch.Generator) -> tuple[int, dict]:
        """Restores state if a checkpoint exists; returns (next step, extra)."""
        if not self.path.is_file():
            return 0, {}
        state = torch.load(self.path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        return state["step"], state["extra"]


def init_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """Small normal init for matrices and embeddings (as transformers initialises Gemma 4); norms at one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            else:
                p.fill_(1.0)
