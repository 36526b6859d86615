"""The reproducible recipe for the shipped default pair.

    python -m mtp_edge.models.training.recipe --out models/default_pair

Corpus: the Python standard library's own source (present on every machine, PSF licence),
test folders excluded, split by file into train and held-out. Then a byte-level BPE tokenizer,
a small target that uses every E2B feature, and a drafter trained on it with train-drafter.
Each stage resumes from its checkpoint when rerun. The shipped pair then went through one more
stage, quantization-aware fine-tuning for the default .pte recipe (120 target steps, then the
drafter adapted to the new target for 120 steps):

    python -m mtp_edge.quantize.qat --work recipe_work --out models/default_pair
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
import time
from pathlib import Path

import torch

from ..config import FULL, SLIDING, DecoderConfig, hf_config_to_target
from .common import Checkpoint, TokenStream

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>"]  # ids 0, 1, 2 as in Gemma
PAD, EOS, BOS = 0, 1, 2
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def corpus_files(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(train, held-out) .py files of the standard library; 1 file in 20 is held out, chosen by path hash."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1]))
    held = [p for p in files if int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20 == 0]
    held_set = set(held)
    return [p for p in files if p not in held_set], held


def read_texts(files: list[Path]) -> list[str]:
    texts = []
    for p in files:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def train_tokenizer(texts: list[str], path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tok.save(str(path))
    return tok


def encode_stream(tok, texts: list[str]) -> TokenStream:
    """Documents as <bos> text <eos>, concatenated."""
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(EOS)
    return TokenStream(torch.tensor(ids, dtype=torch.int32))


def default_target_config() -> DecoderConfig:
    """Small, but with every E2B feature: PLE, sliding + full layers with a wider full head_dim,
    KV sharing (last 3 layers) with a double-wide MLP, final softcap, tied embeddings."""
    from transformers import Gemma4TextConfig

    return hf_config_to_target(Gemma4TextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=1, head_dim=64, global_head_dim=128,
        layer_types=[SLIDING, SLIDING, SLIDING, FULL] * 2, sliding_window=128, final_logit_softcapping=30.0,
        hidden_size_per_layer_input=32, vocab_size_per_layer_input=VOCAB_SIZE, num_kv_shared_layers=3,
        use_double_wide_mlp=True, max_position_embeddings=4096, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
    ))


def main(argv=None) -> int:
    from .target import evaluate_target, train_target

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "default_pair"))
    parser.add_argument("--work", default="recipe_work", help="checkpoints and corpus cache (resumable)")
    parser.add_argument("--target-steps", type=int, default=900)
    parser.add_argument("--drafter-steps", type=int, default=400)
    parser.add_argument("--stage", choices=["all", "target"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()

    train_files, held_files = corpus_files()
    train_texts, held_texts = read_texts(train_files), read_texts(held_files)
    tok_path = work / "tokenizer.json"
    if not tok_path.is_file():
        train_tokenizer(train_texts, tok_path)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    train_stream, held_stream = encode_stream(tok, train_texts), encode_stream(tok, held_texts)
    torch.save({"train": train_stream.tokens, "held": held_stream.tokens}, work / "streams.pt")
    timings["corpus_and_tokenizer_s"] = time.perf_counter() - t0
    print(f"corpus: {len(train_files)} train files ({len(train_stream)} tokens), "
          f"{len(held_files)} held-out files ({len(held_stream)} tokens)", flush=True)

    t1 = time.perf_counter()
    target = train_target(default_target_config(), train_stream, steps=args.target_steps, seed=args.seed,
                          checkpoint=Checkpoint(work / "target.ckpt"))
    timings["target_s"] = time.perf_counter() - t1
    report = {"target_eval": evaluate_target(target, held_stream), "timings": timings}
    print(json.dumps(report, indent=2), flush=True)
    if args.stage == "target":
        return 0

    from ..hf_format import save_target
    from .drafter import run_train_drafter

    # Ship the target in bf16 and train the drafter against exactly what ships.
    target_dir, drafter_dir = work / "target", work / "drafter"
    if not (target_dir / "model.safetensors").is_file():
        save_target(target, target_dir, dtype=torch.bfloat16, tokenizer_file=tok_path, eos_token_ids=(EOS,))
    t2 = time.perf_counter()
    if not (drafter_dir / "model.safetensors").is_file():
        run_train_drafter(target_dir, train_stream, drafter_dir, work_dir=work, steps=args.drafter_steps,
                          seed=args.seed, **DRAFTER_GEOMETRY)
    timings["drafter_s"] = time.perf_counter() - t2
    (work / "heldout.json").write_text(json.dumps(heldout_file(tok, held_texts, held_stream)))
    timings["recipe_s"] = time.perf_counter() - t0
    report["timings"] = timings
    (work / "recipe_report.json").write_text(json.dumps(report, indent=2))
    package(work, out)
    print(json.dumps(report, indent=2), flush=True)
    return 0


DRAFTER_GEOMETRY = dict(layers=1, hidden=128, intermediate=512, heads=2, num_centroids=64, top_k=8)
SHIPPED = ("target", "drafter", "heldout.json", "recipe_report.json")


def heldout_file(tok, held_texts: list[str], held_stream: TokenStream, prompts: int = 8, prompt_tokens: int = 96,
                 eval_tokens: int = 16384) -> dict:
    """Demo prompts cut mid-file (at a line start) from held-out files, and a held-out token slice for quality tests."""
    long_texts = [t for t in held_texts if len(t) > 4000]
    picked = [long_texts[i * len(long_texts) // prompts] for i in range(prompts)]
    out = []
    for text in picked:
        start = text.index("\n", len(text) // 2) + 1
        ids = tok.encode(text[start:]).ids[: prompt_tokens + 1]  # <bos> + prompt
        out.append({"ids": ids, "text": tok.decode(ids[1:])})
    return {"prompts": out, "eval_ids": held_stream.tokens[:eval_tokens].tolist(),
            "source": "Python standard library (PSF licence), held-out files, test folders excluded"}


def package(work: Path, out: Path) -> None:
    """Copy the shipped files into `out` atomically: a temporary sibling, then one rename."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in SHIPPED:
        src = work / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


if __name__ == "__main__":
    raise SystemExit(main())
