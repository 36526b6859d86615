"""`mtp-edge bench methods BUNDLE [--backend pte|onnx|eager]`: the latency of each call the speculative loop makes.

One harness, `time_methods`, times any runtime Backend (runtime/backend.py) through its own
protocol: prefill = one prefill chunk, verify = K + 1 tokens, decode = a verify of 1 token, draft =
one drafter step reading the validated K/V, draft_chain_n = n greedy draft steps in one call (where
the backend has them). Each backend is opened by a small opener that adds
what it alone knows (bytes on disk, threads, dtype) to the report.
"""

from __future__ import annotations

import os
import time

import torch
from tqdm import tqdm

from .timing import loadavg, peak_rss_bytes, time_calls

BACKENDS = ("pte", "onnx", "eager")


def bench_positions(max_seq_len: int, k: int, prefill_chunk: int, fill_chunks: int) -> int:
    """Positions already filled by prefill chunks before the timed calls: as many of `fill_chunks`
    as leave room for one more prefill chunk and a verify of K + 1 tokens."""
    room = max_seq_len - max(prefill_chunk, k + 1)
    return max(0, min(fill_chunks, room // prefill_chunk)) * prefill_chunk


def ratios(methods: dict, k: int) -> dict:
    med = {name: m["median_ms"] for name, m in methods.items()}
    decode = med["decode"]
    out = {"verify_over_decode": med["verify"] / decode, "prefill_chunk_over_decode": med["prefill"] / decode}
    if "draft" in med:
        out["draft_over_decode"] = med["draft"] / decode
        # A speculative round costs K draft steps and one verify; plain decoding costs one decode per
        # token. Tokens a round must yield on average (accepted + 1) to beat plain decoding:
        out["break_even_tokens_per_round"] = (med["verify"] + k * med["draft"]) / decode
    chain = med.get(f"draft_chain_{k}")
    if chain is not None:  # the K drafts in one call (greedy): the goal is at most 0.4x a decode
        out[f"draft_chain_{k}_over_decode"] = chain / decode
        out["break_even_tokens_per_round_one_call"] = (med["verify"] + min(chain, k * med["draft"])) / decode
    return out


def method_calls(backend, *, k: int, prefill_chunk: int, max_seq_len: int, fill_chunks: int = 4,
                 seed: int = 0) -> tuple[dict, int]:
    """The calls time_methods times, by name, on a backend whose cache this fills first (see
    time_methods); returns them and the number of positions filled."""
    fill = bench_positions(max_seq_len, k, prefill_chunk, fill_chunks)
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, backend.vocab_size, (n,), generator=gen)

    # The fill (at least one chunk, for the hidden state the draft step reads); positions past `fill`
    # are written again by the timed calls.
    _, hidden = backend.prefill(tokens(max(fill, prefill_chunk)))
    hidden = hidden.reshape(-1)
    calls = {
        "prefill": (lambda t=tokens(prefill_chunk): backend.prefill(t)),
        "verify": (lambda t=tokens(k + 1): backend.verify(t, fill)),
        "decode": (lambda t=tokens(1): backend.verify(t, fill)),
    }
    if backend.has_drafter:
        token, last = int(tokens(1)), max(fill, 1)
        calls["draft"] = lambda: backend.draft(token, hidden, last - 1, last)
        for n in sorted(getattr(backend, "draft_chains", ())):  # greedy drafts of n tokens in one call
            calls[f"draft_chain_{n}"] = lambda n=n: backend.draft_chain(token, hidden, last - 1, last, n)
    return calls, fill


def time_methods(backend, *, k: int, prefill_chunk: int, max_seq_len: int | None = None, repeats: int = 20,
                 warmup: int = 2, fill_chunks: int = 4, seed: int = 0, desc: str = "methods") -> dict:
    """Latency of each call of a Backend, median / p90 over `repeats` calls after `warmup` calls.

    The cache is first filled with `fill_chunks` prefill chunks of random tokens (a prompt of that
    length through backend.prefill), then verify, decode and draft are timed at the next position
    (so attention sees a filled cache). The prefill chunk is timed as a one-chunk prompt, at
    position 0: every backend's target attends over its whole static cache buffer whatever the
    position, so the work is the same. max_seq_len: the usable positions (default the backend's).
    A backend that counts the cache bytes it copies (`bytes_copied`, ONNX) also gets them per call.
    """
    max_seq_len = backend.max_seq_len if max_seq_len is None else max_seq_len
    calls, fill = method_calls(backend, k=k, prefill_chunk=prefill_chunk, max_seq_len=max_seq_len,
                               fill_chunks=fill_chunks, seed=seed)
    counts_copies = hasattr(backend, "bytes_copied")
    methods, copied = {}, {}
    for name, call in tqdm(calls.items(), desc=desc, leave=False):
        if counts_copies:
            before = backend.bytes_copied
            call()
            copied[name] = backend.bytes_copied - before
        methods[name] = time_calls(call, repeats, warmup)
    methods["prefill"]["ms_per_token"] = methods["prefill"]["median_ms"] / prefill_chunk
    report = {"k": k, "prefill_chunk": prefill_chunk, "max_seq_len": max_seq_len, "filled_positions": fill,
              "methods": methods, "ratios": ratios(methods, k)}
    if counts_copies:
        report["cache_bytes_copied_per_call"] = copied
    return report


# --------------------------------------------------------------------------- the backends


def _open_pte(bundle_dir, threads=None):
    from mtp_edge.runtime.backends.pte import PteBackend

    backend = PteBackend(bundle_dir, verify_hashes=False)
    m = backend.manifest
    facts = {"delegate": m.backend, "buffer_length": backend.buffer_length,
             "pte_bytes": m.sizes.get("pte_bytes", m.artifact("program").bytes),
             "weight_bytes": m.sizes.get("weight_bytes"), "cache_bytes": m.sizes.get("cache_bytes")}
    return backend, backend.k, backend.prefill_chunk, None, facts


def _open_onnx(bundle_dir, threads=None):
    from mtp_edge.runtime.backends.onnx import OnnxBackend

    backend = OnnxBackend(bundle_dir, threads=threads, verify_hashes=False)
    m = backend.manifest
    facts = {"threads": backend.session_threads, "cache_bytes": m.cache.bytes, "onnx_bytes": dict(m.sizes.get("onnx_bytes") or {})}
    return backend, backend.k, backend.prefill_chunk, None, facts


def _open_eager(bundle_dir, threads=None):
    """The pair the bundle was exported from, eager, with the cache buffer of the bundle's .pte."""
    from mtp_edge.export.manifest import read_manifest
    from mtp_edge.export.pte import buffer_length
    from mtp_edge.models import load_pair
    from mtp_edge.runtime.commands.evaluate import reference_dirs

    m = read_manifest(bundle_dir, verify_hashes=False)
    k, chunk, max_seq_len = m.k, m.prefill_chunk, m.cache.max_seq_len
    target, drafter = load_pair(*reference_dirs(m), buffer_length(max_seq_len, k, chunk))
    return eager_backend(target, drafter), k, chunk, max_seq_len, eager_facts(target)


OPENERS = {"pte": _open_pte, "onnx": _open_onnx, "eager": _open_eager}


def eager_backend(target, drafter):
    from mtp_edge.runtime.backends.eager import EagerBackend

    return EagerBackend(target, drafter)


def eager_facts(target) -> dict:
    return {"dtype": str(target.embed_tokens.weight.dtype).removeprefix("torch."), "buffer_length": target.max_seq_len}


def bench_methods(bundle_dir, backend: str = "pte", *, threads: int | None = None, repeats: int = 20, warmup: int = 2,
                  fill_chunks: int = 4, seed: int = 0, bandwidth: bool = False) -> dict:
    """time_methods on a bundle: its .pte (ExecuTorch), its ONNX graphs (ONNX Runtime, `threads`
    intra-op threads), or eagerly the checkpoint pair it was exported from. bandwidth: also decode's
    achieved weight bandwidth against this machine's read bandwidth (bandwidth.py), once the backend
    is closed."""
    load_before = loadavg()
    started = time.perf_counter()
    runner, k, chunk, max_seq_len, facts = OPENERS[backend](bundle_dir, threads)
    load_s = time.perf_counter() - started
    timed = time_methods(runner, k=k, prefill_chunk=chunk, max_seq_len=max_seq_len, repeats=repeats, warmup=warmup,
                         fill_chunks=fill_chunks, seed=seed, desc=f"{backend} methods")
    report = {"bundle": str(bundle_dir), "backend": backend, **facts, **timed, "load_s": load_s, **machine(load_before)}
    if bandwidth:
        from .bandwidth import decode_bandwidth

        del runner  # the buffer the machine's bandwidth is measured with takes its memory
        report["decode_bandwidth"] = decode_bandwidth(bundle_dir, backend, timed["methods"]["decode"]["median_ms"])
    return report


def eager_methods(target, drafter=None, *, k: int = 4, prefill_chunk: int = 32, repeats: int = 20, warmup: int = 2,
                  fill_chunks: int = 4, seed: int = 0) -> dict:
    """time_methods on eager modules whose cache buffer is that of an export at this K and prefill chunk."""
    from mtp_edge.export.pte import cache_slack

    load_before = loadavg()
    max_seq_len = target.max_seq_len - cache_slack(k, prefill_chunk)  # the usable length of an export with this buffer
    timed = time_methods(eager_backend(target, drafter), k=k, prefill_chunk=prefill_chunk, max_seq_len=max_seq_len,
                         repeats=repeats, warmup=warmup, fill_chunks=fill_chunks, seed=seed, desc="eager methods")
    return {"backend": "eager", **eager_facts(target), **timed, **machine(load_before)}


def machine(load_before: float) -> dict:
    return {
        "torch_threads": torch.get_num_threads(),
        # 1-minute load average before/after: other work on the machine skews every latency here.
        "loadavg_before_after": [load_before, loadavg()],
        "cpus": os.cpu_count(),
        # Of this whole process (imports, the loaded program, anything run before in it).
        "process_peak_rss_bytes": peak_rss_bytes(),
    }


def methods_in_child(bundle_dir, backend: str = "pte", repeats: int = 20) -> dict:
    """bench_methods on the bundle's `backend` format in a fresh process: the latencies, and the runtime's peak RSS alone."""
    from .timing import run_in_child

    return run_in_child(bench_methods, str(bundle_dir), backend, repeats=repeats)
