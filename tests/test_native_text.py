"""Text in the native runner: the bundle's tokenizer.json through tokenizers::HFTokenizer (vendored under
android_demo/native/third_party) against the Python `tokenizers` library, which the Python runtime uses.

Most checks drive `mtp_edge_text`, the runner's tokenizer without a model (built with the runner, same
cached build): the shipped pair's byte-level BPE on the held-out prompts, and a Gemma-style tokenizer
(spaces as U+2581, no pre-tokenizer, <0xNN> byte fallback, turn markers) written here with `tokenizers`.
One test generates from text on the shipped pair's bundle (the demo export the run shares, as
test_native_runner does), and the error tests use copies of the tiny bundle, which has no tokenizer.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from mtp_edge.export.bundle import ExportSettings
from mtp_edge.runtime.native import build, validate
from mtp_edge.runtime.tokenizer import TextCodec

K, CHUNK, MAX_SEQ = 3, 4, 40  # test_native_runner's tiny portable bundle (the same shared export)
SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "default_pair" / "target" / "tokenizer.json"

pytestmark = pytest.mark.native


@pytest.fixture(scope="session")
def runner() -> Path:
    return build.build_runner(progress=False)


@pytest.fixture(scope="session")
def text_tool(runner) -> Path:
    return runner.with_name("mtp_edge_text")


@pytest.fixture(scope="module")
def shipped_bundle(demo_cache) -> Path:
    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.shipped import default_pair_dir
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT

    return cached_bundle(default_pair_dir(), root=demo_cache, settings=DEMO_EXPORT)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dirs, shared_export) -> Path:
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable",
                                                   quantize="none"))


def run_text_tool(tool: Path | list[str], tokenizer: Path, requests: list[dict], env: dict | None = None) -> list[dict]:
    """Answers of mtp_edge_text (`tool`, or the argv that runs it, e.g. under qemu) to JSON requests."""
    argv = [str(tool)] if isinstance(tool, Path) else tool
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([*argv, str(tokenizer)], input=lines.encode(), capture_output=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]


def heldout_texts() -> list[str]:
    from mtp_edge.models.shipped import heldout_prompts

    return [p["text"] for p in heldout_prompts()]


def random_texts(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABC\n\t  .,;:'\"!?()[]{}<>=+-*/_\\0123456789éßø中文😀"
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 60))) for _ in range(n)]


def random_ids(seed: int, vocab: int, n: int) -> list[list[int]]:
    rnd = random.Random(seed)
    return [[rnd.randrange(vocab) for _ in range(rnd.randint(1, 30))] for _ in range(n)]


def assert_same_as_python(tool: Path | list[str], tokenizer: Path, texts: list[str], ids: list[list[int]],
                          env: dict | None = None) -> list[dict]:
    """Native encode of every text == Python's ids; native decode (streamed, joined) of those ids and of
    `ids` == Python's decode, byte for byte. Returns the decode answers."""
    codec = TextCodec(tokenizer)
    encoded = run_text_tool(tool, tokenizer, [{"encode": t} for t in texts], env)
    for text, got in zip(texts, encoded, strict=True):
        assert got["ids"] == codec.encode(text), repr(text)
    every = [codec.encode(t) for t in texts] + ids
    decoded = run_text_tool(tool, tokenizer, [{"decode": i} for i in every], env)
    for i, got in zip(every, decoded, strict=True):
        want = codec.decode(i)
        assert got["text"].encode() == want.encode(), i
        assert "".join(got["pieces"]) == got["text"] and len(got["pieces"]) == len(i) + 1
    return decoded


def test_shipped_tokenizer_matches_python(text_tool):
    """The shipped pair's byte-level BPE: the held-out prompts (source code) and random text with
    multi-byte characters encode to Python's ids; random ids (partial UTF-8 sequences included)
    decode to Python's text."""
    texts = heldout_texts() + random_texts(0, 150)
    assert_same_as_python(text_tool, SHIPPED_TOKENIZER, texts, random_ids(1, TextCodec(SHIPPED_TOKENIZER).tokenizer.get_vocab_size(), 150))


def test_streaming_holds_a_character_until_it_is_whole(text_tool):
    """A character split across byte-level tokens streams as nothing, then the whole character; an
    unfinished one at the end comes out as U+FFFD, as the Python decode gives it."""
    codec = TextCodec(SHIPPED_TOKENIZER)
    text = "naïve 日本語 😀!"
    ids = codec.encode(text)[1:]  # without BOS
    pieces = run_text_tool(text_tool, SHIPPED_TOKENIZER, [{"decode": ids}])[0]["pieces"]
    assert "".join(pieces) == text
    assert "" in pieces[:-1]  # some token ended inside a character and released nothing
    for piece in pieces:
        piece.encode("utf-8", "strict")  # every piece is whole UTF-8 (json.loads would have kept lone surrogates)
    # Cut the last multi-byte character short: the stream's finish() gives what Python gives.
    emoji = codec.encode("😀")[1:]
    assert len(emoji) > 1  # the emoji spans several tokens in this vocabulary
    cut = ids[:ids.index(emoji[0])] + emoji[:-1]
    got = run_text_tool(text_tool, SHIPPED_TOKENIZER, [{"decode": cut}])[0]
    assert got["text"] == codec.decode(cut) and got["text"].endswith("\ufffd") and got["pieces"][-1] == "\ufffd"


