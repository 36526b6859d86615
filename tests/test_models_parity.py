"""Acceptance checks 1-3 of the foundations: parity with transformers 5.24.0, through the loader."""

import pytest
import torch
from transformers import DynamicCache

from hf_pairs import save_pair
from mtp_edge.models import load_pair

TOL = 1e-4
LAYOUTS = [  # (variant, multimodal, sharded): every layout goes through the project's loader
    ("tiny", False, False),
    ("tiny", True, False),
    ("plain", False, True),
    ("plain", True, True),
]


def _hf(request, variant):
    return request.getfixturevalue(f"hf_{variant}")


@pytest.fixture(params=LAYOUTS, ids=lambda p: f"{p[0]}-{'mm' if p[1] else 'text'}-{'sharded' if p[2] else 'single'}")
def loaded(request, tmp_path):
    variant, multimodal, sharded = request.param
    hf = _hf(request, variant)
    target_dir, drafter_dir = save_pair(hf, tmp_path, multimodal=multimodal, shard=sharded)
    target, drafter = load_pair(target_dir, drafter_dir, max_seq_len=48)
    return hf, target, drafter


def test_layout_covers_features(hf_tiny, hf_plain):
    t, p = hf_tiny.target.config, hf_plain.target.config
    assert t.hidden_size_per_layer_input and not p.hidden_size_per_layer_input
    assert t.num_kv_shared_layers and t.use_double_wide_mlp and t.final_logit_softcapping
    full = t.layer_types.index("full_attention")
    assert t.per_layer_config[full].head_dim != t.per_layer_config[0].head_dim
    assert t.per_layer_config[full].num_key_value_heads != t.per_layer_config[0].num_key_value_heads


@torch.no_grad()
def test_prefill_logits_and_hidden_match(loaded):
    hf, target, _ = loaded
    tokens = torch.randint(0, target.cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(3))
    assert tokens.shape[1] > 3 * target.cfg.sliding_window
    ref = hf.target(tokens, output_hidden_states=True)
    logits, hidden = target(tokens, torch.tensor([0]))
    assert (ref.logits - logits).abs().max() <= TOL
    assert (ref.hidden_states[-1] - hidden).abs().max() <= TOL


@torch.no_grad()
def test_decode_token_by_token_past_window(loaded):
    hf, target, _ = loaded
    tokens = torch.randint(0, target.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(4))
    cache = DynamicCache(config=hf.target.config)
    ref = hf.target(tokens[:, :4], cache=cache, use_cache=True).logits
    ours, _ = target(tokens[:, :4], torch.tensor([0]))
    assert (ref - ours).abs().max() <= TOL
    for pos in range(4, tokens.shape[1]):
        ref = hf.target(tokens[:, pos:pos + 1], cache=cache, use_cache=True).logits
        ours, _ = target(tokens[:, pos:pos + 1], torch.tensor([pos]))
        assert (ref - ours).abs().max() <= TOL, f"position {pos}"


@torch.no_grad()
def test_verify_chunks_after_rollback_match_full_sequence(loaded):
    """Chunks of K+1 that overwrite rolled-back positions give the full-sequence logits."""
    hf, target, _ = loaded
    tokens = torch.randint(0, target.cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(5))
    ref = hf.target(tokens).logits
    garbage = torch.randint(0, target.cfg.vocab_size, (1, 4), generator=torch.Generator().manual_seed(6))
    pos = 0
    while pos < tokens.shape[1]:
        target(garbage, torch.tensor([pos]))  # a rejected speculative chunk, later overwritten
        chunk = tokens[:, pos:pos + 4]
        logits, _ = target(chunk, torch.tensor([pos]))
        assert (ref[:, pos:pos + chunk.shape[1]] - logits).abs().max() <= TOL
        pos += 3  # accept 3 of 4: the last row is rewritten by the next chunk


@torch.no_grad()
def test_logits_at_selects_positions(loaded):
    _, target, _ = loaded
    tokens = torch.randint(0, target.cfg.vocab_size, (1, 9))
    all_logits, _ = target(tokens, torch.tensor([0]))
    last, _ = target(tokens, torch.tensor([0]), logits_at=torch.tensor([6]))
    assert torch.allclose(last[:, 0], all_logits[:, 6], atol=1e-5)


@torch.no_grad()
def test_drafter_matches_reference(loaded):
    """Same target K/V, token and hidden: logits, projected hidden and greedy tokens over 3 chained steps."""
    hf, target, drafter = loaded
    length = 30
    tokens = torch.randint(0, target.cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(7))
    ref = hf.target(tokens, output_hidden_states=True, return_shared_kv_states=True, use_cache=False)
    _, hidden = target(tokens, torch.tensor([0]))
    window = target.cfg.sliding_window
    for validated in (3, window, window + 2, length - 2):  # shorter and longer than the sliding window
        kv = {k: (a[:, :, :validated], b[:, :, :validated]) for k, (a, b) in ref.shared_kv_states.items()}
        token = tokens[:, validated - 1:validated]
        ref_h, our_h = ref.hidden_states[-1][:, validated - 1:validated], hidden[:, validated - 1:validated]
        for step in range(3):
            out = hf.drafter(
                inputs_embeds=torch.cat([hf.target.model.embed_tokens(token), ref_h], -1),
                position_ids=torch.tensor([[validated]]), shared_kv_states=kv,
            )
            h, projected = drafter(target.embed(token), our_h, torch.tensor([validated]), torch.tensor([validated]), target.store_kv())
            logits = drafter.scattered_logits(h)
            assert (out.logits - logits).abs().max() <= TOL, (validated, step)
            assert (out.last_hidden_state - projected).abs().max() <= TOL
            ids, cand_logits = drafter.candidates(h)
            greedy = ids.gather(-1, cand_logits.argmax(-1, keepdim=True))
            assert torch.equal(greedy, out.logits.argmax(-1, keepdim=True)), (validated, step)
            token, ref_h, our_h = greedy[..., 0], out.last_hidden_state, projected


def test_clustered_head_never_scores_the_vocabulary(hf_tiny, tiny_dirs):
    _, drafter = load_pair(*tiny_dirs, max_seq_len=16)
    cfg = drafter.cfg
    assert cfg.use_ordered_embeddings
    ids, logits = drafter.candidates(torch.randn(1, 1, cfg.decoder.hidden_size))
    assert ids.shape[-1] == logits.shape[-1] == cfg.num_candidates < cfg.decoder.vocab_size
    assert ids.unique().numel() == cfg.num_candidates  # clusters are disjoint


@torch.no_grad()
def test_batched_training_pass_matches_reference(loaded):
    """The cache-free pass (a NoCache view, batched) gives the reference logits, hidden and store K/V."""
    hf, target, _ = loaded
    tokens = torch.randint(0, target.cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(8))
    ref = hf.target(tokens, output_hidden_states=True, return_shared_kv_states=True, use_cache=False)
    cache_free = target.with_cache("none")
    hidden, kv = cache_free.run(tokens, 0)
    logits, store = cache_free.logits(hidden), cache_free.store_kv(kv)
    assert (ref.logits - logits).abs().max() <= TOL
    assert (ref.hidden_states[-1] - hidden).abs().max() <= TOL
    for layer_type, (k, v) in ref.shared_kv_states.items():
        assert (store[layer_type][0] - k).abs().max() <= TOL and (store[layer_type][1] - v).abs().max() <= TOL
