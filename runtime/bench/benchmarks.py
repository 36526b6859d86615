"""Benchmarks that print figures: the loop's own overhead, eager decoding speed, acceptance, and
per-method latency / export cost of ExecuTorch bundles (`python -m mtp_edge.runtime.bench.benchmarks -h`).

Ratios are measured within one run; these machines are noisy, so compare nothing across runs.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

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


# --------------------------------------------------------------------------- per-method latency of an export


def _percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    p90 = ms[min(len(ms) - 1, max(0, -(-len(ms) * 9 // 10) - 1))]  # nearest-rank 90th percentile
    return {"median_ms": statistics.median(ms), "p90_ms": p90, "min_ms": ms[0], "repeats": len(ms)}


def _time_calls(fn, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return _percentiles(seconds)


def _bench_positions(max_seq_len: int, k: int, prefill_chunk: int, fill_chunks: int) -> int:
    """Positions already filled by prefill chunks before the timed calls: as many of `fill_chunks`
    as leave room for one more prefill chunk and a verify of K + 1 tokens."""
    room = max_seq_len - max(prefill_chunk, k + 1)
    return max(0, min(fill_chunks, room // prefill_chunk)) * prefill_chunk


def _ratios(methods: dict, k: int) -> dict:
    med = {name: m["median_ms"] for name, m in methods.items()}
    decode = med["decode"]
    out = {"verify_over_decode": med["verify"] / decode, "prefill_chunk_over_decode": med["prefill"] / decode}
    if "draft" in med:
        out["draft_over_decode"] = med["draft"] / decode
        # A speculative round costs K draft steps and one verify; plain decoding costs one decode per
        # token. Tokens a round must yield on average (accepted + 1) to beat plain decoding:
        out["break_even_tokens_per_round"] = (med["verify"] + k * med["draft"]) / decode
    return out


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_methods(bundle_dir, repeats: int = 20, warmup: int = 2, fill_chunks: int = 4, seed: int = 0) -> dict:
    """Latency of each method of a bundle's .pte on the ExecuTorch (pte) backend.

    The cache is first filled with `fill_chunks` prefill chunks of random tokens, then each method
    is timed at the next position (so attention sees a filled cache; with a static cache every
    method attends over the whole buffer anyway): prefill = one chunk, verify = K + 1 tokens,
    decode = 1 token, draft = one drafter step reading the validated K/V. Median / p90 over
    `repeats` calls after `warmup` calls.
    """
    from mtp_edge.runtime.backends.pte import PteBackend

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    backend = PteBackend(bundle_dir, verify_hashes=False)
    load_s = time.perf_counter() - started
    m = backend.manifest
    k, chunk, vocab = backend.k, backend.prefill_chunk, backend.vocab_size
    fill = _bench_positions(backend.max_seq_len, k, chunk, fill_chunks)
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, n), generator=gen)

    def pos(v: int) -> torch.Tensor:
        return torch.tensor([v], dtype=torch.long)

    run = {name: method.execute for name, method in backend.methods.items()}
    hidden = None
    for start in range(0, fill, chunk):
        _, hidden = run["prefill"]([tokens(chunk), pos(start), pos(chunk - 1)])
    if hidden is None:
        hidden = torch.zeros(backend.hidden_size, dtype=backend.dtype)
    hidden = hidden.reshape(-1).to(backend.dtype).contiguous()

    calls = {
        "prefill": (lambda t=tokens(chunk): run["prefill"]([t, pos(fill), pos(chunk - 1)])),
        "verify": (lambda t=tokens(k + 1): run["verify"]([t, pos(fill)])),
        "decode": (lambda t=tokens(1): run["decode"]([t, pos(fill)])),
    }
    if backend.has_drafter:
        token = tokens(1).reshape(1)
        last = max(fill, 1)
        calls["draft"] = lambda: run["draft"]([token, hidden, pos(last - 1), pos(last)])
    methods = {}
    for name, call in tqdm(calls.items(), desc="pte methods", leave=False):
        methods[name] = _time_calls(call, repeats, warmup)
    methods["prefill"]["ms_per_token"] = methods["prefill"]["median_ms"] / chunk
    sizes = m.get("sizes", {})
    return {
        "bundle": str(bundle_dir),
        "backend": "pte",
        "delegate": m.get("backend"),
        "k": k,
        "prefill_chunk": chunk,
        "max_seq_len": backend.max_seq_len,
        "buffer_length": backend.buffer_length,
        "filled_positions": fill,
        "methods": methods,
        "ratios": _ratios(methods, k),
        "pte_bytes": sizes.get("pte_bytes", m["artifacts"]["program"]["bytes"]),
        "weight_bytes": sizes.get("weight_bytes"),
        "cache_bytes": sizes.get("cache_bytes"),
        "load_s": load_s,
        "torch_threads": torch.get_num_threads(),
        # 1-minute load average before/after: other work on the machine skews every latency here.
        "loadavg_before_after": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        # Of this whole process (imports, the loaded program, anything run before in it).
        "process_peak_rss_bytes": _peak_rss_bytes(),
    }


def bench_onnx_methods(bundle_dir, threads: int | None = None, repeats: int = 20, warmup: int = 2,
                       fill_chunks: int = 4, seed: int = 0) -> dict:
    """The four latencies of bench_methods on the ONNX Runtime backend (target.onnx: a prefill chunk,
    a verify of K + 1 tokens, a one-token decode; drafter.onnx: one draft step), plus the cache bytes
    the backend copies per call (the new K/V rows) against the cache's size."""
    from mtp_edge.runtime.backends.onnx import OnnxBackend

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    backend = OnnxBackend(bundle_dir, threads=threads, verify_hashes=False)
    load_s = time.perf_counter() - started
    k, chunk, vocab = backend.k, backend.prefill_chunk, backend.vocab_size
    fill = _bench_positions(backend.max_seq_len, k, chunk, fill_chunks)
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n,), generator=gen)

    hidden = None
    for start in range(0, fill, chunk):
        _, hidden = backend.prefill_at(tokens(chunk), start)
    if hidden is None:
        hidden = torch.zeros(backend.manifest["target_config"]["hidden_size"])
    hidden = hidden.reshape(-1)
    calls = {
        "prefill": (lambda t=tokens(chunk): backend.prefill_at(t, fill)),
        "verify": (lambda t=tokens(k + 1): backend.verify(t, fill)),
        "decode": (lambda t=tokens(1): backend.verify(t, fill)),
    }
    token, last = int(tokens(1)), max(fill, 1)
    calls["draft"] = lambda: backend.draft(token, hidden, last - 1, last)
    methods, copied = {}, {}
    for name, call in tqdm(calls.items(), desc="onnx sessions", leave=False):
        before = backend.bytes_copied
        call()
        copied[name] = backend.bytes_copied - before
        methods[name] = _time_calls(call, repeats, warmup)
    methods["prefill"]["ms_per_token"] = methods["prefill"]["median_ms"] / chunk
    m = backend.manifest
    return {
        "bundle": str(bundle_dir),
        "backend": "onnx",
        "threads": backend.session_threads,
        "k": k,
        "prefill_chunk": chunk,
        "max_seq_len": backend.max_seq_len,
        "filled_positions": fill,
        "methods": methods,
        "ratios": _ratios(methods, k),
        "cache_bytes_copied_per_call": copied,
        "cache_bytes": m["cache"]["bytes"],
        "onnx_bytes": m["sizes"].get("onnx_bytes"),
        "load_s": load_s,
        "loadavg_before_after": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        "process_peak_rss_bytes": _peak_rss_bytes(),
    }


