"""`mtp-edge bench loop|eager|acceptance`: the speculative loop's own overhead, eager decoding speed, acceptance.

Ratios are measured within one run; these machines are noisy, so compare nothing across runs.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from mtp_edge.runtime.backend import DraftOutput
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate


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

    from mtp_edge.runtime.backends.eager import EagerBackend

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


def bench_acceptance(ks=range(1, 7), temperatures=(0.0, 0.7), max_new_tokens: int = 64, backend_name: str = "eager") -> dict:
    """Acceptance and tokens per target call of the shipped pair at each K, greedy and sampled."""
    from mtp_edge.models.config import target_config_from_folder

    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
    from mtp_edge.runtime.commands.demo import BACKENDS

    pair = default_pair_dir()
    backend = BACKENDS[backend_name](pair)
    eos = target_config_from_folder(pair / "target").eos_token_ids
    prompts = [p["ids"] for p in heldout_prompts(pair)]
    rows = []
    for temperature in temperatures:
        for k in tqdm([0, *ks], desc=f"acceptance T={temperature}", leave=False):
            tokens = seconds = rounds = drafted = accepted = 0
            for i, prompt in enumerate(prompts):
                s = generate(backend, prompt, k=k, max_new_tokens=max_new_tokens, eos_ids=eos,
                             sampling=SamplingConfig(temperature=temperature, seed=i)).stats
                tokens, seconds = tokens + s.new_tokens - 1, seconds + s.decode_s
                rounds, drafted, accepted = rounds + s.rounds, drafted + s.drafted, accepted + s.accepted
            rows.append({"temperature": temperature, "k": k, "decode_tokens_per_s": tokens / seconds,
                         "acceptance_rate": accepted / drafted if drafted else 0.0,
                         "tokens_per_target_call": tokens / rounds})
    for row in rows:  # speedup against plain decoding (k = 0) at the same temperature
        plain = next(r for r in rows if r["temperature"] == row["temperature"] and r["k"] == 0)
        row["speedup"] = row["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
    return {"backend": backend_name, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "rows": rows}
