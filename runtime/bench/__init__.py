"""Benchmarks behind `mtp-edge bench NAME`: per-method latency of every backend, the speculative loop, recipes, E2B-size slices, the clustered head.

    timing.py      percentiles of timed calls, RSS (now, peak, per export stage), a function in a fresh process
    methods.py     `methods`: one latency harness for any Backend (pte, onnx, eager)
    op_profile.py  `methods --profile`: each call of a .pte operator by operator (ETDump)
    loop.py        `loop`, `eager`, `acceptance`: the loop's own overhead, eager speed, acceptance per K
    bandwidth.py   `methods --bandwidth`, `e2b-full`: decode's achieved weight bandwidth against the machine's
    e2b.py         `e2b-slice`, `e2b-scaling`, `e2b-full`: E2B-width random pairs exported and timed, extrapolation
    adaptive.py    `adaptive`: plain, every fixed K and --k auto on eager, pte, onnx and native
    export_cost.py `export-measured`: write_bundle in a fresh process (wall time, peak RSS, per-stage RSS)
    recipes.py     `recipes`: the shipped pair per quantization recipe and backend
    head.py        `head`: the clustered vs the full LM head of one draft step
    long_context.py `long-context`: prefill and decode cost per token as the prompt grows, spec == plain there

This module holds the `mtp-edge bench` subcommands (runtime/commands/cli.py mounts them); it and
timing.py import no torch, so `mtp-edge --help` and the children of run_in_child start light.
"""

from __future__ import annotations

import argparse
import json