def bench_eager_methods(target, drafter=None, *, k: int = 4, prefill_chunk: int = 32, repeats: int = 20,
                        warmup: int = 2, fill_chunks: int = 4, seed: int = 0) -> dict:
    """The same four latencies as bench_methods, on the eager modules (the eager backend's calls)."""
    from mtp_edge.runtime.backends.eager import EagerBackend

    load_before = os.getloadavg()[0]
    backend = EagerBackend(target, drafter)
    cfg = target.cfg
    max_seq_len = target.max_seq_len - max(k, prefill_chunk - 1)  # the usable length of an export with this buffer
    fill = _bench_positions(max_seq_len, k, prefill_chunk, fill_chunks)
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (1, n), generator=gen)

    def pos(v: int) -> torch.Tensor:
        return torch.tensor([v], dtype=torch.long)

    with torch.inference_mode():
        hidden = torch.zeros(1, 1, cfg.hidden_size, dtype=target.embed_tokens.weight.dtype)
        for start in range(0, fill, prefill_chunk):
            _, hidden = target(tokens(prefill_chunk), pos(start), logits_at=pos(prefill_chunk - 1))
        hidden = hidden[0, -1]
        last = max(fill, 1)
        calls = {
            "prefill": (lambda t=tokens(prefill_chunk): target(t, pos(fill), logits_at=pos(prefill_chunk - 1))),
            "verify": (lambda t=tokens(k + 1): target(t, pos(fill))),
            "decode": (lambda t=tokens(1): target(t, pos(fill))),
        }
        if drafter is not None:
            token = int(tokens(1))
            calls["draft"] = lambda: backend.draft(token, hidden, last - 1, last)
        methods = {name: _time_calls(call, repeats, warmup) for name, call in calls.items()}
    methods["prefill"]["ms_per_token"] = methods["prefill"]["median_ms"] / prefill_chunk
    return {
        "backend": "eager",
        "dtype": str(target.embed_tokens.weight.dtype).removeprefix("torch."),
        "k": k,
        "prefill_chunk": prefill_chunk,
        "buffer_length": target.max_seq_len,
        "filled_positions": fill,
        "methods": methods,
        "ratios": _ratios(methods, k),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before_after": [load_before, os.getloadavg()[0]],
    }


