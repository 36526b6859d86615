"""`mtp-edge bench e2b-slice|e2b-scaling|e2b-full`: E2B-width pairs with random weights, exported and timed.

A full-size E2B pair in fp32 does not fit every machine, so slices of it (the real width,
vocabulary and drafter, fewer layers) are saved, exported in a fresh process (wall time, peak
RSS) and their methods timed in another (latencies, the runtime's peak RSS); extrapolate_e2b fits
lines through slices of two layer counts to the full model (EXTRAPOLATED, not measured).
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from pathlib import Path

import torch

from .export_cost import measure_export
from .timing import run_in_child
from .methods import eager_methods, methods_in_child


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
                    vocab_size: int | None = None, quantize: str | None = "none", formats: str = "pte",
                    preset_name: str = "e2b") -> dict:
    """Build an E2B-width slice with random weights (see e2b_slice_configs), save it as HF folders
    (bf16) under out_dir, export it to a bundle in a fresh process (wall time, peak RSS) and time its
    methods in another one (latencies, runtime peak RSS); optionally the eager latencies too.

    quantize: a recipe, "none" (fp32), or "default" / None (each format's default recipe).
    preset_name: the geometry, "e2b" or "e4b".
    formats: "pte" (backend: its ExecuTorch kernels) or "onnx"; an ONNX bundle is also checked for
    speculative == plain on a few random prompts.
    keep=False removes the bundle and checkpoints at the end (they are GBs).
    """
    from mtp_edge.export.settings import DEFAULT, ExportSettings
    from mtp_edge.models.hf_format import save_drafter, save_target

    fmt = formats
    if fmt not in ("pte", "onnx"):
        raise ValueError(f"an E2B benchmark exports one format, pte or onnx, not {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target_dir, drafter_dir, bundle_dir = out_dir / "target", out_dir / "drafter", out_dir / "bundle"
    target_cfg, drafter_cfg = e2b_slice_configs(layers, preset_name, vocab_size=vocab_size)
    report = {
        "slice": {"layers": target_cfg.num_layers, "layer_types": list(target_cfg.layer_types), "kv_shared_layers": target_cfg.num_kv_shared_layers,
                  "store_layers": target_cfg.store_layers, "hidden_size": target_cfg.hidden_size, "vocab_size": target_cfg.vocab_size,
                  "ple_table": [target_cfg.ple_vocab_size, target_cfg.num_layers * target_cfg.ple_dim], "weights": "random"},
        "export_settings": {"format": fmt, "k": k, "max_seq_len": max_seq_len, "prefill_chunk": prefill_chunk,
                            "backend": backend if fmt == "pte" else None, "quantize": quantize or "default"},
        "fp32_weight_bytes_counted": fp32_weight_bytes(target_cfg, drafter_cfg),
    }

    def say(msg: str) -> None:
        vocab = "" if vocab_size is None else f" vocab {vocab_size}"
        print(f"[{preset_name}-slice {target_cfg.num_layers}L{vocab}] {msg}", file=sys.stderr, flush=True)

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

    settings = ExportSettings(formats=fmt, k=k, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk, backend=backend,
                              quantize=quantize or DEFAULT)
    report["export"] = measure_export(target_dir, drafter_dir, bundle_dir, settings)
    e = report["export"]
    size = f".pte {e['pte_gib']:.2f} GiB" if fmt == "pte" else f".onnx + .data {e['onnx_bytes'] / 2**30:.2f} GiB"
    say(f"exported in {e['export_wall_s']:.0f}s, peak RSS {e['export_peak_rss_gib']:.2f} GiB "
        f"(own {e['export_own_peak_rss_bytes'] / 2**30:.2f}), {size}; timing methods")

    child = methods_in_child(bundle_dir, fmt, repeats=repeats)
    report[f"{fmt}_methods"] = child["result"]
    report[f"{fmt}_runtime_peak_rss_bytes"] = child["peak_rss_bytes"]
    report[f"{fmt}_runtime_peak_rss_gib"] = child["peak_rss_bytes"] / 2**30
    # The child's own high-water mark: ru_maxrss above also counts this process's (the random pair built here).
    report[f"{fmt}_runtime_own_peak_rss_bytes"] = child["own_peak_rss_bytes"]
    say(f"{fmt}: " + ", ".join(f"{n} {m['median_ms']:.1f} ms" for n, m in report[f"{fmt}_methods"]["methods"].items()))
    if layers is None:  # the full pair: decode's achieved weight bandwidth against the machine's, measured here
        from .bandwidth import decode_bandwidth, format_bandwidth

        report["decode_bandwidth"] = decode_bandwidth(bundle_dir, fmt, report[f"{fmt}_methods"]["methods"]["decode"]["median_ms"])
        say(format_bandwidth(report["decode_bandwidth"]))
    if fmt == "onnx":
        report["speculative_equals_plain"] = run_in_child(speculative_equals_plain, str(bundle_dir))["result"]
        say(f"speculative == plain: {report['speculative_equals_plain']}")

    if eager:
        from mtp_edge.export.pte import buffer_length
        from mtp_edge.models import load_pair

        target, drafter = load_pair(target_dir, drafter_dir, buffer_length(max_seq_len, k, prefill_chunk))
        report["eager_methods"] = eager_methods(target, drafter, k=k, prefill_chunk=prefill_chunk, repeats=repeats)
        del target, drafter
        gc.collect()
        say("eager: " + ", ".join(f"{n} {m['median_ms']:.1f} ms" for n, m in report["eager_methods"]["methods"].items()))
    if not keep:
        for d in (target_dir, drafter_dir, bundle_dir):
            shutil.rmtree(d, ignore_errors=True)
    return report


def speculative_equals_plain(bundle_dir, prompts: int = 3, new_tokens: int = 16) -> dict:
    """Greedy, the bundle's K against plain decoding on random prompts: {"prompts", "equal"}."""
    from mtp_edge.runtime.backends import open_bundle
    from mtp_edge.runtime.speculative import generate

    runner = open_bundle(bundle_dir, None)
    gen = torch.Generator().manual_seed(0)
    equal = 0
    for i in range(prompts):
        prompt = torch.randint(0, runner.vocab_size, (5 + 7 * i,), generator=gen).tolist()
        equal += generate(runner, prompt, k=runner.k, max_new_tokens=new_tokens).tokens == \
            generate(runner, prompt, k=0, max_new_tokens=new_tokens).tokens
    return {"prompts": prompts, "equal": equal}


def fit_line(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
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
        a, b = fit_line(l1, y1, l2, y2)
        aw, bw = fit_line(w1, y1, w2, y2)
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
    # The extrapolation fits the .pte's figures; an ONNX scaling run reports its slices only.
    pte = slice_kwargs.get("formats", "pte") == "pte"
    return {"slices": reports, "extrapolated": extrapolate_e2b(reports) if pte else None}
