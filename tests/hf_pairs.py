"""Random Gemma 4 target + assistant pairs built and saved by transformers itself.

The project's loader is then exercised on files it did not write. Every parameter is
perturbed away from its init (norm scales, layer scalars, a shuffled token ordering) so that a
wrong norm or scale cannot hide behind weights of exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Gemma4AssistantForCausalLM,
    Gemma4Config,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4VisionConfig,
)

from mtp_edge.models.config import preset_hf_configs

# Variants that together cover the features the parity checks must see.
VARIANTS = {
    # PLE, KV sharing + double-wide MLP, k_eq_v, full layers with other head_dim and KV heads, softcap.
    "tiny": {},
    # PLE off, no KV sharing (store layers still exist for the drafter), no softcap, GQA 2:1.
    "plain": dict(
        target=dict(hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, num_kv_shared_layers=0,
                    use_double_wide_mlp=False, attention_k_eq_v=False, final_logit_softcapping=None,
                    num_key_value_heads=2, sliding_window=6),
        drafter=dict(attention_k_eq_v=False, num_key_value_heads=2, sliding_window=6),
        centroids=False,
    ),
}


@dataclass
class HFPair:
    target: Gemma4ForCausalLM
    drafter: Gemma4AssistantForCausalLM


def _perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.15)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=generator))


def make_hf_pair(variant: str = "tiny", seed: int = 0) -> HFPair:
    spec = VARIANTS[variant]
    target_cfg, drafter_cfg = preset_hf_configs("tiny")
    for key, value in spec.get("target", {}).items():
        setattr(target_cfg, key, value)
    for key, value in spec.get("drafter", {}).items():
        setattr(drafter_cfg.text_config, key, value)
    if variant != "tiny":  # re-run __post_init__ so per-layer overrides follow the edits
        target_cfg = type(target_cfg)(**{k: v for k, v in target_cfg.to_dict().items() if k not in ("transformers_version", "per_layer_config", "model_type")}, global_head_dim=32, num_global_key_value_heads=2 if spec.get("target", {}).get("attention_k_eq_v", True) else None)
        text = type(drafter_cfg.text_config)(**{k: v for k, v in drafter_cfg.text_config.to_dict().items() if k not in ("transformers_version", "per_layer_config", "model_type")}, global_head_dim=32)
        drafter_cfg = type(drafter_cfg)(text_config=text, backbone_hidden_size=drafter_cfg.backbone_hidden_size,
                                        use_ordered_embeddings=spec.get("centroids", True),
                                        num_centroids=drafter_cfg.num_centroids,
                                        centroid_intermediate_top_k=drafter_cfg.centroid_intermediate_top_k)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    target = Gemma4ForCausalLM(target_cfg).eval()
    drafter = Gemma4AssistantForCausalLM(drafter_cfg).eval()
    _perturb(target, g)
    _perturb(drafter, g)
    if drafter.masked_embedding is not None:
        drafter.masked_embedding.token_ordering.copy_(torch.randperm(drafter_cfg.text_config.vocab_size, generator=g))
    return HFPair(target, drafter)


def save_pair(pair: HFPair, root: Path, *, multimodal: bool = False, shard: bool = False) -> tuple[Path, Path]:
    """Write the pair with save_pretrained; multimodal wraps the target in Gemma4ForConditionalGeneration."""
    target_dir, drafter_dir = Path(root) / "target", Path(root) / "drafter"
    kwargs = {"max_shard_size": "40KB"} if shard else {}
    if multimodal:
        vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, head_dim=16)
        config = Gemma4Config(text_config=pair.target.config.to_dict(), vision_config=vision.to_dict())
        mm = Gemma4ForConditionalGeneration(config).eval()
        mm.model.language_model.load_state_dict(pair.target.model.state_dict())
        mm.save_pretrained(target_dir, **kwargs)
    else:
        pair.target.save_pretrained(target_dir, **kwargs)
    pair.drafter.save_pretrained(drafter_dir, **kwargs)
    return target_dir, drafter_dir