# --------------------------------------------------------------------------- measured export (wall time, peak RSS)


def _run_child(argv: list[str], result_path: Path) -> dict:
    """Run `python -m mtp_edge.runtime.bench.benchmarks ARGV` (output streams through); its JSON result, wall
    time and peak RSS (the kernel's ru_maxrss of that one child, via wait4)."""
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "mtp_edge.runtime.bench.benchmarks", *argv, "--result", str(result_path)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode} after {wall:.0f}s")
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    return {"result": result, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


class _RssWatch:
    """Samples this process's RSS in a thread; `mark(label)` closes a stage and records its peak.

    Installed as a tee on stderr, every progress line of write_bundle / export_pte becomes a mark,
    so each export stage gets the peak RSS seen while it ran (sampled, so short spikes may be
    missed: the process's true peak is ru_maxrss).
    """

    def __init__(self, stream, interval: float = 0.1):
        self.stream, self.interval = stream, interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.started = time.perf_counter()
        self.stage_peak = self.peak = 0
        self.stages: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            r = self.rss()
            self.stage_peak, self.peak = max(self.stage_peak, r), max(self.peak, r)

    def mark(self, label: str) -> None:
        r = self.rss()
        self.stages.append({"stage": label, "t_s": round(time.perf_counter() - self.started, 2),
                            "rss_gib": round(r / 2**30, 3), "stage_peak_rss_gib": round(max(self.stage_peak, r) / 2**30, 3)})
        self.stage_peak = r

    def write(self, s: str) -> int:
        for line in s.splitlines():
            if line.startswith(("[export", "[bundle")):
                self.mark(line.strip())
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _export_child(target_dir, drafter_dir, out_dir, **export) -> dict:
    """The child side of measure_export: write_bundle with an RSS watch on its progress lines."""
    from mtp_edge.export.bundle import write_bundle

    try:  # a benchmark export that outgrows the machine should be the first thing the OOM killer ends
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    watch = _RssWatch(sys.stderr)
    sys.stderr = watch
    try:
        started = time.perf_counter()
        manifest = write_bundle(target_dir, drafter_dir, out_dir, progress=True, **export)
        wall = time.perf_counter() - started
    finally:
        sys.stderr = watch.stream
        watch.stop()
    return {"wall_s_in_process": wall, "peak_rss_bytes_self": _peak_rss_bytes(), "stages": watch.stages,
            "sizes": manifest["sizes"]}


def measure_export(target_dir, drafter_dir, out_dir, *, k: int, max_seq_len: int, prefill_chunk: int,
                   backend: str = "xnnpack", quantize: str | None = "none") -> dict:
    """Export a bundle in a fresh subprocess: wall time (process start to exit, imports included),
    peak RSS of that process, per-stage RSS, and the bundle's sizes."""
    out_dir = Path(out_dir)
    child = _run_child(
        ["_export", str(target_dir), str(drafter_dir), str(out_dir), "--k", str(k), "--max-seq-len", str(max_seq_len),
         "--prefill-chunk", str(prefill_chunk), "--backend", backend, "--quantize", quantize or "default"],
        out_dir.parent / f".{out_dir.name}.export-result.json",
    )
    r = child["result"]
    return {
        "export_wall_s": child["wall_s"],
        "export_wall_s_in_process": r["wall_s_in_process"],
        "export_peak_rss_bytes": child["peak_rss_bytes"],
        "export_peak_rss_gib": child["peak_rss_bytes"] / 2**30,
        "stages": r["stages"],
        "sizes": r["sizes"],
        "pte_bytes": r["sizes"]["pte_bytes"],
        "pte_gib": r["sizes"]["pte_bytes"] / 2**30,
        "weight_bytes": r["sizes"]["weight_bytes"],
    }


# --------------------------------------------------------------------------- E2B-width slices


def e2b_slice_configs(layers: int, preset_name: str = "e2b", vocab_size: int | None = None):
    """(target DecoderConfig, DrafterConfig): the preset's real geometry with only `layers` decoder layers.

    Width, vocabulary, head dims, RoPE, softcap, the double-wide MLP and the PLE table (vocab x
    layers x 256) are the real ones; the drafter is the real assistant (clustered head). Layers
    alternate sliding / full, the last one full (transformers forces it): the first two own the
    KV cache (the sliding and the full store layer) and the remaining `layers - 2` are KV-shared,
    double-wide layers, so every extra layer is one of the kind that makes up most of E2B (20 of 35).

    vocab_size (a multiple of the drafter's 2048 centroids) shrinks the vocabulary of both (token
    table, PLE table, drafter head) and nothing else: a cheaper point for memory-scaling fits.
    """
    from dataclasses import replace

    from mtp_edge.models.config import FULL, SLIDING, preset

    if layers is None:  # the whole model, real layer pattern
        pair = preset(preset_name)
        target, drafter = pair.target, pair.drafter
        if vocab_size is not None:
            target = replace(target, vocab_size=vocab_size, ple_vocab_size=vocab_size)
            drafter = replace(drafter, decoder=replace(drafter.decoder, vocab_size=vocab_size))
        return target, drafter
    if layers < 2:
        raise ValueError(f"an E2B slice needs at least 2 layers (one sliding and one full store layer), got {layers}.")
    pair = preset(preset_name)
    full = pair.target
    by_type = {t: (full.head_dims[full.layer_types.index(t)], full.num_kv_heads[full.layer_types.index(t)]) for t in (SLIDING, FULL)}
    types = tuple(FULL if (i % 2 == 1 or i == layers - 1) else SLIDING for i in range(layers))
    target = replace(
        full, num_layers=layers, layer_types=types,
        head_dims=tuple(by_type[t][0] for t in types), num_kv_heads=tuple(by_type[t][1] for t in types),
        num_kv_shared_layers=layers - 2,
    )
    drafter = pair.drafter
    if vocab_size is not None:
        if vocab_size % drafter.num_centroids:
            raise ValueError(f"vocab_size {vocab_size} must be a multiple of the drafter's {drafter.num_centroids} centroids.")
        target = replace(target, vocab_size=vocab_size, ple_vocab_size=vocab_size)
        drafter = replace(drafter, decoder=replace(drafter.decoder, vocab_size=vocab_size))
    return target, drafter


@torch.no_grad()
def random_modules(target_cfg, drafter_cfg, *, max_seq_len: int = 1, dtype: torch.dtype = torch.bfloat16, seed: int = 0, std: float = 0.02):
    """Random-weight target and drafter, built straight in `dtype` (no fp32 detour): matrices
    N(0, std), norm scales and layer scalars 1, a random token ordering for the clustered head.
    drafter_cfg None: the target alone, (target, None)."""
    from mtp_edge.models import Gemma4Drafter, Gemma4Target

    gen = torch.Generator().manual_seed(seed)
    out = []
    for cls, cfg, kw in ((Gemma4Target, target_cfg, {"max_seq_len": max_seq_len}), (Gemma4Drafter, drafter_cfg, {})):
        if cfg is None:
            out.append(None)
            continue
        with torch.device("meta"):
            module = cls(cfg, dtype=dtype, **kw)
        module.to_empty(device="cpu")
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std, generator=gen)
            else:
                p.fill_(1.0)
        for name, buf in module.named_buffers():
            if name.endswith("layer_scalar"):
                buf.fill_(1.0)
            elif name.endswith("token_ordering"):
                buf.copy_(torch.randperm(buf.numel(), generator=gen))
        module.reset_derived_buffers()
        out.append(module.eval())
    return tuple(out)


