"""Gemma 4 attention over a static KV cache.

One class serves every layer: a layer that owns a cache projects K/V and writes them at the
query positions; a KV-shared layer (the target's last layers, and every drafter layer) has no
K/V projections and attends to the cache of its store layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .components import RMSNorm, apply_rope, attend, attend_grouped
from .config import DecoderConfig


class ReadOnlyCache(NamedTuple):
    """A cache that a pass reads and never writes (an ONNX graph's cache inputs): the owning layer
    attends over it plus its fresh K/V and returns those as PendingKV for the caller to store."""

    k: torch.Tensor
    v: torch.Tensor


class PendingKV(NamedTuple):
    past_k: torch.Tensor
    past_v: torch.Tensor
    new_k: torch.Tensor
    new_v: torch.Tensor


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.head_dim = cfg.head_dims[layer]
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads[layer]
        self.kv_shared = cfg.is_kv_shared(layer)
        full = cfg.layer_types[layer] == "full_attention"
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        if not self.kv_shared:
            kv_dim = self.num_kv_heads * self.head_dim
            self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
            # attention_k_eq_v (full layers only): values are the un-normed keys.
            self.v_proj = None if (cfg.attention_k_eq_v and full) else nn.Linear(cfg.hidden_size, kv_dim, bias=False)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.v_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, with_scale=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns (output, the K/V attended over).

        kv is this layer's cache buffers (written at `positions`, then attended over whole), the
        store layer's K/V for a KV-shared layer, or None for a cache-free pass (training) that
        attends over the fresh K/V. A ReadOnlyCache (mask: a (past, new) pair) is attended
        over without being written, the fresh K/V beside it: the layer returns them as PendingKV.
        A KV-shared layer given a ReadOnlyCache (the exported drafter) attends over it with a plain mask.
        """
        batch, seq = x.shape[:2]
        cache_free = kv is None
        cos, sin = rope
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        q = apply_rope(self.q_norm(q), cos, sin).transpose(1, 2)
        if not self.kv_shared:
            k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
            v = k if self.v_proj is None else self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
            k = apply_rope(self.k_norm(k), cos, sin).transpose(1, 2)
            v = self.v_norm(v).transpose(1, 2)
            if isinstance(kv, ReadOnlyCache):
                kv = PendingKV(kv.k, kv.v, k, v)
            elif kv is not None:
                kv[0].index_copy_(2, positions, k)
                kv[1].index_copy_(2, positions, v)
            else:
                kv = (k, v)
        if isinstance(kv, PendingKV):
            out = attend_grouped(q, [(kv.past_k, kv.past_v, mask[0]), (kv.new_k, kv.new_v, mask[1])])
        elif cache_free:
            out = attend(q, kv[0], kv[1], mask)
        else:
            # A cache is read in place (grouped query heads, no repeated K/V): repeating it cost a
            # copy of every attended cache tensor per call, 70% of an E2B-geometry draft step.
            out = attend_grouped(q, [(kv[0], kv[1], mask)])
        return self.o_proj(out), kv