from mtp_edge.runtime.commands.arguments import BUNDLE_DIR, DRAFTER_DIR, TARGET_DIR, WholeNumber, whole_numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmarks, as subcommands of `parser` (`mtp-edge bench`); each sets args.run_bench(args) -> report."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="BENCHMARK")

    def add(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print the report as one line of JSON (default: indented)")
        p.set_defaults(run_bench=run)
        return p

    def export_args(p, max_seq_len: int = 512, quantize: str = "none") -> None:
        p.add_argument("--max-seq-len", type=int, default=max_seq_len)
        p.add_argument("--k", type=int, default=4)
        p.add_argument("--prefill-chunk", type=int, default=32)
        p.add_argument("--format", default="pte", choices=("pte", "onnx"), help="the bundle's format (e2b benchmarks)")
        p.add_argument("--backend", default="xnnpack", choices=("xnnpack", "portable"), help="ExecuTorch kernels for the .pte")
        p.add_argument("--quantize", default=quantize, help="a --quantize recipe, or `default` (each format's default)")

    p = add("loop", _loop, "the loop's own time per round on a backend whose calls cost nothing, greedy and sampled")
    p.add_argument("--k", type=int, default=4)

    p = add("eager", _eager, "plain vs speculative tokens/s on the eager backend, random-weight pair")
    p.add_argument("--preset", default="tiny", help="geometry, random weights (default tiny)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)

    p = add("acceptance", _acceptance, "the shipped pair at K=1..6, greedy and temperature 0.7: acceptance, tokens per call, speedup")
    p.add_argument("--new-tokens", type=int, default=64)

    p = add("adaptive", _adaptive, "the shipped pair's demo bundle: plain, each fixed K and --k auto on every backend, "
            "greedy and temperature 0.7 (tok/s, auto against plain and the best fixed K)")
    p.add_argument("--backends", default="eager,pte,onnx,native", help="comma-separated: eager, pte, onnx, native")
    p.add_argument("--samplings", default="greedy,T=0.7,T=0.7/coupled", help="comma-separated: greedy, T=0.7 (the rejection rule), T=0.7/coupled")
    p.add_argument("--repeats", type=int, default=3, help="runs of every configuration (median)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--tune", action="store_true", help="run tune first (writes tuning.json beside the demo bundle): "
                   "auto, and the frozen policy of seeded rejection-rule runs, start from this machine's costs")

    p = add("head", _head, "one draft step with the clustered vs the full LM head, eager and pte, and the bytes each reads")
    p.add_argument("--preset", default="e2b", help="geometry, random weights (default e2b)")
    p.add_argument("--context", type=int, default=1024, help="cache positions the draft step attends over")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--no-pte", action="store_true", help="eager only (no .pte export)")

    p = add("methods", _methods, "per-method latency (prefill chunk, verify, decode, draft) of a bundle on one backend")
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=BUNDLE_DIR)
    p.add_argument("--backend", default="pte", choices=("pte", "onnx", "eager"),
                   help="pte (ExecuTorch), onnx (ONNX Runtime), or eager (the checkpoint pair the bundle was exported from)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--fill-chunks", type=int, default=4, help="prefill chunks in the cache before the timed calls")
    p.add_argument("--profile", action="store_true",
                   help="also each call operator by operator (ExecuTorch's ETDump; pte only): time in XNNPACK and outside it")
    p.add_argument("--bandwidth", action="store_true",
                   help="also decode's achieved weight bandwidth (weight bytes per decode / decode time) against this "
                        "machine's measured read bandwidth")

    p = add("long-context", _long_context, "prefill and decode cost per token as the prompt grows (one bundle, "
            "one backend), and speculative == plain there; exit 1 if not")
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=BUNDLE_DIR)
    p.add_argument("--backend", choices=("pte", "onnx"), help="default: the bundle's first format")
    p.add_argument("--lengths", type=whole_numbers, metavar="N,N,...",
                   help="prompt lengths (default 512, 2048 and the longest the context allows)")
    p.add_argument("--new-tokens", type=WholeNumber(1), default=32)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")

    p = add("recipes", _recipes, "the shipped pair: speed and quality per quantization recipe and backend")
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--formats", default="pte,onnx")
    p.add_argument("--k", type=int, default=4)

    p = add("e2b-slice", _e2b_slice, "random E2B-width slice: save, export (time, peak RSS), time the methods")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-eager", action="store_true", help="skip the eager latencies")
    p.add_argument("--vocab-size", type=int, help="shrink the vocabulary (memory-scaling points); default the real 262144")
    export_args(p)

    p = add("e2b-scaling", _e2b_scaling, "e2b-slice at several layer counts, then extrapolate to the full E2B")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-eager", action="store_true", help="skip the eager latencies")
    p.add_argument("--vocab-size", type=int, help="shrink the vocabulary (memory-scaling points); default the real 262144")
    export_args(p)

    p = add("e2b-full", _e2b_full, "the whole E2B (or --preset e4b) pair, random weights: save, export (default recipe: "
            "time, peak RSS, sizes), time the methods")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--preset", default="e2b", choices=("e2b", "e4b"), help="the geometry (default e2b)")
    export_args(p, quantize="default")

    p = add("export-measured", _export_measured, "write_bundle in a fresh process: wall time, peak RSS, per-stage RSS")
    p.add_argument("target_dir", metavar="TARGET_DIR", type=TARGET_DIR)
    p.add_argument("drafter_dir", metavar="DRAFTER_DIR", type=DRAFTER_DIR)
    p.add_argument("out_dir", metavar="OUT_DIR")
    export_args(p)


def run(args) -> int:
    """Run the benchmark the arguments name and print its report."""
    report = args.run_bench(args)
    if args.what == "head" and not args.json:
        from .head import summary

        print(summary(report))
    elif args.what == "adaptive" and not args.json:
        from .adaptive import format_adaptive

        print(format_adaptive(report))
    elif args.what == "long-context" and not args.json:
        from .long_context import format_long_context

        print(format_long_context(report))
    elif args.json:
        print(json.dumps(report, default=str))
    else:
        print(json.dumps(report, indent=2, default=str))
    if args.what == "long-context" and not report["speculative_equals_plain"]:
        return 1  # a broken guarantee, as `validate` reports one
    return 0


