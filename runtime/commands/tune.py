"""`mtp-edge tune`: what each draft length is worth on this machine, and the cost table the policy starts from.

For each backend of a bundle: the cost table (median seconds per call of decode, verify at every
length 2..K+1 and a draft step, timed after a real prompt), the acceptance per draft position on
held-out prompts (or the one given with --acceptance), then for every fixed K and for the policy
the predicted tokens per second (runtime/draft_policy.py: E(K) / cost(K)) beside the measured one.
The cost tables go to `tuning.json` beside the bundle (runtime/tuning.py), where `--k auto` finds them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mtp_edge.runtime.draft_policy import CostTable, DraftPolicy, best_plan, expected_tokens
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate
from mtp_edge.runtime.tuning import TUNING_FILE, measure_costs, write_tuning


# The sampling the sampled cost table is timed with: the work per row hardly depends on T (a float64
# softmax over the row); top-p would add a sort.
TUNE_SAMPLING = SamplingConfig(temperature=0.7, seed=0)


def measure_cost_table(backend, prompt: list[int], max_k: int, repeats: int, sampling: SamplingConfig | None = None) -> CostTable:
    """Median seconds per call after prefilling `prompt`, at the position the next round would use,
    each call timed inside the rounds a loop runs (tuning.measure_costs), with `sampling`'s work."""
    return measure_costs(backend, max_k, repeats, prompt=prompt, sampling=sampling)


def acceptance_per_position(rounds, max_k: int) -> list[float]:
    """Conditional acceptance a_i from round logs: draft i counts when drafts 1..i-1 were accepted."""
    accepted, judged = [0] * max_k, [0] * max_k
    for r in rounds:
        for i in range(min(r.accepted + 1, r.drafted)):
            judged[i] += 1
            accepted[i] += i < r.accepted
    return [a / j if j else 0.0 for a, j in zip(accepted, judged)]


def _run(backend, prompts, *, k, max_new_tokens, sampling, eos_ids, policy=None) -> dict:
    new_tokens, seconds, rounds = 0, 0.0, []
    for prompt in prompts:
        g = generate(backend, prompt, k=k, policy=policy, max_new_tokens=max_new_tokens, sampling=sampling,
                     eos_ids=eos_ids)
        new_tokens += g.stats.new_tokens - 1
        seconds += g.stats.decode_s
        rounds += g.stats.round_log
    return {"tok_s": new_tokens / seconds if seconds else 0.0, "rounds": rounds,
            "tokens_per_call": new_tokens / len(rounds) if rounds else 0.0}