def fp32_weight_bytes(target_cfg, drafter_cfg) -> int:
    """Bytes of the fp32 weights (parameters, tied ones once, and persistent buffers) of the pair,
    counted on meta-device modules: what an unquantized export carries."""
    from mtp_edge.models.sizes import build_drafter, build_target

    total = 0
    for module in (build_target(target_cfg), build_drafter(drafter_cfg)):
        total += sum(p.numel() * 4 for p in module.parameters())
        persistent = module.state_dict(keep_vars=True)
        total += sum(b.numel() * b.element_size() for n, b in module.named_buffers() if n in persistent)
    return total


def bench_e2b_slice(out_dir, layers: int | None = 4, max_seq_len: int = 512, k: int = 4, prefill_chunk: int = 32,
                    backend: str = "xnnpack", repeats: int = 20, eager: bool = True, keep: bool = True,
                    vocab_size: int | None = None, quantize: str | None = "none") -> dict:
    """Build an E2B-width slice with random weights (see e2b_slice_configs), save it as HF folders
    (bf16) under out_dir, export it to a bundle in a subprocess (wall time, peak RSS) and time its
    methods in another subprocess (latencies, runtime peak RSS); optionally the eager latencies too.

    keep=False removes the bundle and checkpoints at the end (they are GBs).
    """
    from mtp_edge.models.hf_format import save_drafter, save_target

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target_dir, drafter_dir, bundle_dir = out_dir / "target", out_dir / "drafter", out_dir / "bundle"
    target_cfg, drafter_cfg = e2b_slice_configs(layers, vocab_size=vocab_size)
    report = {
        "slice": {"layers": target_cfg.num_layers, "layer_types": list(target_cfg.layer_types), "kv_shared_layers": target_cfg.num_kv_shared_layers,
                  "store_layers": target_cfg.store_layers, "hidden_size": target_cfg.hidden_size, "vocab_size": target_cfg.vocab_size,
                  "ple_table": [target_cfg.ple_vocab_size, target_cfg.num_layers * target_cfg.ple_dim], "weights": "random"},
        "export_settings": {"k": k, "max_seq_len": max_seq_len, "prefill_chunk": prefill_chunk, "backend": backend,
                            "quantize": quantize or "default"},
        "fp32_weight_bytes_counted": fp32_weight_bytes(target_cfg, drafter_cfg),
    }

    def say(msg: str) -> None:
        vocab = "" if vocab_size is None else f" vocab {vocab_size}"
        print(f"[e2b-slice {target_cfg.num_layers}L{vocab}] {msg}", file=sys.stderr, flush=True)

    say(f"building random bf16 pair: layers {list(target_cfg.layer_types)}, {target_cfg.num_kv_shared_layers} KV-shared")
    started = time.perf_counter()
    target, drafter = random_modules(target_cfg, drafter_cfg)
    save_target(target, target_dir, dtype=torch.bfloat16)
    save_drafter(drafter, drafter_dir, dtype=torch.bfloat16)
    del target, drafter
    gc.collect()
    report["checkpoint_s"] = time.perf_counter() - started
    report["checkpoint_bytes"] = sum(f.stat().st_size for d in (target_dir, drafter_dir) for f in d.iterdir())
    say(f"saved HF folders ({report['checkpoint_bytes'] / 2**30:.2f} GiB bf16, {report['checkpoint_s']:.0f}s); exporting")

    report["export"] = measure_export(target_dir, drafter_dir, bundle_dir, k=k, max_seq_len=max_seq_len,
                                      prefill_chunk=prefill_chunk, backend=backend, quantize=quantize)
    e = report["export"]
    say(f"exported in {e['export_wall_s']:.0f}s, peak RSS {e['export_peak_rss_gib']:.2f} GiB, .pte {e['pte_gib']:.2f} GiB; timing methods")

    child = _run_child(["methods", str(bundle_dir), "--repeats", str(repeats)], out_dir / ".methods-result.json")
    report["pte_methods"] = child["result"]
    report["pte_runtime_peak_rss_bytes"] = child["peak_rss_bytes"]
    report["pte_runtime_peak_rss_gib"] = child["peak_rss_bytes"] / 2**30
    say("pte: " + ", ".join(f"{n} {m['median_ms']:.1f} ms" for n, m in report["pte_methods"]["methods"].items()))

    if eager:
        from mtp_edge.export.pte import buffer_length
        from mtp_edge.models import load_pair

        target, drafter = load_pair(target_dir, drafter_dir, buffer_length(max_seq_len, k, prefill_chunk))
        report["eager_methods"] = bench_eager_methods(target, drafter, k=k, prefill_chunk=prefill_chunk, repeats=repeats)
        del target, drafter
        gc.collect()
        say("eager: " + ", ".join(f"{n} {m['median_ms']:.1f} ms" for n, m in report["eager_methods"]["methods"].items()))
    if not keep:
        for d in (target_dir, drafter_dir, bundle_dir):
            shutil.rmtree(d, ignore_errors=True)
    return report


