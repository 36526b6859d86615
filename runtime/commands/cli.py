"""The mtp-edge command line.

Each subcommand is an `add_<name>(subparsers)` that registers its arguments and a `cmd_<name>(args) -> int`;
add a new one to SUBCOMMANDS. Heavy imports (torch, transformers) happen inside the commands so that
`--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtp_edge.models.errors import CheckpointError, MtpEdgeError
from mtp_edge.runtime.commands.arguments import (BUNDLE_DIR, CORPUS_FILE, DRAFTER_DIR, PROMPTS_FILE, TARGET_DIR, TEXT_FILE,
                                                 OneLineParser, WholeNumber, model_spec)
from mtp_edge.runtime.commands.render import format_report, human_bytes

PROG = "mtp-edge"


# --------------------------------------------------------------------------- model resolution


def resolve_configs(spec: str, drafter_dir: str | None = None):
    """A preset name, a target or drafter checkpoint folder, or a folder holding target/ and drafter/.

    Returns (target DecoderConfig or None, drafter DrafterConfig or None). Reads config.json only.
    """
    from mtp_edge.models import config as C

    if spec in C.PRESETS:
        pair = C.preset(spec)
        target, drafter = pair.target, pair.drafter
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise CheckpointError(f"{spec}: neither a preset ({', '.join(C.PRESETS)}) nor a checkpoint folder.")
        if (folder / "target").is_dir() and (folder / "drafter").is_dir():
            target = C.target_config_from_folder(folder / "target")
            drafter = C.drafter_config_from_folder(folder / "drafter")
        elif C.read_config_json(folder).get("model_type") in C.DRAFTER_MODEL_TYPES:
            target, drafter = None, C.drafter_config_from_folder(folder)
        else:
            target, drafter = C.target_config_from_folder(folder), None
    if drafter_dir is not None:
        if target is None:
            raise CheckpointError(f"{spec} is a drafter; --drafter pairs a drafter with a target given as MODEL.")
        drafter = C.drafter_config_from_folder(drafter_dir)
    if target is not None and drafter is not None:
        C.check_pair(target, drafter)  # sizes of a pair that cannot run together would mislead
    return target, drafter


# --------------------------------------------------------------------------- subcommands


def add_inspect(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="parameter counts, weight bytes, KV-cache and per-step read bytes (reads config.json only)",
        description="Sizes of a target and/or drafter, measured on the project's modules built on the meta device.",
    )
    p.add_argument("model", metavar="MODEL", type=model_spec, help="a preset (e2b, e4b, tiny), a target or drafter checkpoint folder, "
                   "or a folder holding target/ and drafter/")
    p.add_argument("--drafter", metavar="DIR", type=DRAFTER_DIR, help="drafter checkpoint folder to pair with a target MODEL")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from mtp_edge.models.sizes import model_sizes

    target, drafter = resolve_configs(args.model, args.drafter)
    report = {"model": args.model, "drafter_folder": args.drafter, **model_sizes(target, drafter)}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        source = args.model + (f" --drafter {args.drafter}" if args.drafter else "")
        sys.stdout.write(format_report(report, source))
    return 0


def draft_length(text: str) -> int | str:
    """type= for --k: a whole number >= 0, or auto."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number >= 0 or 'auto', got {text!r}.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"draft tokens per round must be >= 0 or 'auto', got {value}.")
    return value


draft_length.__name__ = "draft length"


def add_draft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", default="auto", type=draft_length,
                   help="draft tokens per round: auto (default: chosen each round from measured costs and acceptance), "
                        "or a fixed N (0 = plain decoding)")
    p.add_argument("--max-k", type=int, default=None, help="with --k auto: the longest draft (default: the bundle's K)")
    p.add_argument("--draft-p-min", type=float, default=None,
                   help="stop a draft before a step whose top drafter probability is below this "
                        "(default: with --k auto, from the measured costs; else never)")