def tune_backend(backend, prompts: list[list[int]], *, max_new_tokens: int = 64, repeats: int = 20,
                 acceptance: list[float] | None = None, sampling: SamplingConfig = SamplingConfig(), eos_ids=(),
                 measure_speed: bool = True, progress: bool = True) -> dict:
    """Cost table, acceptance, and predicted (and measured) tok/s for K = 0..max and "auto" on one backend."""
    max_k = backend.max_draft
    say = (lambda m: print(f"[tune] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    chains = f", one-call drafts of {', '.join(map(str, sorted(backend.draft_chains)))}" if getattr(backend, "draft_chains", None) else ""
    say(f"{type(backend).__name__}: timing decode, verify 2..{max_k + 1}, a draft step{chains} ({repeats} calls each)")
    costs = measure_cost_table(backend, prompts[0], max_k, repeats)
    # Sampled runs (seeded rejection-rule ones decide from a frozen table) pay the accept rule's and
    # the drafts' float64 distributions in every round: the shipped pair's .pte, T=0.7, drafted K=1
    # at 0.88x plain from the greedy table, which predicted 1.08x.
    sampled_costs = measure_cost_table(backend, prompts[0], max_k, repeats, TUNE_SAMPLING)
    runs = {}
    if acceptance is None:
        say(f"measuring acceptance per draft position: K={max_k} on {len(prompts)} prompts")
        runs[max_k] = _run(backend, prompts, k=max_k, max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos_ids)
        acceptance, source = acceptance_per_position(runs[max_k]["rounds"], max_k), "measured"
    else:  # the last given rate repeats for positions past the list
        acceptance, source = [*acceptance, *[acceptance[-1]] * max_k][:max_k], "given"
    plan = best_plan(costs, acceptance, max_k)
    rows = {}
    for k in range(max_k + 1):
        seconds, _ = costs.round_seconds(k)
        rows[str(k)] = {"expected_tokens": expected_tokens(acceptance, k), "round_s": seconds,
                        "predicted_tok_s": expected_tokens(acceptance, k) / seconds}
    rows["auto"] = {"chosen_k": plan.k, "predicted_tok_s": plan.tokens_per_second}
    if measure_speed and source == "measured":
        for k in [*range(max_k + 1), "auto"]:
            say(f"measuring K={k}")
            policy = DraftPolicy(costs, max_k) if k == "auto" else None
            run = runs.get(k) or _run(backend, prompts, k=k, policy=policy, max_new_tokens=max_new_tokens,
                                      sampling=sampling, eos_ids=eos_ids)
            rows[str(k)].update(measured_tok_s=run["tok_s"], tokens_per_call=run["tokens_per_call"])
    plain = rows["0"]["predicted_tok_s"]
    for row in rows.values():
        row["predicted_speedup"] = row["predicted_tok_s"] / plain
        if "measured_tok_s" in row:
            row["measured_speedup"] = row["measured_tok_s"] / rows["0"]["measured_tok_s"]
    return {"costs": costs.to_json(), "sampled_costs": sampled_costs.to_json(), "acceptance": acceptance,
            "acceptance_source": source, "best_k": plan.k, "rows": rows}


# What tuning.json keeps of a tune result for one backend, beside its greedy cost table.
SAVED_FIELDS = ("sampled_costs", "acceptance", "best_k")


def save_tuning(bundle_dir, name: str, result: dict) -> dict:
    """Write one backend's tune_backend result into tuning.json; returns what was saved."""
    write_tuning(bundle_dir, name, CostTable.from_json(result["costs"]), {key: result[key] for key in SAVED_FIELDS})
    return {key: result[key] for key in ("costs", *SAVED_FIELDS)}


def tune_bundle(bundle_dir, *, backends=None, prompts=None, max_new_tokens: int = 64, repeats: int = 20,
                acceptance: list[float] | None = None, plot: str | Path | None = None, progress: bool = True) -> dict:
    """Tune every requested backend of a bundle; writes tuning.json beside it (and the plot)."""
    from mtp_edge.export.manifest import read_manifest
    from mtp_edge.models.shipped import heldout_prompts
    from mtp_edge.runtime.backends import open_bundle

    manifest = read_manifest(bundle_dir)
    backends = list(backends or manifest.formats)
    if prompts is None:
        prompts = [p["ids"] for p in heldout_prompts()]
    report = {"bundle": str(bundle_dir), "max_new_tokens": max_new_tokens, "prompts": len(prompts), "backends": {}}
    for name in backends:
        backend = open_bundle(bundle_dir, name)
        bad = [t for p in prompts for t in p if not 0 <= t < backend.vocab_size]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside this bundle's vocabulary [0, {backend.vocab_size}); "
                                  "give --prompts FILE with text for its tokenizer.")
        result = tune_backend(backend, prompts, max_new_tokens=max_new_tokens, repeats=repeats, acceptance=acceptance,
                              eos_ids=manifest.eos_token_ids, progress=progress)
        save_tuning(bundle_dir, name, result)
        report["backends"][name] = result
    report["tuning_file"] = str(Path(bundle_dir) / TUNING_FILE)
    if plot is not None:
        report["plot"] = plot_report(report, plot)
    return report


def plot_report(report: dict, path: str | Path) -> dict:
    """tok/s against K per backend (predicted line, measured points, plain decoding dashed); a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, (name, result) in enumerate(report["backends"].items()):
        color = f"C{i}"
        ks = sorted(int(k) for k in result["rows"] if k != "auto")
        ax.plot(ks, [result["rows"][str(k)]["predicted_tok_s"] for k in ks], "-", color=color, label=f"{name} predicted")
        measured = [(k, result["rows"][str(k)]["measured_tok_s"]) for k in ks if "measured_tok_s" in result["rows"][str(k)]]
        if measured:
            ax.plot(*zip(*measured), "o", color=color, label=f"{name} measured")
        auto = result["rows"]["auto"]
        ax.plot([auto["chosen_k"]], [auto.get("measured_tok_s", auto["predicted_tok_s"])], "*", ms=14, color=color,
                label=f"{name} auto (K={auto['chosen_k']})")
        ax.axhline(result["rows"]["0"].get("measured_tok_s", result["rows"]["0"]["predicted_tok_s"]), ls="--",
                   color=color, lw=1, label=f"{name} plain decoding")
    ax.set_xticks(range(max((int(k) for r in report["backends"].values() for k in r["rows"] if k != "auto"), default=0) + 1))
    ax.set_xlabel("draft length K")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"mtp-edge tune: {Path(report['bundle']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    width, height = (int(v) for v in fig.get_size_inches() * fig.dpi)
    return {"file": str(path), "width": width, "height": height}


def format_tune(report: dict) -> str:
    lines = [f"tune {report['bundle']} ({report['prompts']} prompts x {report['max_new_tokens']} tokens)"]
    for name, result in report["backends"].items():
        c = result["costs"]
        verify = " ".join(f"{n}:{s * 1e3:.2f}" for n, s in c["verify"].items())
        lines.append(f"  {name}: decode {c['decode'] * 1e3:.2f} ms, draft step {c['draft_step'] * 1e3:.2f} ms, verify(n) ms {verify}")
        lines.append(f"  acceptance per position ({result['acceptance_source']}): "
                     + " ".join(f"{a:.2f}" for a in result["acceptance"]))
        lines.append(f"  {'K':>5} {'E[tokens]':>9} {'predicted tok/s':>16} {'measured tok/s':>15} {'speedup':>8}")
        for k, row in result["rows"].items():
            label = f"auto={row['chosen_k']}" if k == "auto" else k
            e = row.get("expected_tokens")
            measured = row.get("measured_tok_s")
            speedup = row.get("measured_speedup", row["predicted_speedup"])
            lines.append(f"  {label:>5} {'' if e is None else f'{e:.2f}':>9} {row['predicted_tok_s']:>16.1f} "
                         f"{'' if measured is None else f'{measured:.1f}':>15} {speedup:>7.2f}x")
    lines.append(f"wrote {report['tuning_file']}" + (f", {report['plot']['file']}" if "plot" in report else ""))
    return "\n".join(lines)