def _export_settings(args) -> dict:
    """bench_e2b_slice's export arguments; --quantize default is each format's default recipe."""
    return dict(formats=args.format, k=args.k, max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk,
                backend=args.backend, quantize=args.quantize)


def _loop(args) -> dict:
    from mtp_edge.runtime.sampling import SamplingConfig

    from .loop import bench_loop

    return {"greedy": bench_loop(args.k), "sampling": bench_loop(args.k, sampling=SamplingConfig(1.0))}


def _eager(args) -> dict:
    from .loop import bench_eager

    return bench_eager(args.preset, args.k, args.new_tokens)


def _acceptance(args) -> dict:
    from .loop import bench_acceptance

    return bench_acceptance(max_new_tokens=args.new_tokens)


def _adaptive(args) -> dict:
    from .adaptive import BACKENDS, SAMPLINGS, bench_adaptive

    backends, samplings = args.backends.split(","), args.samplings.split(",")
    unknown = sorted(set(backends) - set(BACKENDS)) + sorted(set(samplings) - set(SAMPLINGS))
    if unknown:
        from mtp_edge.models.errors import MtpEdgeError

        raise MtpEdgeError(f"bench adaptive: unknown backend or sampling {', '.join(unknown)}; "
                           f"--backends takes {', '.join(BACKENDS)}; --samplings takes {', '.join(SAMPLINGS)}.")
    return bench_adaptive(backends=backends, samplings=samplings, repeats=args.repeats, max_new_tokens=args.new_tokens,
                          tune=args.tune)


def _head(args) -> dict:
    from .head import bench_head

    return bench_head(args.preset, context=args.context, repeats=args.repeats, pte=not args.no_pte)


def _methods(args) -> dict:
    from .methods import bench_methods

    if args.profile and args.backend != "pte":
        from mtp_edge.models.errors import MtpEdgeError

        raise MtpEdgeError(f"bench methods --profile reads ExecuTorch's operator record: it profiles --backend pte only, "
                           f"not {args.backend}.")
    report = bench_methods(args.bundle, args.backend, threads=args.threads, repeats=args.repeats, fill_chunks=args.fill_chunks,
                           bandwidth=args.bandwidth)
    if args.profile:
        from .op_profile import profile_pte

        report["profile"] = profile_pte(args.bundle, repeats=args.repeats, fill_chunks=args.fill_chunks)
    return report


def _long_context(args) -> dict:
    from .long_context import bench_long_context

    return bench_long_context(args.bundle, args.backend, lengths=args.lengths, new_tokens=args.new_tokens, threads=args.threads)


def _recipes(args) -> dict:
    from .recipes import bench_recipes

    return bench_recipes(args.recipes, formats=tuple(args.formats.split(",")), k=args.k)


def _e2b_slice(args) -> dict:
    from .e2b import bench_e2b_slice

    return bench_e2b_slice(args.out_dir, layers=args.layers, repeats=args.repeats, eager=not args.no_eager,
                           vocab_size=args.vocab_size, **_export_settings(args))


def _e2b_scaling(args) -> dict:
    from .e2b import bench_e2b_scaling

    return bench_e2b_scaling(args.out_dir, tuple(args.layers), repeats=args.repeats, eager=not args.no_eager,
                             vocab_size=args.vocab_size, **_export_settings(args))


def _e2b_full(args) -> dict:
    from .e2b import bench_e2b_slice

    return bench_e2b_slice(args.out_dir, layers=None, repeats=args.repeats, eager=False, preset_name=args.preset,
                           **_export_settings(args))


def _export_measured(args) -> dict:
    from mtp_edge.export.settings import ExportSettings

    from .export_cost import measure_export

    return measure_export(args.target_dir, args.drafter_dir, args.out_dir, ExportSettings(**_export_settings(args)))
