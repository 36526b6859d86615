"""Benchmarks that print figures: the loop's own overhead, and eager decoding speed.

Ratios are measured within one run; these machines are noisy, so compare nothing across runs.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from .backend import DraftOutput
from .sampling import SamplingConfig
from .speculative import generate


class TimedNullBackend:
    """A backend whose calls cost almost nothing and are timed, so the loop's own time shows."""

    has_drafter = True

    def __init__(self, vocab_size: int = 256, hidden: int = 8, max_seq_len: int = 1 << 20, max_draft: int = 16):
        self.vocab_size, self.max_seq_len, self.max_draft = vocab_size, max_seq_len, max_draft
        self.logits = torch.randn(max_draft + 1, vocab_size, generator=torch.Generator().manual_seed(0))
        self.hidden = torch.zeros(max_draft + 1, hidden)
        self.ids = torch.arange(vocab_size)
        self.backend_s = 0.0

    def _timed(self, fn):
        start = time.perf_counter()
        out = fn()
        self.backend_s += time.perf_counter() - start
        return out

    def prefill(self, tokens):
        return self._timed(lambda: (self.logits[0], self.hidden[0]))

    def verify(self, tokens, start):
        n = tokens.numel()
        return self._timed(lambda: (self.logits[:n], self.hidden[:n]))

    def draft(self, token, hidden, position, validated_length):
        return self._timed(lambda: DraftOutput(self.ids, self.logits[token % self.logits.shape[0]], hidden))

    def rollback(self, length):
        pass


def bench_loop(k: int = 4, rounds: int = 2000, sampling: SamplingConfig = SamplingConfig()) -> dict:
    backend = TimedNullBackend()
    start = time.perf_counter()
    result = generate(backend, [1], k=k, max_new_tokens=rounds * (k + 1), sampling=sampling)
    total = time.perf_counter() - start
    n = result.stats.rounds
    return {
        "k": k,
        "greedy": sampling.greedy,
        "rounds": n,
        "loop_overhead_us_per_round": (total - backend.backend_s) / n * 1e6,
        "backend_us_per_round": backend.backend_s / n * 1e6,
    }


def bench_eager(preset_name: str = "tiny", k: int = 4, new_tokens: int = 64, prompt_len: int = 16, seed: int = 0) -> dict:
    """Plain vs speculative tokens/s on the eager backend for a random-weight pair of the preset's geometry."""
    from mtp_edge.models import Gemma4Drafter, Gemma4Target, preset

    from .backends.eager import EagerBackend

    pair = preset(preset_name)
    torch.manual_seed(seed)
    target = Gemma4Target(pair.target, max_seq_len=prompt_len + new_tokens + k + 1).eval()
    drafter = Gemma4Drafter(pair.drafter).eval()
    backend = EagerBackend(target, drafter)
    prompt = torch.randint(0, pair.target.vocab_size, (prompt_len,)).tolist()
    rows = {}
    for name, kk in tqdm([("plain", 0), ("speculative", k)], desc="eager bench", leave=False):
        generate(backend, prompt, k=kk, max_new_tokens=4)  # warm-up
        s = generate(backend, prompt, k=kk, max_new_tokens=new_tokens).stats
        rows[name] = {
            "k": kk,
            "decode_tokens_per_s": s.decode_tokens_per_s,
            "tokens_per_target_call": s.tokens_per_target_call,
            "acceptance_rate": s.acceptance_rate,
        }
    return {"preset": preset_name, "weights": "random", "new_tokens": new_tokens, **rows,
            "speedup": rows["speculative"]["decode_tokens_per_s"] / rows["plain"]["decode_tokens_per_s"]}
