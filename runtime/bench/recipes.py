"""`mtp-edge bench recipes RECIPE...`: the shipped pair per quantization recipe and backend, speed and quality."""

from __future__ import annotations

import json
import sys


def bench_recipes(recipes: list[str], formats=("pte", "onnx"), k: int = 4, max_new_tokens: int = 64) -> dict:
    """End-to-end greedy speed of the shipped pair per quantization recipe and backend (the demo's
    measurement: plain vs speculative tok/s over the held-out prompts), plus each bundle's eval
    figures (top-1 agreement, tokens per target call vs the unquantized pair, bytes). This is how
    the shipped pair's default recipes were chosen: the fastest whose tokens per target call stay
    within 2% (`e2b-slice` / `e2b-scaling` give the speed side at E2B width)."""
    from dataclasses import replace

    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
    from mtp_edge.runtime.backends import open_bundle
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT, compare
    from mtp_edge.runtime.commands.evaluate import evaluate_bundle

    pair_dir = default_pair_dir()
    prompts = [p["ids"] for p in heldout_prompts(pair_dir)]
    rows = {}
    for recipe in recipes:
        bundle = cached_bundle(pair_dir, settings=replace(DEMO_EXPORT, formats=tuple(formats), quantize=recipe))
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