def gemma_style_tokenizer(path: Path) -> Path:
    """A small Gemma-style tokenizer.json: SentencePiece-like BPE (spaces as U+2581, no pre-tokenizer),
    <0xNN> byte-fallback tokens in the model vocabulary, turn markers as added tokens, BOS by template."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    corpus = ["The quick brown fox jumps over the lazy dog.", "Speculative decoding drafts tokens and verifies them.",
              "Hello world, hello there.", "Café au lait, crème brûlée.", "def main():\n    return 42\n"] * 20
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok.train_from_iterator(corpus, BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    doc = json.loads(tok.to_str())
    assert doc["pre_tokenizer"] is None
    vocab = doc["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    doc["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def test_gemma_style_tokenizer_matches_python(text_tool, tmp_path):
    tokenizer = gemma_style_tokenizer(tmp_path / "tokenizer.json")
    codec = TextCodec(tokenizer)
    chat = "<start_of_turn>user\nHello wörld 😀 中文<end_of_turn>\n<start_of_turn>model\n"
    ids = codec.encode(chat)
    names = [codec.tokenizer.id_to_token(i) for i in ids]
    assert names[:2] == ["<bos>", "<start_of_turn>"] and "<0xF0>" in names  # BOS, a turn marker, byte fallback
    texts = [chat, "Ωmega  two  spaces", "x", "ü", "  ", "<end_of_turn><end_of_turn>"] + random_texts(2, 100)
    decoded = assert_same_as_python(text_tool, tokenizer, texts, random_ids(3, codec.tokenizer.get_vocab_size(), 100))
    assert decoded[0]["text"] == "<bos>" + chat


@pytest.mark.xdist_group("shipped-demo")  # the demo test's bundle: on its worker, after it is exported
def test_text_generation_on_the_shipped_pair(runner, shipped_bundle):
    """A text prompt through the runner: the prompt ids Python encodes, the new ids decoded to Python's
    text; the CLI's --prompt streams the same text, and --json carries ids and text."""
    codec = TextCodec(SHIPPED_TOKENIZER)
    prompts = heldout_texts()[:3]
    requests = [{"prompt": p, "k": 4, "max_new_tokens": 32} for p in prompts]
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([str(runner), str(shipped_bundle)], input=lines.encode(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    for prompt, result in zip(prompts, results, strict=True):
        assert result["prompt_tokens"] == codec.encode(prompt)
        assert result["text"].encode() == codec.decode(result["tokens"]).encode()
    # The same greedy generation from ids: the text changed nothing about the tokens.
    by_ids = validate.run_requests(shipped_bundle, [validate.request(codec.encode(prompts[0]), k=4, max_new_tokens=32)],
                                   runner=runner)[0]
    assert by_ids.tokens == results[0]["tokens"]
    flags = ["--prompt", prompts[0], "--k", "4", "--max-new-tokens", "32"]
    streamed = subprocess.run([str(runner), str(shipped_bundle), *flags], capture_output=True, timeout=300)
    assert streamed.returncode == 0 and streamed.stderr == b"", streamed.stderr
    assert streamed.stdout.decode() == results[0]["text"] + "\n"
    as_json = json.loads(subprocess.run([str(runner), str(shipped_bundle), *flags, "--json"], capture_output=True,
                                        timeout=300, check=True).stdout)
    assert (as_json["prompt_tokens"], as_json["tokens"], as_json["text"]) == (
        results[0]["prompt_tokens"], results[0]["tokens"], results[0]["text"])


def _error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines  # one line, no log noise, no crash
    return lines[0]


@pytest.mark.xdist_group("tiny-portable")  # test_native_runner's tiny bundle, on the worker that exports it
def test_text_errors_name_the_problem(runner, text_tool, tiny_bundle, tmp_path):
    flags = ["--prompt", "Hello", "--max-new-tokens", "4"]
    # The tiny pair's checkpoint had no tokenizer.json: text is refused, ids still work.
    message = _error(subprocess.run([str(runner), str(tiny_bundle), *flags], capture_output=True, timeout=120))
    assert "no tokenizer.json" in message and "token ids" in message
    ok = subprocess.run([str(runner), str(tiny_bundle)], input=b'{"prompt": [2, 5], "max_new_tokens": 2}\n',
                        capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # A bundle whose manifest lists a tokenizer.json that was changed afterwards.
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy(SHIPPED_TOKENIZER, bundle / "tokenizer.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"]["tokenizer"] = {"file": "tokenizer.json", "bytes": 5, "sha256": "0" * 64}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    message = _error(subprocess.run([str(runner), str(bundle), *flags], capture_output=True, timeout=120))
    assert "tokenizer.json was modified after export" in message
    # Malformed and unsupported tokenizer files, through the tokenizer alone.
    cases = {"not json {": "not valid JSON",
             json.dumps({"model": {"type": "Unigram", "vocab": []}}): "model type Unigram is not supported",
             json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}): "could not load it",
             json.dumps({"added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "Metaspace"},
                         "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}): "Metaspace"}
    for text, expected in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        message = _error(subprocess.run([str(text_tool), str(bad)], input=b"", capture_output=True, timeout=60))
        assert expected in message and str(bad) in message, message
    # A character the vocabulary lacks, with neither byte fallback nor unk_token: refused, not dropped.
    plain = json.loads(SHIPPED_TOKENIZER.read_text())
    plain["pre_tokenizer"] = None
    plain["decoder"] = {"type": "Fuse"}
    bad = tmp_path / "plain.json"
    bad.write_text(json.dumps(plain))
    done = subprocess.run([str(text_tool), str(bad)], input=json.dumps({"encode": "日本"}).encode() + b"\n",
                          capture_output=True, timeout=60)
    assert "cannot be encoded" in _error(done)