def add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="speculative (or plain) decoding on the eager backend",
                              description="Generate from a target checkpoint, drafting with its MTP drafter.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", type=TARGET_DIR, help="target checkpoint folder (eager backend)")
    source.add_argument("--bundle", metavar="DIR", type=BUNDLE_DIR, help="an exported bundle (written by mtp-edge export)")
    p.add_argument("--drafter", metavar="DIR", type=DRAFTER_DIR, help="drafter checkpoint folder with --model (omit for target-only decoding)")
    p.add_argument("--backend", choices=["eager", "pte", "onnx"],
                   help="eager for --model (default); pte or onnx for --bundle (default: the bundle's first format)")
    p.add_argument("--threads", type=WholeNumber(1), default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model folder)")
    prompt.add_argument("--prompt-ids", help="prompt token ids, comma-separated")
    p.add_argument("--chat", action="store_true",
                   help="send --prompt as one user turn of the folder's chat template (tokenizer_config.json or "
                        "chat_template.jinja), rendered as transformers' apply_chat_template(add_generation_prompt=True)")
    add_draft_arguments(p)
    p.add_argument("--max-new-tokens", type=WholeNumber(1), default=64)
    p.add_argument("--max-seq-len", type=WholeNumber(2), default=1024, help="KV-cache positions (default 1024)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling-rule", choices=["rejection", "coupled"], default="rejection",
                   help="how sampling stays exact: rejection (default) or coupled (a seeded run gives the tokens of "
                        "plain seeded sampling whatever the draft lengths)")
    p.add_argument("--no-draft", action="store_true", help="decode with the target alone (same as --k 0)")
    p.add_argument("--json", action="store_true", help="print one JSON document: tokens, text, stats")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from mtp_edge.models import load_drafter, load_target
    from mtp_edge.runtime.backends.eager import EagerBackend
    from mtp_edge.runtime.errors import GenerationError
    from mtp_edge.runtime.sampling import SamplingConfig
    from mtp_edge.runtime.speculative import generate
    from mtp_edge.runtime.tokenizer import ChatTemplate, TextCodec, TextStream, chat_messages, parse_prompt_ids

    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                              rule=args.sampling_rule)
    folder = args.model or args.bundle
    codec = TextCodec.from_folder(folder)
    if args.prompt is not None:
        if codec is None:
            raise GenerationError(f"{folder} has no tokenizer.json: pass --prompt-ids instead of --prompt.")
        if args.chat:
            template = ChatTemplate.from_folder(folder)
            if template is None:
                raise GenerationError(f"{folder} has no chat template (neither chat_template.jinja nor a \"chat_template\" in "
                                      "tokenizer_config.json): its target checkpoint had none; send the prompt as plain "
                                      "text (without --chat).")
            # As transformers' apply_chat_template(tokenize=True): the template writes BOS, the encode adds none.
            prompt = codec.encode(template.render(chat_messages(args.prompt)), add_special_tokens=False)
        else:
            prompt = codec.encode(args.prompt)
    else:
        if args.chat:
            raise GenerationError("--chat takes --prompt TEXT (the user's turn), not --prompt-ids.")
        prompt = parse_prompt_ids(args.prompt_ids)
    k = 0 if args.no_draft else args.k
    if args.bundle:
        from mtp_edge.runtime.backends import open_bundle

        backend = open_bundle(args.bundle, args.backend, threads=args.threads)
        eos_ids = backend.eos_ids
    else:
        if args.backend not in (None, "eager"):
            raise GenerationError(f"--backend {args.backend} needs an exported --bundle DIR (see mtp-edge export).")
        target = load_target(args.model, args.max_seq_len)
        drafter = load_drafter(args.drafter, target=target.cfg) if args.drafter and k != 0 else None
        if k not in (0, "auto") and drafter is None:
            raise GenerationError("speculative decoding needs --drafter DIR (or pass --no-draft / --k 0).")
        backend = EagerBackend(target, drafter, max_draft=args.max_k or (k if isinstance(k, int) and k > 8 else 8))
        eos_ids = target.cfg.eos_token_ids

    stream = TextStream(codec) if codec is not None and not args.json else None
    on_token = (lambda t: sys.stdout.write(stream.push(t)) and sys.stdout.flush()) if stream else None
    result = generate(backend, prompt, k=k, max_k=args.max_k, draft_p_min=args.draft_p_min,
                      max_new_tokens=args.max_new_tokens, sampling=sampling, eos_ids=eos_ids, on_token=on_token)
    stats = result.stats.as_dict()
    if args.json:
        doc = {"prompt_ids": prompt, "tokens": result.tokens, "k": k, "stats": stats}
        if codec is not None:
            doc["text"] = codec.decode(result.tokens)
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if stream is None:
        print(" ".join(map(str, result.tokens)))
    else:
        print()
    print(
        f"[{stats['new_tokens']} tokens, stop: {stats['stop_reason']}; K={k} (rounds per draft length: "
        f"{', '.join(f'{n}: {c}' for n, c in stats['k_histogram'].items()) or 'none'}), acceptance {stats['acceptance_rate']:.1%}, "
        f"{stats['tokens_per_target_call']:.2f} tokens/target call; prefill {stats['prefill_tokens_per_s']:.1f} tok/s, "
        f"decode {stats['decode_tokens_per_s']:.1f} tok/s]",
        file=sys.stderr,
    )
    return 0


