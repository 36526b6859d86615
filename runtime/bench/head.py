"""`mtp-edge bench head`: one draft step with the clustered (centroid) LM head vs the full head.

At the E2B drafter's geometry (random weights: hidden 256, 262,144 tokens in 2,048 clusters of
128, the top 32 clusters kept) the same draft step is timed twice, once with the clustered head
(centroid logits, top-k clusters, a gather of their LM-head rows, candidate logits) and once with
the full head (every vocabulary row), eagerly and as a draft-only .pte run by the ExecuTorch
runtime on XNNPACK. Bytes read per step are counted from the shapes, not measured.

Set against an E2B target decode step, eager, extrapolated in the layer count from E2B-width
slices (see e2b.e2b_slice_configs): a full-size fp32 target does not fit this machine.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .e2b import e2b_slice_configs, fit_line, random_modules
from .timing import percentiles, time_calls

FP32 = 4


def head_bytes(drafter_cfg, head: str) -> int:
    """fp32 bytes the LM head reads per draft step: the full table, or centroids + kept rows + their ids."""
    d, vocab = drafter_cfg.decoder.hidden_size, drafter_cfg.decoder.vocab_size
    if head == "full":
        return vocab * d * FP32
    kept = drafter_cfg.num_candidates
    return drafter_cfg.num_centroids * d * FP32 + kept * d * FP32 + kept * 8


def body_bytes(drafter, target_cfg) -> int:
    """fp32 weight bytes of the step outside the head: projections, layers, norms, one target embedding row."""
    head = {"embed_tokens.weight", "lm_head.weight", "masked_embedding.centroids.weight"}
    params = sum(p.numel() for n, p in drafter.named_parameters() if n not in head)
    return (params + target_cfg.hidden_size) * FP32


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[bench head] {msg}", file=sys.stderr, flush=True)


def _pte_draft(target, drafter, context: int, work: Path, name: str, progress: bool):
    """A draft-only .pte of the pair, loaded by the ExecuTorch runtime: (method, export seconds, bytes)."""
    from executorch.runtime import Runtime

    from mtp_edge.export.pte import export_pte

    path = work / f"{name}.pte"
    info = export_pte(target, drafter, path, k=1, prefill_chunk=1, max_seq_len=context - 1, methods=("draft",), progress=progress)
    program = Runtime.get().load_program(path)
    return program.load_method("draft"), info["export_s"], path.stat().st_size


def _in_blocks(calls: dict, repeats: int, warmup: int, blocks: int = 3) -> dict:
    """Median / p90 / min per call. Each call runs back to back in a block (as draft steps do in
    a round, with the weights warm in cache), and the blocks of all calls alternate, so that this
    machine's drifting speed hits every variant alike."""
    seconds = {key: [] for key in calls}
    per_block = max(1, repeats // blocks)
    for _ in range(blocks):
        for key, fn in calls.items():
            for _ in range(warmup):
                fn()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                seconds[key].append(time.perf_counter() - start)
    return {key: percentiles(values) for key, values in seconds.items()}


class HeadOnly(nn.Module):
    """The LM-head stage of a draft step alone: final hidden -> (candidate ids, logits, argmax id)."""

    def __init__(self, drafter):
        super().__init__()
        self.drafter = drafter

    def forward(self, hidden):
        ids, logits = self.drafter.candidates(hidden.view(1, 1, -1))
        ids, logits = ids.reshape(-1), logits.reshape(-1)
        return ids, logits, ids.gather(0, logits.argmax().view(1))


def _pte_module(module: nn.Module, inputs: tuple, path: Path):
    """A one-method (forward) .pte of `module` on XNNPACK, loaded by the ExecuTorch runtime."""
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from mtp_edge.export.pte import xnnpack_partitioner

    program = to_edge_transform_and_lower(torch.export.export(module.eval(), inputs, strict=False),
                                          partitioner=[xnnpack_partitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return Runtime.get().load_program(path).load_method("forward")


@torch.no_grad()
def _decode_ms(preset_name: str, layers: int, context: int, repeats: int) -> float:
    """Median eager fp32 decode step of an E2B-width slice with `layers` layers, at `context` - 1."""
    from mtp_edge.export.pte import DecodeMethod

    target_cfg, _ = e2b_slice_configs(layers, preset_name)
    target, _ = random_modules(target_cfg, None, max_seq_len=context, dtype=torch.float32)
    decode = DecodeMethod(target)
    token, start = torch.tensor([[7]]), torch.tensor([context - 1])
    ms = time_calls(lambda: decode(token, start), repeats, warmup=2)["median_ms"]
    del target, decode
    gc.collect()
    return ms


@torch.no_grad()
def bench_head(preset_name: str = "e2b", *, context: int = 1024, repeats: int = 20, pte: bool = True,
               decode_layers: tuple[int, int] | None = (2, 4), progress: bool = True) -> dict:
    """Draft-step latency and bytes per head; see the module docstring. context: the cache length
    the step attends over (all of it valid)."""
    from mtp_edge.export.pte import DraftMethod
    from mtp_edge.models.config import preset

    target_cfg, drafter_cfg = e2b_slice_configs(2, preset_name)
    _say(progress, f"{preset_name} drafter: hidden {drafter_cfg.decoder.hidden_size}, vocab {drafter_cfg.decoder.vocab_size}, "
                   f"{drafter_cfg.num_centroids} clusters x {drafter_cfg.tokens_per_centroid}, top {drafter_cfg.centroid_top_k}")
    target, drafter = random_modules(target_cfg, drafter_cfg, max_seq_len=context, dtype=torch.float32)
    clustered = drafter.masked_embedding
    token = torch.tensor([7])
    hidden = torch.randn(target_cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    position = torch.tensor([context - 1])
    inputs = (token, hidden, position, position)  # every earlier position is valid
    body = body_bytes(drafter, target_cfg)
    report = {"preset": preset_name, "weights": "random fp32", "context": context, "torch_threads": torch.get_num_threads(),
              "drafter": {"hidden": drafter_cfg.decoder.hidden_size, "vocab": drafter_cfg.decoder.vocab_size,
                          "clusters": drafter_cfg.num_centroids, "tokens_per_cluster": drafter_cfg.tokens_per_centroid,
                          "clusters_kept": drafter_cfg.centroid_top_k, "candidates": drafter_cfg.num_candidates},
              "heads": {}}
    heads = {"clustered": clustered, "full": None}
    step = DraftMethod(target, drafter).eval()
    final_hidden = torch.randn(drafter_cfg.decoder.hidden_size, generator=torch.Generator().manual_seed(1))

    def eager_call(head, part):
        def call():
            drafter.masked_embedding = heads[head]
            return step(*inputs) if part == "step" else HeadOnly(drafter)(final_hidden)
        return call

    # (backend, part, head) -> call; part "step" is the whole draft step, "head" its LM-head stage alone.
    calls = {("eager", part, head): eager_call(head, part) for part in ("step", "head") for head in heads}
    work = Path(tempfile.mkdtemp(prefix="mtp-edge-bench-head-"))
    try:
        for head in heads:
            row = report["heads"][head] = {"head_bytes_read": head_bytes(drafter_cfg, head),
                                           "step_bytes_read": body + head_bytes(drafter_cfg, head)}
            drafter.masked_embedding = heads[head]
            eager_out = step(*inputs)
            row["outputs"] = int(eager_out[0].numel())
            if pte:
                method, row["pte_export_s"], row["pte_bytes"] = _pte_draft(target, drafter, context, work, f"draft-{head}", progress)
                row["pte_argmax_equals_eager"] = int(method.execute(list(inputs))[3][0]) == int(eager_out[3][0])
                calls[("pte", "step", head)] = lambda m=method: m.execute(list(inputs))
                head_method = _pte_module(HeadOnly(drafter), (final_hidden,), work / f"head-{head}.pte")
                calls[("pte", "head", head)] = lambda m=head_method: m.execute([final_hidden])
        _say(progress, f"timing {len(calls)} variants in alternating blocks, {repeats} calls each")
        timed = _in_blocks(calls, repeats, warmup=3)
    finally:
        drafter.masked_embedding = clustered
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    for (backend, part, head), t in timed.items():
        report["heads"][head].update({f"{backend}_{part}_ms": t["median_ms"], f"{backend}_{part}": t})
        _say(progress, f"{head} head, {backend}, {part}: {t['median_ms']:.2f} ms (min {t['min_ms']:.2f})")
    del calls, step
    c, f = report["heads"]["clustered"], report["heads"]["full"]
    backends = ("eager", "pte") if pte else ("eager",)
    report["full_over_clustered"] = {f"{b}_{part}": f[f"{b}_{part}_ms"] / c[f"{b}_{part}_ms"]
                                     for b in backends for part in ("head", "step")}
    report["head_bytes_ratio"] = f["head_bytes_read"] / c["head_bytes_read"]
    del target, drafter, clustered
    gc.collect()

    if decode_layers:
        full_layers = preset(preset_name).target.num_layers
        measured = {n: _decode_ms(preset_name, n, context, max(3, repeats // 4)) for n in decode_layers}
        _say(progress, "eager target decode: " + ", ".join(f"{n} layers {ms:.1f} ms" for n, ms in measured.items()))
        (l1, y1), (l2, y2) = measured.items()
        a, b = fit_line(l1, y1, l2, y2)
        decode_ms = a + b * full_layers
        report["target_decode"] = {
            "eager_ms_measured": measured, "layers": full_layers, "eager_ms_extrapolated": decode_ms,
            "how": "EXTRAPOLATED: a line in the layer count through E2B-width slices (each added layer a double-wide "
                   "KV-shared one, the costliest kind), eager fp32, random weights",
        }
        report["draft_step_vs_decode"] = {f"{b}_clustered": c[f"{b}_step_ms"] / decode_ms for b in backends}
    return report


def summary(report: dict) -> str:
    d = report["drafter"]
    lines = [f"clustered vs full LM head, {report['preset']} drafter ({d['vocab']} tokens, {d['candidates']} candidates), "
             f"context {report['context']}, medians:"]
    for head, row in report["heads"].items():
        times = ", ".join(f"{key[:-3].replace('_', ' ')} {value:.2f} ms" for key, value in row.items() if key.endswith("_ms"))
        lines.append(f"  {head:9s} head: {times}; head reads {row['head_bytes_read'] / 2**20:.2f} MiB, "
                     f"step {row['step_bytes_read'] / 2**20:.2f} MiB")
    lines.append("  full / clustered: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}x" for k, v in report["full_over_clustered"].items())
                 + f" (head bytes {report['head_bytes_ratio']:.1f}x)")
    if "target_decode" in report:
        t = report["target_decode"]
        shares = ", ".join(f"{k.split('_')[0]} {100 * v:.2f}%" for k, v in report["draft_step_vs_decode"].items())
        lines.append(f"  target decode step (eager fp32, extrapolated to {t['layers']} layers): {t['eager_ms_extrapolated']:.1f} ms; "
                     f"a clustered draft step is {shares} of it")
    return "\n".join(lines)
