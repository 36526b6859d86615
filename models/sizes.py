"""Parameter counts, weight bytes, KV-cache bytes and per-step read bytes of a target and its drafter.

Everything is measured on the project's own modules built on the meta device (no memory, no
weights), so the figures follow the modules rather than a formula that could drift from them.
Byte figures are raw weight bytes: quantisation scales/zero points are not counted.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import FULL, SLIDING, DecoderConfig, DrafterConfig
from .drafter import Gemma4Drafter
from .target import Gemma4Target

BITS = {"fp32": 32, "bf16": 16, "int8": 8, "int4": 4}
KV_TOKENS = 1024  # "per 1k tokens"

# First match wins; a parameter that matches none is counted as "norms_other".
TARGET_GROUPS = (
    ("token_embedding", r"^embed_tokens\."),  # also the tied LM head: counted once
    ("lm_head", r"^lm_head\."),  # only when untied
    ("ple_table", r"^embed_tokens_per_layer\."),
    ("ple_projections", r"per_layer"),  # model projection + norm, and each layer's gate/projection/norm
    ("attention", r"\.self_attn\."),
    ("mlp", r"\.mlp\."),
)
DRAFTER_GROUPS = (
    ("lm_head", r"^(embed_tokens|lm_head)\."),
    ("centroid_head", r"^masked_embedding\."),
    ("projections", r"^(pre|post)_projection\."),
    ("layers", r"^layers\."),
)


def weight_bytes(params: int) -> dict[str, int]:
    return {name: (params * bits + 7) // 8 for name, bits in BITS.items()}


def _entry(params: int) -> dict:
    return {"parameters": params, "bytes": weight_bytes(params)}


def group_counts(named_params, rules) -> dict[str, int]:
    """Parameter count per group from (name, tensor) pairs; an empty (tied) lm_head group is dropped."""
    counts = {name: 0 for name, _ in rules} | {"norms_other": 0}
    for pname, p in named_params:
        group = next((name for name, pattern in rules if re.search(pattern, pname)), "norms_other")
        counts[group] += p.numel()
    return {name: n for name, n in counts.items() if n or name != "lm_head"}


def _groups(model: nn.Module, rules) -> dict[str, dict]:
    return {name: _entry(n) for name, n in group_counts(model.named_parameters(), rules).items()}


def _step(parts: dict[str, int]) -> dict:
    total = sum(parts.values())
    return {"reads": {name: _entry(n) for name, n in parts.items()}, **_entry(total)}


def build_target(cfg: DecoderConfig, max_seq_len: int = 1) -> Gemma4Target:
    with torch.device("meta"):
        return Gemma4Target(cfg, max_seq_len=max_seq_len)


def build_drafter(cfg: DrafterConfig) -> Gemma4Drafter:
    with torch.device("meta"):
        return Gemma4Drafter(cfg)


def kv_cache_sizes(target: Gemma4Target) -> dict:
    """Measured from the cache buffers the target allocates (built with max_seq_len=KV_TOKENS)."""
    cfg = target.cfg
    per_type = {SLIDING: 0, FULL: 0}  # elements per token, K and V together
    for name, buf in target.cache.named_buffers():
        layer = int(name.split("_")[1])
        per_type[cfg.layer_types[layer]] += buf.numel() // target.max_seq_len
    per_token = sum(per_type.values())
    kv_bits = {k: BITS[k] for k in ("fp32", "bf16")}
    window = cfg.sliding_window
    return {
        "cache_layers": len(cfg.cache_layers),
        "sliding_cache_layers": sum(cfg.layer_types[i] == SLIDING for i in cfg.cache_layers),
        "full_cache_layers": sum(cfg.layer_types[i] == FULL for i in cfg.cache_layers),
        "elements_per_token": per_token,
        # What the runtime allocates: sliding layers keep full-length buffers (safe speculative rollback).
        "bytes_per_1k_tokens": {k: per_token * KV_TOKENS * b // 8 for k, b in kv_bits.items()},
        # A window-bounded cache instead: sliding layers stop growing at the window, only full layers grow.
        "sliding_window": window,
        "sliding_layers_bytes_at_window": {k: per_type[SLIDING] * window * b // 8 for k, b in kv_bits.items()},
        "full_layers_bytes_per_1k_tokens": {k: per_type[FULL] * KV_TOKENS * b // 8 for k, b in kv_bits.items()},
    }


def target_step_reads(target: Gemma4Target) -> dict:
    """One decode step: every weight once, one row per embedding table, the LM head whole for the logits."""
    parts = {"weights": 0, "embedding_rows": 0, "lm_head": 0}
    for module in target.modules():
        for p in module.parameters(recurse=False):
            if isinstance(module, nn.Embedding):
                parts["embedding_rows"] += p.shape[1]
            elif module is target.lm_head:
                parts["lm_head"] += p.numel()
            else:
                parts["weights"] += p.numel()
    if target.lm_head is None:
        parts["lm_head"] = target.embed_tokens.weight.numel()  # tied: the embedding read whole
    return _step(parts)


def drafter_step_reads(drafter: Gemma4Drafter) -> dict:
    """One draft step: drafter weights once, the target's embedding row of the last token, and the LM head.

    The clustered head reads the centroids whole but only its candidates' rows of the LM head.
    """
    cfg = drafter.cfg
    head = drafter.lm_head_weight
    lm_params = {id(p) for p in (drafter.embed_tokens.weight, head)}
    centroids = drafter.masked_embedding
    centroid_params = {id(p) for p in centroids.parameters()} if centroids is not None else set()
    parts = {"weights": 0, "centroid_head": 0, "lm_head": 0, "target_embedding_row": cfg.backbone_hidden_size}
    for p in drafter.parameters():
        if id(p) in centroid_params:
            parts["centroid_head"] += p.numel()
        elif id(p) not in lm_params:
            parts["weights"] += p.numel()
    rows = cfg.num_candidates if centroids is not None else head.shape[0]
    parts["lm_head"] = rows * head.shape[1]
    if centroids is None:
        del parts["centroid_head"]
    return _step(parts)


def target_sizes(cfg: DecoderConfig) -> dict:
    target = build_target(cfg, max_seq_len=KV_TOKENS)
    total = sum(p.numel() for p in target.parameters())
    return {
        "config": {
            "layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
            "ple_dim": cfg.ple_dim, "kv_shared_layers": cfg.num_kv_shared_layers,
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        **_entry(total),
        "groups": _groups(target, TARGET_GROUPS),
        "kv_cache": kv_cache_sizes(target),
        "decode_step": target_step_reads(target),
    }


def drafter_sizes(cfg: DrafterConfig) -> dict:
    drafter = build_drafter(cfg)
    d = cfg.decoder
    total = sum(p.numel() for p in drafter.parameters())
    return {
        "config": {
            "layers": d.num_layers, "hidden_size": d.hidden_size, "vocab_size": d.vocab_size,
            "backbone_hidden_size": cfg.backbone_hidden_size, "clustered_head": cfg.use_ordered_embeddings,
            "num_centroids": cfg.num_centroids, "centroid_top_k": cfg.centroid_top_k,
            "candidate_tokens": cfg.num_candidates if cfg.use_ordered_embeddings else d.vocab_size,
        },
        **_entry(total),
        "groups": _groups(drafter, DRAFTER_GROUPS),
        "draft_step": drafter_step_reads(drafter),
    }


def model_sizes(target: DecoderConfig | None = None, drafter: DrafterConfig | None = None) -> dict:
    """The JSON-serialisable report of `mtp-edge inspect`: a "target" and/or a "drafter" section."""
    out = {"byte_widths_bits": BITS}
    if target is not None:
        out["target"] = target_sizes(target)
    if drafter is not None:
        out["drafter"] = drafter_sizes(drafter)
    return out