def add_bench(subparsers) -> None:
    from mtp_edge.runtime.bench import add_arguments

    p = subparsers.add_parser("bench", help="benchmarks that print figures (method latency, loop overhead, speed, export cost)",
                              description="Benchmarks that print figures; `mtp-edge bench NAME -h` for each one's options.")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from mtp_edge.runtime.bench import run

    return run(args)


def add_train_drafter(subparsers) -> None:
    p = subparsers.add_parser("train-drafter", help="train or adapt a Gemma 4 MTP drafter for a target checkpoint",
                              description="Distil a gemma4_assistant drafter from a target on a text corpus; writes a "
                              "Hugging Face folder that transformers' Gemma4AssistantForCausalLM also loads.")
    p.add_argument("--target", required=True, metavar="DIR", type=TARGET_DIR, help="target checkpoint folder (with tokenizer.json)")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE", type=CORPUS_FILE, help="text files to train on")
    p.add_argument("--out", required=True, metavar="DIR", help="output drafter folder")
    p.add_argument("--init", metavar="DIR", type=DRAFTER_DIR, help="start from this drafter (adapt it to a fine-tuned target)")
    p.add_argument("--work", metavar="DIR", help="checkpoint folder (default OUT.work); rerun to resume")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--centroids", type=int, default=64, help="clusters of the centroid LM head")
    p.add_argument("--top-k", type=int, default=8, help="clusters scored per draft step")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--unroll", type=int, default=4, help="draft steps trained per round (match the K you will use)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", type=int, metavar="N", help="train at most N steps in this run, then checkpoint "
                   "and exit (rerun to resume)")
    p.set_defaults(func=cmd_train_drafter)


def cmd_train_drafter(args) -> int:
    from mtp_edge.models.training.drafter import corpus_stream, run_train_drafter

    stream = corpus_stream(args.target, args.corpus)
    drafter = run_train_drafter(
        args.target, stream, args.out, work_dir=args.work, init_dir=args.init, steps=args.steps,
        batch_size=args.batch_size, length=args.seq_len, unroll=args.unroll, lr=args.lr, seed=args.seed,
        layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, heads=args.heads,
        num_centroids=args.centroids, top_k=args.top_k, stop_after=args.stop_after,
    )
    if drafter is not None:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: the shipped pair, plain vs speculative, on every backend")
    p.add_argument("--k", default="auto", type=draft_length,
                   help="draft tokens per round: auto (default) or a fixed N <= 4 (the demo bundle's K)")
    p.add_argument("--max-new-tokens", type=WholeNumber(1), default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from mtp_edge.runtime.commands.demo import run_demo
    from mtp_edge.runtime.commands.render import format_demo

    report = run_demo(k=args.k, max_new_tokens=args.max_new_tokens)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_demo(report))
    return 0


