"""How the commands' reports are printed: plain functions of the report dicts that demo, evaluate,
native.validate and models.sizes return. Nothing is imported here, so cli imports it at start-up
and `mtp-edge --help` stays fast.

    format_report     `mtp-edge inspect` (tables of parameters and bytes)
    format_demo       `mtp-edge demo`
    format_eval       `mtp-edge eval`
    format_validate   `mtp-edge validate`
"""

from __future__ import annotations


def _digits4(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def human_bytes(n: int) -> str:
    """Decimal units (1 GB = 10^9 bytes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{_digits4(n / scale)} {unit}"
    return f"{n} B"


def human_count(n: int) -> str:
    if n < 10_000:
        return str(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{_digits4(n / scale)}{unit}"
    return str(n)


LABEL_WIDTH = 46
WIDTHS = ("fp32", "bf16", "int8", "int4")


def _line(label: str, count: str, cells) -> str:
    return f"  {label:<{LABEL_WIDTH}}{count:>12}" + "".join(f"{c:>12}" for c in cells)


def _table(title: str, rows: list[tuple[str, dict]]) -> list[str]:
    """rows: (label, {"parameters": n, "bytes": {...}}); the last row is the total."""
    lines = [_line(title, "parameters", WIDTHS)]
    for label, entry in rows:
        lines.append(_line(label, human_count(entry["parameters"]), (human_bytes(entry["bytes"][w]) for w in WIDTHS)))
    lines.insert(-1, "  " + "-" * (LABEL_WIDTH + 12 * (1 + len(WIDTHS))))
    return lines


TARGET_LABELS = {
    "token_embedding": "token embedding",
    "lm_head": "LM head (untied)",
    "ple_table": "PLE table",
    "ple_projections": "PLE projections",
    "attention": "attention",
    "mlp": "MLP",
    "norms_other": "norms/other",
}
DRAFTER_LABELS = {
    "lm_head": "LM head",
    "centroid_head": "centroid head",
    "projections": "pre/post projections",
    "layers": "layers",
    "norms_other": "norms/other",
}


def format_report(report: dict, source: str) -> str:
    out = [f"mtp-edge inspect {source}", "Sizes in decimal units (1 GB = 10^9 bytes); quantisation scales not counted.", ""]
    t = report.get("target")
    if t:
        c = t["config"]
        labels = dict(TARGET_LABELS)
        if c["tie_word_embeddings"]:
            labels["token_embedding"] = "token embedding (= tied LM head)"
        out.append(
            f"Target: {c['layers']} layers ({c['kv_shared_layers']} KV-shared), hidden {c['hidden_size']}, "
            f"vocab {c['vocab_size']}, PLE dim {c['ple_dim']}"
        )
        rows = [(labels[k], v) for k, v in t["groups"].items()] + [("total", t)]
        out += _table("weights", rows) + [""]

        kv = t["kv_cache"]
        kv_cells = lambda d: (human_bytes(d[w]) for w in ("fp32", "bf16"))
        out += [
            f"  KV cache: {kv['cache_layers']} cache layers ({kv['sliding_cache_layers']} sliding, "
            f"{kv['full_cache_layers']} full), {kv['elements_per_token']} elements per token",
            _line("KV cache bytes", "", ("fp32", "bf16")),
            _line("per 1k tokens, full-length buffers (allocated)", "", kv_cells(kv["bytes_per_1k_tokens"])),
            _line(f"window-bounded: sliding layers at {kv['sliding_window']} tokens", "",
                  kv_cells(kv["sliding_layers_bytes_at_window"])),
            _line("window-bounded: + full layers per 1k tokens", "", kv_cells(kv["full_layers_bytes_per_1k_tokens"])),
            "",
        ]
        step_labels = {
            "weights": "weights read whole",
            "embedding_rows": "embedding rows (token + PLE, 1 each)",
            "lm_head": "LM head read whole (logits)",
        }
        rows = [(step_labels[k], v) for k, v in t["decode_step"]["reads"].items()] + [("total", t["decode_step"])]
        out += _table("one decode step reads (KV cache not incl.)", rows) + [""]

    d = report.get("drafter")
    if d:
        c = d["config"]
        head = (
            f"clustered head {c['num_centroids']} centroids, top-{c['centroid_top_k']} -> {c['candidate_tokens']} candidates"
            if c["clustered_head"] else "full LM head"
        )
        out.append(
            f"Drafter: {c['layers']} layers, hidden {c['hidden_size']}, backbone {c['backbone_hidden_size']}, {head}"
        )
        rows = [(DRAFTER_LABELS[k], v) for k, v in d["groups"].items()] + [("total", d)]
        out += _table("weights", rows) + [""]
        step_labels = {
            "weights": "weights read whole",
            "centroid_head": "centroid head read whole",
            "lm_head": f"LM head rows ({c['candidate_tokens']} candidates)" if c["clustered_head"] else "LM head read whole",
            "target_embedding_row": "target embedding row (input)",
        }
        rows = [(step_labels[k], v) for k, v in d["draft_step"]["reads"].items()] + [("total", d["draft_step"])]
        out += _table("one draft step reads (KV cache not incl.)", rows) + [""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- demo, eval, validate


def format_demo(report: dict) -> str:
    head = (f"{'backend':<10}{'plain tok/s':>13}{'spec tok/s':>12}{'speedup':>9}{'accept':>8}{'tok/call':>10}"
            f"{'spec=plain':>12}{'=first':>8}")
    k = next(iter(report["backends"].values()), {}).get("k", "?")
    lines = [f"default pair, {report['prompts']} held-out prompts, {report['max_new_tokens']} new tokens each, greedy, "
             f"K={k}", head]
    for name, r in report["backends"].items():
        lines.append(
            f"{name:<10}{r['plain_tokens_per_s']:>13.1f}{r['speculative_tokens_per_s']:>12.1f}{r['speedup']:>8.2f}x"
            f"{r['acceptance_rate']:>8.1%}{r['tokens_per_target_call']:>10.2f}{'yes' if r['token_identical'] else 'NO':>12}"
            f"{'-' if r['matches_reference'] is None else 'yes' if r['matches_reference'] else 'NO':>8}"
        )
    for name, r in report["backends"].items():
        if r.get("k_histogram") and r["k"] == "auto":
            chosen = ", ".join(f"K={n}: {c}" for n, c in r["k_histogram"].items())
            lines.append(f"{name}: rounds per draft length chosen by --k auto: {chosen}")
    for name, r in report["backends"].items():
        if r["recipe"] != "none":
            lines.append(f"{name} runs the quantized recipe {r['recipe']}")
    lines.append("spec=plain: speculative output identical to target-only output on that backend; "
                 "=first: plain output identical to the first row's (unquantized backends)")
    return "\n".join(lines) + "\n"


def format_eval(report: dict) -> str:
    q, s, b = report["quality"], report["speculation"], report["bytes"]
    lines = [
        f"bundle {report['bundle']} ({report['backend']}), recipe {report['recipe']}",
        f"target top-1 agreement with the unquantized target: {q['top1_agreement']:.2%} over {q['positions']} positions",
        f"perplexity {q['perplexity']:.3f} vs {q['reference_perplexity']:.3f} unquantized (delta {q['perplexity_delta']:+.3f})",
        f"tokens per target call (K={s['k']}, greedy): {s['tokens_per_target_call']:.3f} vs "
        f"{s['reference_tokens_per_target_call']:.3f} unquantized ({s['relative_change']:+.1%}); speculative output "
        f"{'identical to' if s['speculative_equals_target_only'] else 'DIFFERENT from'} target-only output",
    ]
    for fmt, size in b["per_format"].items():
        lines.append(f"{fmt}: {size / 2**20:.2f} MiB on disk, {b['fp32_over_bundle'][fmt]:.2f}x smaller than the fp32 weights")
    for name, r in report.get("peak_rss", {}).items():
        lines.append(f"RSS {name}: {r['rss_bytes'] / 2**20:.1f} MiB after loading and one call, {r['above_baseline_bytes'] / 2**20:.1f} MiB "
                     f"above the runtime's own; process peak {r['peak_rss_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines) + "\n"


def format_validate(report: dict) -> str:
    arch = report.get("arch", "native")
    where = "native runner" if arch == "native" else f"{arch} runner (qemu-aarch64, CPU {report.get('qemu_cpu')})"
    lines = [
        f"validate {report['bundle']}: {where} vs Python pte backend, {report['prompts']} prompts "
        f"({report['prompts_from']}), {report['max_new_tokens']} new tokens each, recipe {report['quantization']}",
        f"{'case':<28}{'identical':>10}{'native tok/s':>14}{'python tok/s':>14}{'speedup':>9}{'accept':>8}"
        f"{'native us/round':>17}{'python us/round':>17}",
    ]
    for row in report["cases"]:
        sampling = row["sampling"]
        label = row["case"] + (f" t={sampling['temperature']:g} p={sampling['top_p']:g}" if sampling["temperature"] else "")
        speedup = row["native_tokens_per_s"] / row["python_tokens_per_s"] if row["python_tokens_per_s"] else 0.0
        accept = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.1%}"
        lines.append(
            f"{label:<28}{str(row['identical']) + '/' + str(row['prompts']):>10}{row['native_tokens_per_s']:>14.1f}"
            f"{row['python_tokens_per_s']:>14.1f}{speedup:>8.2f}x{accept:>8}"
            f"{row['native_runner_s_per_round'] * 1e6:>17.1f}{row['python_runner_s_per_round'] * 1e6:>17.1f}"
        )
    for row in report["cases"]:
        if "native_k_histogram" in row:
            same = "same" if row.get("k_histograms_identical") else "DIFFERENT"
            hist = ", ".join(f"K={k}: {n}" for k, n in row["native_k_histogram"].items())
            lines.append(f"{row['case']}: rounds per draft length ({same} in both runtimes): {hist}")
    if "cost_source" in report:
        lines.append(f"--k auto cases ran from one frozen cost table ({report['cost_source']}) in both runtimes")
    for row in report["cases"]:
        if not row["token_identical"] and "first_divergence" in row:
            where_ = ", ".join(f"prompt {i}: token {d}" for i, d in enumerate(row["first_divergence"]) if d is not None)
            lines.append(f"{row['case']}: first differing token {where_}")
    lines.append(f"native greedy speculative == native greedy K=0: {'yes' if report['native_speculative_equals_plain'] else 'NO'}")
    top1 = report.get("top1_agreement")
    if top1:
        lines.append(f"{arch} vs x86 target top-1 (teacher-forced): {top1['agreeing']}/{top1['positions']} positions agree "
                     f"({top1['agreement']:.2%}; at least 99% required)")
        gaps = top1.get("disagreement_logit_gaps")
        if gaps:
            lines.append(f"  where they differ, x86's logit of its own top token leads {arch}'s choice by {gaps[0]:.3g} to "
                         f"{gaps[-1]:.3g} (x86's median top-two gap: {top1['median_top2_logit_gap']:.3g}; "
                         f"{top1['near_tie_share']:.1%} of positions are within {gaps[-1]:.3g})")
    lines.append("us/round: time per round outside the ExecuTorch method calls (sampling, accept rule, copies, bookkeeping)")
    if arch != "native":
        lines.append(f"{arch} tok/s and us/round are emulated (qemu-aarch64 on this machine), not a phone's")
    if top1 and top1["agreement"] < 0.99:
        lines.append(f"MISMATCH: the {arch} target's top-1 leaves x86's at more than 1% of positions")
    elif not report["ok"]:
        lines.append("MISMATCH: the native runner's tokens differ from the Python runtime's (see identical)"
                     if report.get("tokens_identical", True) is False and report.get("tokens_must_match", True) else
                     "MISMATCH: on the runner itself, speculative (K, auto) tokens differ from its K=0 tokens")
    elif report.get("tokens_identical", True):
        lines.append("OK: the native runner gives the Python runtime's tokens")
    else:
        lines.append(f"OK (quantized, {arch}): the runner's tokens differ from the x86 Python runtime's where shown above "
                     "(ARM int8 kernels round differently), and speculative == plain on the runner itself")
    return "\n".join(lines) + "\n"
