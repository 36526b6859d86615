"""`mtp-edge bench long-context BUNDLE`: prefill and decode cost as the context grows, and exactness there.

For each prompt length L (default 512, 2048 and the longest that leaves room for the new tokens),
one prompt of L tokens is prefilled, then plain decoding and speculative decoding (fixed K, then
auto) each generate `new_tokens` greedy tokens after it. Reported per length: prefill seconds and
milliseconds per prompt token, decode milliseconds per new token (plain, fixed K, auto) and whether
both speculative outputs equal the plain one: a long prompt crosses the sliding window many times,
which is where a rollback or mask bug shows.

The prompt is text where the bundle has a tokenizer (the Python standard library's own source, the
shipped pair's domain, found on every machine), else seeded random ids. Timings are one run each
(prefill excluded from decode), so compare lengths within a report, not across runs.
"""

from __future__ import annotations

import inspect
import random
import time
from pathlib import Path

from tqdm import tqdm

from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.speculative import generate
from mtp_edge.runtime.tuning import backend_name

DEFAULT_LENGTHS = (512, 2048)


def long_prompt(bundle_dir: str | Path, length: int, vocab_size: int, seed: int = 0) -> list[int]:
    """`length` prompt ids: the standard library's source through the bundle's tokenizer, else random ids."""
    from mtp_edge.runtime.tokenizer import TextCodec

    codec = TextCodec.from_folder(bundle_dir)
    if codec is None:
        rng = random.Random(seed)
        return [rng.randrange(vocab_size) for _ in range(length)]
    import argparse
    import collections
    import typing

    ids: list[int] = []
    modules = [inspect, argparse, collections, typing, random]
    while len(ids) < length:  # the sources concatenated, repeated if a context outgrows them
        for module in modules:
            ids += codec.encode(inspect.getsource(module))
    return ids[:length]


def bench_long_context(bundle_dir: str | Path, fmt: str | None = None, *, lengths: tuple[int, ...] | None = None,
                       new_tokens: int = 32, k: int | None = None, threads: int | None = None) -> dict:
    from mtp_edge.runtime.backends import open_bundle

    backend = open_bundle(bundle_dir, fmt, threads=threads)
    context = backend.max_seq_len
    k = backend.max_draft if k is None else k
    longest = context - new_tokens - k - 1
    if longest < 1:
        raise GenerationError(f"{bundle_dir}: a context of {context} positions leaves no room for a prompt and "
                              f"{new_tokens} new tokens; export with a longer --max-seq-len or pass fewer --new-tokens.")
    lengths = tuple(lengths) if lengths else (*[n for n in DEFAULT_LENGTHS if n < longest], longest)
    too_long = [n for n in lengths if not 1 <= n <= longest]
    if too_long:
        raise GenerationError(f"--lengths {too_long}: prompts must be 1..{longest} tokens on this bundle (context {context}, "
                              f"{new_tokens} new tokens, K={k}).")
    rows = []
    for length in tqdm(lengths, desc="long-context", unit="length"):
        prompt = long_prompt(bundle_dir, length, backend.vocab_size)
        row = {"prompt_tokens": length}
        outputs = {}
        for name, kk in (("plain", 0), (f"k{k}", k), ("auto", "auto")):
            started = time.perf_counter()
            # No EOS ids: every length runs its whole budget, the decode cost is what is measured.
            result = generate(backend, prompt, k=kk, max_new_tokens=new_tokens)
            stats = result.stats
            outputs[name] = result.tokens
            row[name] = {
                "ms_per_token": stats.decode_s / max(stats.new_tokens - 1, 1) * 1e3,
                "tokens_per_target_call": stats.tokens_per_target_call,
                "wall_s": time.perf_counter() - started,
            }
            if name == "plain":
                row["prefill_s"] = stats.prefill_s
                row["prefill_ms_per_token"] = stats.prefill_s / length * 1e3
        row["speculative_equals_plain"] = all(out == outputs["plain"] for out in outputs.values())
        rows.append(row)
    return {
        "bundle": str(bundle_dir),
        "backend": backend_name(backend),
        "context": context,
        "k": k,
        "new_tokens": new_tokens,
        "rows": rows,
        "speculative_equals_plain": all(r["speculative_equals_plain"] for r in rows),
    }


def format_long_context(report: dict) -> str:
    k = f"k{report['k']}"
    lines = [f"{report['bundle']} ({report['backend']}, context {report['context']}, {report['new_tokens']} new tokens)",
             f"{'prompt':>7} {'prefill s':>9} {'ms/prompt tok':>13} {'plain ms/tok':>12} {k + ' ms/tok':>10} "
             f"{'auto ms/tok':>11} {'spec == plain':>13}"]
    for r in report["rows"]:
        lines.append(f"{r['prompt_tokens']:>7} {r['prefill_s']:>9.2f} {r['prefill_ms_per_token']:>13.3f} "
                     f"{r['plain']['ms_per_token']:>12.3f} {r[k]['ms_per_token']:>10.3f} {r['auto']['ms_per_token']:>11.3f} "
                     f"{str(r['speculative_equals_plain']):>13}")
    return "\n".join(lines)