def add_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a target + drafter pair to a bundle (ExecuTorch .pte and/or ONNX + manifest)")
    add_export_arguments(p, positional_output=False)
    p.set_defaults(func=cmd_export)


def add_export_arguments(p: argparse.ArgumentParser, *, positional_output: bool) -> None:
    """The export arguments, shared with `optimum-cli export mtp-edge` (runtime/optimum_cli.py), whose
    exporters take the output folder as a positional argument."""
    p.add_argument("--model", required=True, metavar="DIR", type=TARGET_DIR, help="target checkpoint folder")
    p.add_argument("--drafter", required=True, metavar="DIR", type=DRAFTER_DIR, help="drafter checkpoint folder")
    p.add_argument("--format", default="pte", help="pte, onnx, or pte,onnx for both in one bundle (default pte)")
    if positional_output:
        p.add_argument("out", metavar="OUTPUT_DIR", help="the bundle folder to write")
    else:
        p.add_argument("--out", required=True, metavar="BUNDLE_DIR")
    p.add_argument("--max-seq-len", type=int, default=1024, help="usable context positions (default 1024)")
    p.add_argument("--k", type=int, default=4, help="largest draft length the bundle verifies (default 4)")
    p.add_argument("--prefill-chunk", type=int, default=32, help="prompt tokens per prefill call (default 32)")
    p.add_argument("--backend", default="xnnpack", choices=["xnnpack", "portable"], help="ExecuTorch kernels for the .pte")
    from mtp_edge.export.settings import DEFAULT

    p.add_argument("--quantize", default=DEFAULT, metavar="RECIPE",
                   help="none, or e.g. target=8da4w+emb4,drafter=8da8w (see README: Quantization); default: the format's "
                        "default recipe (.pte: 8da4w+emb4 for E2B-size targets, 8da8w+emb8 for small ones; ONNX: none)")
    p.add_argument("--draft-chains", default="all", metavar="LENGTHS",
                   help="the draft lengths the .pte drafts greedily in one call: all (2..k, default), none (faster "
                        "export; rounds draft step by step), or some, e.g. 2,4")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON document")


def cmd_export(args) -> int:
    from mtp_edge.export.bundle import write_bundle
    from mtp_edge.export.settings import ExportSettings

    manifest = write_bundle(args.model, args.drafter, args.out, ExportSettings.from_args(args))
    if args.json:
        sys.stdout.write(json.dumps(manifest.to_json()) + "\n")
    else:
        for name, artifact in manifest.artifacts.items():
            print(f"{name:<13} {artifact.file:<18} {human_bytes(artifact.bytes)}")
    return 0


def add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="quality report of a (quantized) bundle against its unquantized pair")
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=BUNDLE_DIR)
    p.add_argument("--backend", choices=["pte", "onnx"], help="default: the bundle's first format")
    p.add_argument("--reference-model", metavar="DIR", type=TARGET_DIR, help="unquantized target (default: the folder the bundle came from)")
    p.add_argument("--reference-drafter", metavar="DIR", type=DRAFTER_DIR, help="unquantized drafter (default: the folder the bundle came from)")
    p.add_argument("--text", metavar="FILE", type=TEXT_FILE, help="held-out text (default: the shipped pair's held-out ids)")
    p.add_argument("--positions", type=WholeNumber(1), default=1024, help="teacher-forced positions (default 1024)")
    p.add_argument("--max-new-tokens", type=WholeNumber(1), default=64)
    p.add_argument("--no-rss", action="store_true", help="skip the per-component peak RSS subprocesses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from mtp_edge.runtime.commands.evaluate import evaluate_bundle
    from mtp_edge.runtime.commands.render import format_eval
    from mtp_edge.runtime.tokenizer import TextCodec

    text_ids = None
    if args.text:
        codec = TextCodec.from_folder(args.bundle)
        if codec is None:
            raise MtpEdgeError(f"{args.bundle} has no tokenizer.json to tokenize --text with.")
        try:
            text_ids = codec.encode(Path(args.text).read_text())
        except OSError as e:
            raise MtpEdgeError(f"--text {args.text}: {e.strerror}.") from None
    report = evaluate_bundle(args.bundle, backend=args.backend, reference_model=args.reference_model,
                             reference_drafter=args.reference_drafter, text_ids=text_ids, positions=args.positions,
                             max_new_tokens=args.max_new_tokens, rss=not args.no_rss)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_eval(report))
    return 0


