"""optimum integration: `optimum-cli export mtp-edge` and MtpEdgeModelForCausalLM, on a random tiny pair
that transformers wrote, held to transformers' own generate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TextStreamer

from mtp_edge.export.bundle import read_manifest
from mtp_edge.models.errors import CheckpointError
from mtp_edge.runtime.optimum.model import MtpEdgeModelError, MtpEdgeModelForCausalLM

BIN = Path(sys.executable).parent
# test_export_onnx's bundle (the run's shared tiny ONNX export), so that the comparison costs one export:
# an ONNX export takes seconds where a .pte takes minutes, and the front door under test (the flags
# parsed into ExportSettings, then write_bundle) is the same for both formats.
EXPORT_ARGS = ["--format", "onnx", "--quantize", "none", "--max-seq-len", "40", "--k", "3", "--prefill-chunk", "4"]
SHIPPED_DRAFTER = Path(__file__).resolve().parents[1] / "models" / "default_pair" / "drafter"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cli_bundles(tiny_dirs, tmp_path_factory, shared_export):
    """The same export through optimum-cli and through write_bundle, what `mtp-edge export` runs with the
    ExportSettings its flags make (test_export_onnx runs that command itself)."""
    from mtp_edge.export.settings import ExportSettings

    target, drafter = tiny_dirs
    root = tmp_path_factory.mktemp("optimum_cli")
    through_optimum = _cli("optimum-cli", "export", "mtp-edge", "--model", str(target), "--drafter", str(drafter),
                           *EXPORT_ARGS, str(root / "optimum"))
    assert through_optimum.returncode == 0, through_optimum.stderr[-3000:]
    settings = ExportSettings(k=3, max_seq_len=40, prefill_chunk=4, formats="onnx", quantize="none")
    return root / "optimum", shared_export(tiny_dirs, settings)


# Under pytest-xdist the tests of one of these two fixtures run on one worker, which makes it once.
CLI_BUNDLES = pytest.mark.xdist_group("tiny-onnx")  # test_export_onnx's group: its bundle
EXPORTED = pytest.mark.xdist_group("optimum-exported")


@pytest.fixture(scope="module")
def exported(tiny_dirs):
    target, drafter = tiny_dirs
    return MtpEdgeModelForCausalLM.from_pretrained(target, drafter=drafter, export=True, format="pte", quantize="none",
                                                   max_seq_len=64, k=3, prefill_chunk=8, pte_backend="portable",
                                                   draft_chains="none", progress=False)


def test_optimum_cli_lists_the_exporter():
    help_text = _cli("optimum-cli", "export", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "mtp-edge" in help_text.stdout
    own = _cli("optimum-cli", "export", "mtp-edge", "--help")
    assert own.returncode == 0 and "--drafter" in own.stdout and "OUTPUT_DIR" in own.stdout


@CLI_BUNDLES
def test_optimum_cli_writes_the_bundle_mtp_edge_export_writes(cli_bundles):
    through_optimum, through_mtp_edge = (read_manifest(b) for b in cli_bundles)
    assert through_optimum == through_mtp_edge  # every field, the artifacts' sha256 included
    assert {"onnx_target", "onnx_drafter", "hf_config"} <= set(through_optimum.artifacts)
    for entry in through_optimum.artifacts.values():
        assert (cli_bundles[0] / entry.file).read_bytes() == (cli_bundles[1] / entry.file).read_bytes()


def test_optimum_cli_errors_are_one_line(tiny_dirs, tmp_path):
    target, _ = tiny_dirs
    result = _cli("optimum-cli", "export", "mtp-edge", "--model", str(target), "--drafter", str(SHIPPED_DRAFTER),
                  "--format", "pte", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "optimum-cli export mtp-edge: error:" in result.stderr and "trained for another target" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@EXPORTED
@pytest.mark.parametrize("prompt_len", [5, 13])
def test_generate_equals_transformers_generate(exported, hf_tiny, prompt_len):
    prompt = torch.randint(0, hf_tiny.target.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    expected = hf_tiny.target.generate(prompt, do_sample=False, max_new_tokens=30)
    actual = exported.generate(prompt, do_sample=False, max_new_tokens=30)
    assert actual.dtype == torch.long and actual.shape == expected.shape
    assert torch.equal(actual, expected)
    stats = exported.last_stats[0]
    # Unset num_assistant_tokens: the policy picks each round's draft length (plain rounds included).
    assert stats.new_tokens == 30 and stats.policy is not None and sum(stats.k_histogram.values()) == stats.rounds
    fixed = exported.generate(prompt, do_sample=False, max_new_tokens=30, num_assistant_tokens=exported.model.max_draft)
    assert torch.equal(fixed, expected)
    stats = exported.last_stats[0]
    assert stats.new_tokens == 30 and stats.drafted > 0  # it drafted: speculative, not plain decoding


@EXPORTED
def test_generate_batch_with_left_padding_matches_rows_alone(exported, hf_tiny):
    short, long = [5, 17, 2, 9], [3, 1, 4, 1, 5, 9, 2]
    pad = 0
    batch = torch.tensor([[pad] * 3 + short, long])
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    out = exported.generate(batch, attention_mask=mask, max_new_tokens=12, pad_token_id=pad)
    assert out.shape[0] == 2 and torch.equal(out[:, :7], batch)
    for row, prompt in zip(out, (short, long)):
        alone = hf_tiny.target.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12)[0, len(prompt):]
        assert row[7:7 + len(alone)].tolist() == alone.tolist()
    assert len(exported.last_stats) == 2


@EXPORTED
def test_num_assistant_tokens_zero_is_target_only_and_streamer_sees_every_token(exported, capsys):
    prompt = torch.tensor([[7, 11, 13, 17, 19]])
    speculative = exported.generate(prompt, max_new_tokens=20)
    plain = exported.generate(prompt, max_new_tokens=20, num_assistant_tokens=0)
    assert torch.equal(speculative, plain) and exported.last_stats[0].drafted == 0

    class Collect(TextStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            self.chunks.append("end")

    streamer = Collect()
    streamed = exported.generate(prompt, max_new_tokens=20, streamer=streamer)
    assert streamer.chunks[0] == prompt[0].tolist() and streamer.chunks[-1] == "end"
    assert [t for chunk in streamer.chunks[1:-1] for t in chunk] == streamed[0, 5:].tolist()


@EXPORTED
def test_seeded_sampling_repeats_and_follows_torch_manual_seed(exported):
    prompt = torch.tensor([[2, 3, 5, 7]])
    args = dict(do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=16)
    assert torch.equal(exported.generate(prompt, seed=5, **args), exported.generate(prompt, seed=5, **args))
    torch.manual_seed(123)
    first = exported.generate(prompt, **args)
    torch.manual_seed(123)
    assert torch.equal(first, exported.generate(prompt, **args))


@EXPORTED
def test_save_pretrained_then_from_pretrained_gives_the_same_tokens(exported, tmp_path):
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    before = exported.generate(prompt, max_new_tokens=24)
    exported.save_pretrained(tmp_path / "bundle")
    assert read_manifest(tmp_path / "bundle") == exported.manifest
    reloaded = MtpEdgeModelForCausalLM.from_pretrained(tmp_path / "bundle")
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=24), before)
    assert reloaded.config.vocab_size == exported.config.vocab_size and reloaded.config.model_type == "gemma4_text"
    logits = reloaded(prompt).logits
    assert logits.shape == (1, 6, reloaded.config.vocab_size)
    assert logits[0, -1].argmax().item() == before[0, 6].item()


@CLI_BUNDLES
def test_onnx_backend_of_a_cli_bundle(cli_bundles, hf_tiny):
    model = MtpEdgeModelForCausalLM.from_pretrained(cli_bundles[0], backend="onnx")
    prompt = torch.tensor([[9, 8, 7, 6, 5, 4]])
    expected = hf_tiny.target.generate(prompt, do_sample=False, max_new_tokens=20)
    assert model.backend_name == "onnx" and torch.equal(model.generate(prompt, max_new_tokens=20), expected)


@EXPORTED
def test_wrong_use_is_a_clear_error(tiny_dirs, exported, tmp_path):
    target, drafter = tiny_dirs
    with pytest.raises(CheckpointError, match="trained for another target"):
        MtpEdgeModelForCausalLM.from_pretrained(target, drafter=SHIPPED_DRAFTER, export=True, progress=False)
    with pytest.raises(MtpEdgeModelError, match="not an mtp-edge bundle.*export=True"):
        MtpEdgeModelForCausalLM.from_pretrained(target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtpEdgeModelError, match="not an mtp-edge bundle"):
        MtpEdgeModelForCausalLM.from_pretrained(tmp_path / "empty")
    with pytest.raises(MtpEdgeModelError, match="not a local folder"):
        MtpEdgeModelForCausalLM.from_pretrained("google/gemma-4-E2B-it")
    with pytest.raises(MtpEdgeModelError, match="needs drafter"):
        MtpEdgeModelForCausalLM.from_pretrained(target, export=True)
    with pytest.raises(MtpEdgeModelError, match="already an mtp-edge bundle"):
        MtpEdgeModelForCausalLM.from_pretrained(exported.bundle_dir, export=True, drafter=drafter)
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(MtpEdgeModelError, match="num_beams=4"):
        exported.generate(prompt, num_beams=4)
    with pytest.raises(MtpEdgeModelError, match="unexpected argument"):
        exported.generate(prompt, max_new_tokenz=4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a bundle; refusing"):
        exported.save_pretrained(tmp_path / "other")
    with pytest.raises(MtpEdgeModelError, match="num_assistant_tokens=9.*0..3"):
        exported.generate(prompt, num_assistant_tokens=9)
