"""Train a small Gemma 4 target from scratch (the embedded default's target)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import DecoderConfig
from ..target import Gemma4Target
from .common import Checkpoint, TokenStream, adamw, cosine_lr, init_weights


def train_target(
    cfg: DecoderConfig,
    stream: TokenStream,
    *,
    steps: int,
    batch_size: int = 16,
    length: int = 256,
    lr: float = 3e-3,
    warmup: int = 60,
    seed: int = 0,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 100,
    model: Gemma4Target | None = None,
    desc: str = "train target",
) -> Gemma4Target:
    """Train from scratch, or fine-tune `model` (then `cfg` is its config)."""
    torch.manual_seed(seed)
    if model is None:
        model = Gemma4Target(cfg, max_seq_len=1)  # trained through a NoCache view: the static cache is never used
        init_weights(model)
    model.train()
    cache_free = model.with_cache("none")  # same weights, a pass over whole windows from position 0
    optimizer = adamw(model, lr)
    generator = torch.Generator().manual_seed(seed)
    start = checkpoint.load(model, optimizer, generator)[0] if checkpoint else 0
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step")
    started, seen = time.perf_counter(), 0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        batch = stream.batch(generator, batch_size, length)
        logits, _ = cache_free(batch[:, :-1], 0)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen += batch_size * length
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{seen / (time.perf_counter() - started):.0f}")
        if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            checkpoint.save(step + 1, model, optimizer, generator)
    return model.eval()


@torch.no_grad()
def evaluate_target(model: Gemma4Target, stream: TokenStream, *, windows: int = 32, length: int = 256, seed: int = 1234) -> dict:
    """Held-out next-token accuracy and perplexity on fixed random windows."""
    generator = torch.Generator().manual_seed(seed)
    batch = stream.batch(generator, windows, length)
    losses, correct, total = [], 0, 0
    cache_free = model.with_cache("none")
    for row in batch.split(8):
        logits, _ = cache_free(row[:, :-1], 0)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), row[:, 1:].reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == row[:, 1:]).sum())
        total += row[:, 1:].numel()
    nll = float(torch.stack(losses).sum()) / total
    return {"next_token_accuracy": correct / total, "perplexity": float(torch.exp(torch.tensor(nll))), "tokens": total}