def add_tune(subparsers) -> None:
    p = subparsers.add_parser("tune", help="measure what each draft length is worth here; write tuning.json for --k auto",
                              description="Times decode, verify at every length and a draft step on this machine, "
                              "measures the acceptance per draft position on held-out prompts, and prints for each fixed K "
                              "and for --k auto the predicted and measured tokens per second. Writes tuning.json beside "
                              "the bundle (machine-local), which --k auto then starts from.")
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=BUNDLE_DIR)
    p.add_argument("--backend", choices=["pte", "onnx"], action="append",
                   help="backend(s) to tune (repeat the flag; default: every format of the bundle)")
    p.add_argument("--prompts", metavar="FILE", type=PROMPTS_FILE, help="text prompts, one per line (default: the shipped held-out prompts)")
    p.add_argument("--acceptance", metavar="A1,A2,...",
                   help="predict with this acceptance per draft position instead of measuring it (e.g. published figures)")
    p.add_argument("--max-new-tokens", type=WholeNumber(1), default=64)
    p.add_argument("--repeats", type=WholeNumber(1), default=20, help="timed calls per method and length (median)")
    p.add_argument("--plot", metavar="FILE.png", help="draw tok/s against K per backend, with the plain-decoding line")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from mtp_edge.runtime.commands.tune import format_tune, tune_bundle
    from mtp_edge.runtime.errors import GenerationError
    from mtp_edge.runtime.tokenizer import TextCodec

    acceptance = None
    if args.acceptance:
        try:
            acceptance = [float(a) for a in args.acceptance.split(",")]
        except ValueError:
            raise GenerationError(f"--acceptance takes comma-separated probabilities, got {args.acceptance!r}.") from None
        if not acceptance or any(not 0.0 <= a <= 1.0 for a in acceptance):
            raise GenerationError(f"--acceptance values must be probabilities in [0, 1], got {args.acceptance!r}.")
    prompts = None
    if args.prompts:
        path = Path(args.prompts)
        codec = TextCodec.from_folder(args.bundle)
        if codec is None:
            raise GenerationError(f"{args.bundle} has no tokenizer.json to encode --prompts with.")
        prompts = [codec.encode(line) for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise GenerationError(f"{path}: no prompts in it (one per line).")
    report = tune_bundle(args.bundle, backends=args.backend, prompts=prompts, max_new_tokens=args.max_new_tokens,
                         repeats=args.repeats, acceptance=acceptance, plot=args.plot)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_tune(report) + "\n")
    return 0


