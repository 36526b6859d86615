"""`mtp-edge bench adaptive`: plain, every fixed K and `--k auto`, side by side, on every backend.

The demo's bundle of the shipped pair (default recipes), its 8 held-out prompts x 64 new tokens,
greedy and temperature 0.7. Each (backend, sampling) runs plain decoding, K = 1..the bundle's K and
auto `repeats` times, the configurations interleaved in a rotated order so that a noisy stretch of
the machine does not land on one of them; a configuration's figure is the median over repeats of
its tokens per second (new tokens after the first over the decode time, prefill excluded, as the
demo counts). Greedy rows also check that every speculative output equals the plain one.

The native rows run the C++ runner (one process per repeat, the bundle loaded once): its auto
measures its own cost table on the device, as it does for a user.

tune=True first runs `mtp-edge tune`'s measurement for each bundle backend and writes tuning.json
beside the bundle, as a user who tunes on their machine would: auto then starts from measured costs
and acceptance, and a seeded rejection-rule run (whose policy must run from a frozen table) uses the
tuned table instead of the fixed default. The native runner reads no tuning.json; its sampled rows
are given the pte backend's tuned table (the same program), as `validate` gives it one.
"""

from __future__ import annotations

import statistics

from tqdm import tqdm

from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate
from mtp_edge.runtime.tuning import read_tuning

SAMPLINGS = {
    "greedy": SamplingConfig(),
    "T=0.7": SamplingConfig(temperature=0.7, seed=0),  # the rejection rule
    "T=0.7/coupled": SamplingConfig(temperature=0.7, seed=0, rule="coupled"),
}
BACKENDS = ("eager", "pte", "onnx", "native")


def _for_prompt(sampling: SamplingConfig, i: int) -> SamplingConfig:
    """Greedy as is; a sampled row seeds each prompt with its index."""
    return sampling if sampling.temperature == 0 else SamplingConfig(temperature=sampling.temperature, seed=i, rule=sampling.rule)


def _python_run(backend, prompts, k, sampling, max_new_tokens: int, eos_ids, max_k: int) -> tuple[float, list, dict, float]:
    """(tok/s, outputs, rounds per draft length, accepted / drafted)."""
    tokens = seconds = drafted = accepted = 0.0
    outputs, histogram = [], {}
    for i, prompt in enumerate(prompts):
        result = generate(backend, prompt, k=k, max_k=max_k if k == "auto" else None, max_new_tokens=max_new_tokens,
                          sampling=_for_prompt(sampling, i), eos_ids=eos_ids)
        tokens += result.stats.new_tokens - 1
        seconds += result.stats.decode_s
        drafted += result.stats.drafted
        accepted += result.stats.accepted
        outputs.append(result.tokens)
        for n, count in result.stats.k_histogram.items():
            histogram[int(n)] = histogram.get(int(n), 0) + count
    return tokens / seconds, outputs, histogram, accepted / drafted if drafted else 0.0


def _native_run(bundle, prompts, k, sampling, max_new_tokens: int, max_k: int, costs=None) -> tuple[float, list, dict, float]:
    from mtp_edge.runtime.native.validate import request, run_requests

    lines = []
    for i, prompt in enumerate(prompts):
        seeded = None if sampling.temperature == 0 else _for_prompt(sampling, i)
        frozen = costs if k == "auto" and sampling.depends_on_draft_lengths else None
        lines.append(request(prompt, k=k, max_new_tokens=max_new_tokens, sampling=seeded,
                             max_k=max_k if k == "auto" else None, costs=frozen))
    results = run_requests(bundle, lines)
    tokens = sum(r.stats["new_tokens"] - 1 for r in results)
    seconds = sum(r.stats["decode_s"] for r in results)
    histogram = {}
    for r in results:
        for n, count in r.stats["k_histogram"].items():
            histogram[int(n)] = histogram.get(int(n), 0) + int(count)
    drafted = sum(r.stats["drafted"] for r in results)
    acceptance = sum(r.stats["accepted"] for r in results) / drafted if drafted else 0.0
    return tokens / seconds, [r.tokens for r in results], histogram, acceptance


def _tune(backend, name: str, bundle, prompts, eos) -> dict:
    """`mtp-edge tune` for one bundle backend (costs and greedy acceptance, no speed runs): writes tuning.json."""
    from mtp_edge.runtime.commands.tune import save_tuning, tune_backend

    return save_tuning(bundle, name, tune_backend(backend, prompts, eos_ids=eos, measure_speed=False, progress=False))


