"""The write side: balanced token clusters, transformers configs, and checkpoint folders that
both transformers and the project's loader read back."""

import json
import os
import time
from dataclasses import replace

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import Gemma4AssistantForCausalLM, Gemma4ForCausalLM

from mtp_edge.models import CheckpointError, load_drafter, load_target
from mtp_edge.models.training.clusters import balanced_kmeans
from mtp_edge.models.config import (
    generation_eos_ids,
    hf_config_to_drafter,
    hf_config_to_target,
    preset,
    target_config_from_folder,
)
from mtp_edge.models.hf_format import (
    decoder_to_hf_text_config,
    drafter_to_hf_config,
    save_drafter,
    save_target,
)

# --------------------------------------------------------------------------- clusters


def _planted(num_clusters=16, per=32, dim=24, noise=0.05, seed=0):
    """Rows around num_clusters random directions, with varied norms, shuffled: (rows, true cluster, directions)."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(num_clusters, dim, generator=g), dim=1)
    rows = means.repeat_interleave(per, 0) + noise * torch.randn(num_clusters * per, dim, generator=g)
    rows = rows * (0.5 + 1.5 * torch.rand(num_clusters * per, 1, generator=g))
    perm = torch.randperm(num_clusters * per, generator=g)
    return rows[perm], torch.arange(num_clusters).repeat_interleave(per)[perm], means


@pytest.mark.parametrize("vocab,clusters,dim", [(512, 16, 8), (16384, 512, 64)])
def test_clusters_partition_the_vocabulary_evenly(vocab, clusters, dim):
    rows = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(1))
    ordering, centroids = balanced_kmeans(rows, clusters, iters=3)
    assert ordering.dtype == torch.long and ordering.shape == (vocab,)
    assert torch.equal(ordering.sort().values, torch.arange(vocab))  # every token exactly once
    assert centroids.shape == (clusters, dim)
    members = ordering.view(clusters, -1)  # equal sizes by construction of the view
    assert torch.allclose(centroids, rows[members].mean(1), atol=1e-5)


def test_clusters_are_deterministic_given_seed():
    rows = torch.randn(1024, 16, generator=torch.Generator().manual_seed(2))
    a, b = balanced_kmeans(rows, 32, seed=5), balanced_kmeans(rows, 32, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_clusters_recover_planted_structure():
    rows, truth, means = _planted()
    ordering, centroids = balanced_kmeans(rows, 16)
    labels = truth[ordering.view(16, -1)]
    assert (labels == labels[:, :1]).all(), "a cluster mixes planted groups"
    assert labels[:, 0].unique().numel() == 16
    # What the centroid head needs: a hidden state's best token lies in its best-scoring cluster.
    for h in means * 4:
        best_token = int((rows @ h).argmax())
        best_cluster = int((centroids @ h).argmax())
        assert best_token in ordering.view(16, -1)[best_cluster]


def test_clusters_reject_uneven_split():
    with pytest.raises(CheckpointError, match="equal clusters"):
        balanced_kmeans(torch.randn(100, 4), 16)
    with pytest.raises(ValueError):
        balanced_kmeans(torch.randn(100, 4), 0)


@pytest.mark.skipif(not os.environ.get("MTP_EDGE_SLOW"), reason="E2B-scale clustering; set MTP_EDGE_SLOW=1")
def test_clusters_at_e2b_scale():
    rows = torch.randn(262144, 256, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    ordering, centroids = balanced_kmeans(rows, 2048, iters=3)
    print(f"balanced_kmeans 262144x256 -> 2048, 3 iters: {time.perf_counter() - start:.1f} s")
    assert torch.equal(ordering.sort().values, torch.arange(262144))
    assert centroids.shape == (2048, 256)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["e2b", "e4b", "tiny"])
def test_preset_configs_round_trip(name):
    pair = preset(name)
    assert hf_config_to_target(decoder_to_hf_text_config(pair.target)) == pair.target
    assert hf_config_to_drafter(drafter_to_hf_config(pair.drafter)) == pair.drafter


def test_plain_variant_config_round_trips(hf_plain):
    cfg = hf_config_to_target(hf_plain.target.config)
    assert hf_config_to_target(decoder_to_hf_text_config(cfg)) == cfg
    untied = replace(cfg, tie_word_embeddings=False, eos_token_ids=(1, 106), final_logit_softcap=None)
    assert hf_config_to_target(decoder_to_hf_text_config(untied)) == untied


def test_unrepresentable_configs_are_refused():
    tiny = preset("tiny").target
    with pytest.raises(CheckpointError, match="attention_k_eq_v"):
        decoder_to_hf_text_config(replace(tiny, attention_k_eq_v=False))
    with pytest.raises(CheckpointError, match="last layer"):
        decoder_to_hf_text_config(replace(tiny, layer_types=tiny.layer_types[:-1] + ("sliding_attention",)))
    with pytest.raises(CheckpointError, match="one pair per layer type"):
        decoder_to_hf_text_config(replace(tiny, head_dims=(16, 8, 32, 16, 32)))


# --------------------------------------------------------------------------- checkpoints


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


@pytest.fixture(scope="module")
def resaved(hf_tiny, tiny_dirs, tmp_path_factory):
    """The transformers-saved tiny pair, loaded by the project and saved again in fp32."""
    target = load_target(tiny_dirs[0], max_seq_len=32)
    drafter = load_drafter(tiny_dirs[1], target=target.cfg)
    root = tmp_path_factory.mktemp("resaved")
    tok = root / "src-tokenizer.json"
    tok.write_text('{"version": "1.0"}')
    t_dir = save_target(target, root / "target", dtype=torch.float32, tokenizer_file=tok, eos_token_ids=[1, 106])
    d_dir = save_drafter(drafter, root / "drafter", dtype=torch.float32)
    return target, drafter, t_dir, d_dir


def test_saved_keys_match_transformers(tiny_dirs, resaved):
    _, _, t_dir, d_dir = resaved
    assert _keys(t_dir) == _keys(tiny_dirs[0])
    assert _keys(d_dir) == _keys(tiny_dirs[1])
    assert _keys(d_dir)["masked_embedding.token_ordering"][0] == "I64"
    with safe_open(str(t_dir / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_saved_folder_files(resaved):
    target, _, t_dir, d_dir = resaved
    assert sorted(os.listdir(t_dir)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    assert (t_dir / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert generation_eos_ids(t_dir) == (1, 106)
    assert target_config_from_folder(t_dir) == replace(target.cfg, eos_token_ids=(1, 106))
    assert json.loads((t_dir / "config.json").read_text())["architectures"] == ["Gemma4ForCausalLM"]
    assert json.loads((d_dir / "config.json").read_text())["architectures"] == ["Gemma4AssistantForCausalLM"]
    assert not [p for p in t_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


@torch.no_grad()
def test_resaved_target_loads_in_transformers_and_ours(hf_tiny, resaved):
    _, _, t_dir, _ = resaved
    tokens = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(9))
    ref = hf_tiny.target(tokens).logits
    hf_again = Gemma4ForCausalLM.from_pretrained(t_dir, dtype=torch.float32).eval()
    assert (hf_again(tokens).logits - ref).abs().max() <= 1e-5
    ours, _ = load_target(t_dir, max_seq_len=32)(tokens, torch.tensor([0]))
    assert (ours - ref).abs().max() <= 1e-4


@torch.no_grad()
def test_resaved_drafter_loads_in_transformers_and_ours(hf_tiny, resaved):
    target, drafter, _, d_dir = resaved
    hf_again = Gemma4AssistantForCausalLM.from_pretrained(d_dir, dtype=torch.float32).eval()
    want = hf_tiny.drafter.state_dict()
    got = hf_again.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    ours = load_drafter(d_dir, target=target.cfg)
    for name, tensor in drafter.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    # One draft step of the reloaded transformers drafter against the project's.
    tokens = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(10))
    ref = hf_tiny.target(tokens, output_hidden_states=True, return_shared_kv_states=True, use_cache=False)
    _, hidden = target(tokens, torch.tensor([0]))
    n = tokens.shape[1]
    out = hf_again(
        inputs_embeds=torch.cat([hf_tiny.target.model.embed_tokens(tokens[:, -1:]), ref.hidden_states[-1][:, -1:]], -1),
        position_ids=torch.tensor([[n]]), shared_kv_states=ref.shared_kv_states,
    )
    h, projected = ours(target.embed(tokens[:, -1:]), hidden[:, -1:], torch.tensor([n]), torch.tensor([n]), target.store_kv())
    assert (out.logits - ours.scattered_logits(h)).abs().max() <= 1e-4
    assert (out.last_hidden_state - projected).abs().max() <= 1e-4


def test_bf16_save_halves_the_file(resaved, tmp_path):
    target, drafter, t_dir, d_dir = resaved
    t16, d16 = save_target(target, tmp_path / "t16"), save_drafter(drafter, tmp_path / "d16")
    for full, half in ((t_dir, t16), (d_dir, d16)):
        ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
        assert 0.45 < ratio < 0.56, ratio
        assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    dtypes = {dt for dt, _ in _keys(t16).values()}
    assert dtypes == {"BF16"}
    assert _keys(d16)["masked_embedding.token_ordering"][0] == "I64"
    reloaded = load_target(t16, max_seq_len=32, dtype=torch.bfloat16)
    assert torch.equal(reloaded.embed_tokens.weight, target.embed_tokens.weight.to(torch.bfloat16))


def test_large_saves_are_sharded_like_save_pretrained(resaved, tmp_path, monkeypatch):
    """Above SHARD_BYTES a save writes shards and an index (transformers and our loader read both)."""
    from mtp_edge.models import hf_format

    target, _, t_dir, _ = resaved
    monkeypatch.setattr(hf_format, "SHARD_BYTES", 64 << 10)
    out = save_target(target, tmp_path / "sharded", dtype=torch.float32)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(_keys(t_dir))
    reloaded = load_target(out, max_seq_len=32)
    for (name, a), b in zip(target.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    hf = Gemma4ForCausalLM.from_pretrained(out)
    assert torch.equal(hf.model.embed_tokens.weight, target.embed_tokens.weight)


def _failing_save_file(*args, **kwargs):
    raise OSError("disk full")


def test_failed_save_leaves_no_folder(resaved, tmp_path, monkeypatch):
    target = resaved[0]
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_target(target, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_existing_checkpoint(resaved, tmp_path, monkeypatch):
    target = resaved[0]
    out = save_target(target, tmp_path / "out", dtype=torch.float32)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", _failing_save_file)
        with pytest.raises(OSError):
            save_target(target, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    save_target(target, out)  # a successful save replaces it
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(resaved, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        save_target(resaved[0], tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