def add_validate(subparsers) -> None:
    p = subparsers.add_parser("validate", help="build the native (C++) runner and check it gives the Python runtime's tokens",
                              description="Runs a bundle's demo prompts through the native runner (android_demo/native, "
                              "built on first use into the cache folder) and the Python pte backend: greedy and seeded "
                              "sampling at the bundle's K, greedy K=0. Exit code 1 when any tokens differ. --arch arm64 "
                              "cross-builds the runner for aarch64 and runs it under qemu-aarch64 (needs "
                              "g++-12-aarch64-linux-gnu and qemu-user; `make arm64-tools`).")
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=BUNDLE_DIR, help="a bundle with a .pte (written by mtp-edge export)")
    p.add_argument("--max-new-tokens", type=WholeNumber(1), default=64)
    p.add_argument("--num-prompts", type=WholeNumber(1), default=None, help="use the first N demo prompts (default: all)")
    p.add_argument("--arch", choices=["native", "arm64"], default="native",
                   help="native: this machine's runner (default); arm64: the runner cross-built for aarch64 Linux, run "
                   "under qemu-aarch64 (a quantized bundle's tokens may differ from x86's: reported, not a failure)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from mtp_edge.runtime.commands.render import format_validate
    from mtp_edge.runtime.native.validate import validate_bundle

    report = validate_bundle(args.bundle, max_new_tokens=args.max_new_tokens, num_prompts=args.num_prompts, arch=args.arch)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_validate(report))
    return 0 if report["ok"] else 1


def add_fuzz(subparsers) -> None:
    p = subparsers.add_parser("fuzz", help="random pairs and requests: speculative decoding must give plain decoding's tokens",
                              description="Random small Gemma 4 pairs (eager, seeded random weights) and random requests "
                              "(prompts across the sliding window, fixed K or auto with random cost tables, early stops, "
                              "EOS inside drafts, the cache's end, greedy and seeded sampling under both rules), each checked "
                              "against plain decoding and for consistent stats. pte/onnx fuzz the given --bundle(s) against "
                              "their own plain decoding; native (the C++ runner) and arm64 (it cross-built, under qemu) "
                              "are held to the Python pte backend on the given .pte bundle(s), token for token and stat "
                              "for stat. Exit code 1 on any mismatch, with a one-line JSON reproducer.")
    p.add_argument("--backends", default="eager", metavar="LIST",
                   help="comma-separated: eager, pte, onnx, native, arm64 (default eager; the others need --bundle)")
    p.add_argument("--cases", type=WholeNumber(1), default=200, help="random requests per backend (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs and requests (default 0)")
    p.add_argument("--bundle", metavar="DIR", type=BUNDLE_DIR, action="append",
                   help="an exported bundle for the pte/onnx backends (repeat the flag for several)")
    p.add_argument("--exported-pairs", type=WholeNumber(1), metavar="N",
                   help="pte/onnx: also save N random pairs as checkpoints, export each (fp32) and fuzz it, its "
                   "greedy plain output held to the eager pair's (--cases split among them)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_fuzz)


def cmd_fuzz(args) -> int:
    from mtp_edge.runtime.fuzz import format_fuzz, run_fuzz

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in ("eager", "pte", "onnx", "native", "arm64")]
    if unknown or not backends:
        raise MtpEdgeError(f"--backends takes a comma-separated list of eager, pte, onnx, native, arm64; got {args.backends!r}.")
    needs_bundle = [b for b in backends if b != "eager" and not (args.exported_pairs and b in ("pte", "onnx"))]
    if needs_bundle and not args.bundle:
        raise MtpEdgeError("--backends pte/onnx/native/arm64 fuzz an exported bundle: pass --bundle DIR (see mtp-edge "
                           "export), or --exported-pairs N for pte/onnx.")
    report = run_fuzz(backends, cases=args.cases, seed=args.seed, bundles=args.bundle or (),
                      exported_pairs=args.exported_pairs or 0)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_fuzz(report))
    return 0 if report["ok"] else 1


SUBCOMMANDS = (add_inspect, add_generate, add_bench, add_train_drafter, add_export, add_eval, add_demo, add_tune, add_validate, add_fuzz)


def build_parser() -> argparse.ArgumentParser:
    """Every (sub)parser is a OneLineParser: a bad flag value is one `PROG: error: ...` line and exit code 2."""
    parser = OneLineParser(prog=PROG, description="Gemma 4 E2B/E4B + MTP drafter export toolkit.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, PROG)


def run_command(func, args, prog: str) -> int:
    """Run a cmd_* function; mtp-edge's own errors become one `prog: error: ...` line and exit code 2."""
    try:
        return func(args)
    except MtpEdgeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