def bench_adaptive(*, backends=BACKENDS, samplings=tuple(SAMPLINGS), repeats: int = 3, max_new_tokens: int = 64,
                   tune: bool = False, progress: bool = True) -> dict:
    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.config import target_config_from_folder
    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
    from mtp_edge.runtime.commands.demo import BACKENDS as DEMO_BACKENDS
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT

    pair = default_pair_dir()
    prompts = [p["ids"] for p in heldout_prompts(pair)]
    eos = target_config_from_folder(pair / "target").eos_token_ids
    bundle = cached_bundle(pair, settings=DEMO_EXPORT) if set(backends) - {"eager"} else None
    max_k = DEMO_EXPORT.k
    configs = [0, *range(1, max_k + 1), "auto"]
    rows, tuned = [], {}
    for name in backends:
        backend = None if name == "native" else DEMO_BACKENDS[name](pair)
        native_costs = None
        if tune and name in ("pte", "onnx"):
            tuned[name] = _tune(backend, name, bundle, prompts, eos)
        elif tune and name == "native":
            native_costs = read_tuning(bundle, "pte")
            if native_costs is None:
                from mtp_edge.runtime.backends import open_bundle

                tuned["pte"] = _tune(open_bundle(bundle, "pte"), "pte", bundle, prompts, eos)
                native_costs = read_tuning(bundle, "pte")
        for label in samplings:
            sampling = SAMPLINGS[label]
            if backend is not None:  # warm-up: ONNX Runtime plans memory per new input shape
                for prompt in prompts[:2]:
                    generate(backend, prompt, k=max_k, max_new_tokens=3 * (max_k + 1), sampling=sampling, eos_ids=eos)
            speeds = {str(c): [] for c in configs}
            acceptance = {str(c): [] for c in configs if c != 0}
            outputs, histograms = {}, {}
            for r in tqdm(range(repeats), desc=f"bench adaptive {name} {label}", disable=not progress, leave=False):
                for c in configs[r % len(configs):] + configs[:r % len(configs)]:
                    if backend is None:
                        tps, out, hist, rate = _native_run(bundle, prompts, c, sampling, max_new_tokens, max_k, native_costs)
                    else:
                        tps, out, hist, rate = _python_run(backend, prompts, c, sampling, max_new_tokens, eos, max_k)
                    speeds[str(c)].append(tps)
                    if c != 0:
                        acceptance[str(c)].append(rate)
                    outputs.setdefault(str(c), out)
                    if c == "auto":
                        for n, count in hist.items():
                            histograms[n] = histograms.get(n, 0) + count
            median = {c: statistics.median(v) for c, v in speeds.items()}
            best_fixed = max((c for c in median if c not in ("0", "auto")), key=median.get)
            rows.append({
                "backend": name, "sampling": label,
                "tokens_per_s": median,
                "plain_tokens_per_s": median["0"],
                "speedup": {c: median[c] / median["0"] for c in median},
                "best_fixed_k": int(best_fixed),
                "auto_over_plain": median["auto"] / median["0"],
                "auto_over_best_fixed": median["auto"] / median[best_fixed],
                "auto_over_best": median["auto"] / max(median["0"], median[best_fixed]),
                "auto_k_histogram": {str(n): histograms[n] for n in sorted(histograms)},
                # accepted / drafted per configuration (mean over repeats): the sampling rules compare here.
                "acceptance": {c: statistics.fmean(v) for c, v in acceptance.items()},
                # Greedy: every configuration's tokens equal plain decoding's.
                "token_identical": (all(out == outputs["0"] for out in outputs.values())
                                    if sampling.temperature == 0 else None),
            })
    return {"bundle": str(bundle) if bundle else None, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "repeats": repeats,
            "tuned": tuned, "rows": rows}


def format_adaptive(report: dict) -> str:
    configs = list(report["rows"][0]["tokens_per_s"]) if report["rows"] else []
    head = ["backend", "sampling", *[("plain" if c == "0" else f"K={c}") for c in configs], "auto/plain", "auto/best",
            "accepted at K max"]
    lines = [" | ".join(head)]
    for row in report["rows"]:
        top = configs[-2] if len(configs) > 2 else None  # the largest fixed K
        cells = [row["backend"], row["sampling"], *[f"{row['tokens_per_s'][c]:.1f}" for c in configs],
                 f"{row['auto_over_plain']:.2f}x", f"{row['auto_over_best']:.2f}x",
                 f"{row['acceptance'][top]:.0%}" if top in row.get("acceptance", {}) else "-"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