def _line(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def extrapolate_e2b(slices: list[dict], layers: int | None = None, preset_name: str = "e2b") -> dict:
    """Straight-line extrapolation of export peak RSS, .pte size and latencies from slice reports
    to the full model. EXTRAPOLATED, not measured. The line goes through the slices with the
    fewest and the most layers; any slice in between is reported against the line (linearity check).

    Two fits: (a) linear in the layer count, y(L) = a + b*L with b = (y2 - y1)/(L2 - L1): each slice
    layer beyond the two store layers is a double-wide KV-shared layer, the costliest kind, so for
    E2B (15 of 35 layers not shared, single-wide) this leans high; (b) linear in fp32 weight bytes,
    y(W) = a + b*W, with W counted exactly for the full model on meta-device modules.
    """
    from mtp_edge.models.config import preset

    ordered = sorted(slices, key=lambda s: s["slice"]["layers"])
    s1, s2, middle = ordered[0], ordered[-1], ordered[1:-1]
    if s1["slice"]["layers"] == s2["slice"]["layers"]:
        raise ValueError("extrapolation needs slices of at least two different layer counts.")
    pair = preset(preset_name)
    n = layers or pair.target.num_layers
    w_full = fp32_weight_bytes(pair.target, pair.drafter)
    l1, l2 = s1["slice"]["layers"], s2["slice"]["layers"]
    w1, w2 = s1["fp32_weight_bytes_counted"], s2["fp32_weight_bytes_counted"]
    metrics = {
        "export_peak_rss_gib": lambda s: s["export"]["export_peak_rss_gib"],
        "pte_gib": lambda s: s["export"]["pte_gib"],
        "export_wall_s": lambda s: s["export"]["export_wall_s"],
        "pte_runtime_peak_rss_gib": lambda s: s["pte_runtime_peak_rss_gib"],
        **{f"pte_{m}_median_ms": (lambda s, m=m: s["pte_methods"]["methods"][m]["median_ms"]) for m in ("prefill", "verify", "decode", "draft")},
    }
    vocabs = {s["slice"]["vocab_size"] for s in (s1, s2)}
    out = {"layers": n, "fp32_weight_bytes_full": w_full, "fp32_weight_gib_full": w_full / 2**30,
           "from_slices": {"layers": [l1, l2], "fp32_weight_bytes": [w1, w2]}, "fits": {}}
    for name, get in metrics.items():
        y1, y2 = get(s1), get(s2)
        a, b = _line(l1, y1, l2, y2)
        aw, bw = _line(w1, y1, w2, y2)
        out["fits"][name] = {
            "measured": [y1, y2],
            "by_layers": {"formula": f"{a:.4g} + {b:.4g} * L", "at_full": a + b * n}
            if vocabs == {pair.target.vocab_size} else
            {"formula": f"{a:.4g} + {b:.4g} * L", "note": f"slices at vocab {sorted(vocabs)}: a line in layers at that vocabulary, not the full model's"},
            "by_weight_bytes": {"formula": f"{aw:.4g} + {bw:.4g} * W_bytes", "at_full": aw + bw * w_full},
        }
        if middle:
            out["fits"][name]["linearity_check"] = [
                {"layers": s["slice"]["layers"], "measured": get(s), "by_layers": a + b * s["slice"]["layers"],
                 "by_weight_bytes": aw + bw * s["fp32_weight_bytes_counted"]} for s in middle
            ]
    return out


def bench_e2b_scaling(out_dir, layer_counts=(2, 4), **slice_kwargs) -> dict:
    """bench_e2b_slice at each layer count (one after another, each removed after measuring
    except the last), then extrapolate_e2b from the first two."""
    out_dir = Path(out_dir)
    keep_last = slice_kwargs.pop("keep", True)
    reports = []
    for i, n in enumerate(layer_counts):
        keep = keep_last and i == len(layer_counts) - 1
        reports.append(bench_e2b_slice(out_dir / f"e2b-slice-{n}L", layers=n, keep=keep, **slice_kwargs))
    return {"slices": reports, "extrapolated": extrapolate_e2b(reports)}


def bench_recipes(recipes: list[str], formats=("pte", "onnx"), k: int = 4, max_new_tokens: int = 64) -> dict:
    """End-to-end greedy speed of the shipped pair per quantization recipe and backend (the demo's
    measurement: plain vs speculative tok/s over the held-out prompts), plus each bundle's eval
    figures (top-1 agreement, tokens per target call vs the unquantized pair, bytes). This is how
    the shipped pair's default recipes were chosen: the fastest whose tokens per target call stay
    within 2% (`e2b-slice` / `e2b-scaling` give the speed side at E2B width)."""
    from mtp_edge.runtime.backends import open_bundle
    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT, compare
    from mtp_edge.runtime.commands.evaluate import evaluate_bundle

    pair_dir = default_pair_dir()
    prompts = [p["ids"] for p in heldout_prompts(pair_dir)]
    rows = {}
    for recipe in recipes:
        export = {**DEMO_EXPORT, "formats": tuple(formats), "quantize": recipe}
        bundle = cached_bundle(pair_dir, **export)
        for fmt in formats:
            speed = compare(open_bundle(bundle, fmt), prompts, k=k, max_new_tokens=max_new_tokens, desc=f"{recipe} {fmt}")
            speed.pop("outputs")
            quality = evaluate_bundle(bundle, backend=fmt, rss=False)
            rows[f"{recipe} | {fmt}"] = {
                "recipe": recipe, "backend": fmt, **speed,
                "top1_agreement": quality["quality"]["top1_agreement"],
                "eval_tokens_per_target_call": quality["speculation"]["tokens_per_target_call"],
                "eval_tokens_per_target_call_change": quality["speculation"]["relative_change"],
                "bundle_bytes": quality["bytes"]["per_format"][fmt],
            }
            print(json.dumps({k2: v for k2, v in rows[f"{recipe} | {fmt}"].items() if not isinstance(v, dict)}),
                  file=sys.stderr, flush=True)
    return {"k": k, "max_new_tokens": max_new_tokens, "rows": rows}


# --------------------------------------------------------------------------- python -m mtp_edge.runtime.bench.benchmarks


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mtp_edge.runtime.bench.benchmarks", description="export benchmarks; print JSON")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{methods,recipes,e2b-slice,e2b-scaling,e2b-full,export-measured}")

    p = sub.add_parser("methods", help="per-method latency of a bundle on the pte or onnx backend")
    p.add_argument("bundle")
    p.add_argument("--backend", default="pte", choices=("pte", "onnx"))
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--fill-chunks", type=int, default=4)

    def export_args(p, max_seq_len=512, quantize="none"):
        p.add_argument("--max-seq-len", type=int, default=max_seq_len)
        p.add_argument("--k", type=int, default=4)
        p.add_argument("--prefill-chunk", type=int, default=32)
        p.add_argument("--backend", default="xnnpack", choices=("xnnpack", "portable"))
        p.add_argument("--quantize", default=quantize, help="a --quantize recipe, or `default` (each format's default)")

    p = sub.add_parser("recipes", help="shipped pair: speed and quality per quantization recipe and backend")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--formats", default="pte,onnx")
    p.add_argument("--k", type=int, default=4)

    p = sub.add_parser("e2b-slice", help="random E2B-width slice: save, export (time, peak RSS), time the methods")
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-eager", action="store_true", help="skip the eager latencies")
    p.add_argument("--vocab-size", type=int, help="shrink the vocabulary (memory-scaling points); default the real 262144")
    export_args(p)

    p = sub.add_parser("e2b-scaling", help="e2b-slice at several layer counts, then extrapolate to the full E2B")
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-eager", action="store_true")
    p.add_argument("--vocab-size", type=int)
    export_args(p)

    p = sub.add_parser("e2b-full", help="the whole E2B pair, random weights: save, export (default recipe: "
                       "time, peak RSS, sizes), time the methods")
    p.add_argument("out_dir")
    p.add_argument("--repeats", type=int, default=10)
    export_args(p, quantize="default")

    p = sub.add_parser("export-measured", help="write_bundle in a subprocess: wall time, peak RSS, per-stage RSS")
    p.add_argument("target_dir")
    p.add_argument("drafter_dir")
    p.add_argument("out_dir")
    export_args(p)

    p = sub.add_parser("_export")  # the child of export-measured (not listed)
    for name in ("target_dir", "drafter_dir", "out_dir"):
        p.add_argument(name)
    export_args(p)
    for q in sub.choices.values():
        q.add_argument("--result", help=argparse.SUPPRESS)  # where a child writes its JSON

    args = parser.parse_args(argv)
    export = lambda: dict(k=args.k, max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk, backend=args.backend,  # noqa: E731
                          quantize=None if args.quantize == "default" else args.quantize)
    if args.cmd == "methods":
        if args.backend == "onnx":
            report = bench_onnx_methods(args.bundle, threads=args.threads, repeats=args.repeats, fill_chunks=args.fill_chunks)
        else:
            report = bench_methods(args.bundle, repeats=args.repeats, fill_chunks=args.fill_chunks)
    elif args.cmd == "recipes":
        report = bench_recipes(args.recipes, formats=tuple(args.formats.split(",")), k=args.k)
    elif args.cmd == "e2b-slice":
        report = bench_e2b_slice(args.out_dir, layers=args.layers, repeats=args.repeats, eager=not args.no_eager,
                                 vocab_size=args.vocab_size, **export())
    elif args.cmd == "e2b-scaling":
        report = bench_e2b_scaling(args.out_dir, tuple(args.layers), repeats=args.repeats, eager=not args.no_eager,
                                   vocab_size=args.vocab_size, **export())
    elif args.cmd == "e2b-full":
        report = bench_e2b_slice(args.out_dir, layers=None, repeats=args.repeats, eager=False, **export())
    elif args.cmd == "export-measured":
        report = measure_export(args.target_dir, args.drafter_dir, args.out_dir, **export())
    else:
        report = _export_child(args.target_dir, args.drafter_dir, args.out_dir, **export())
    text = json.dumps(report, indent=1, default=str)
    if args.result:
        Path(args.result).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
