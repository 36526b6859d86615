"""Gemma 4 attention, and the KV caches a model can be built with.

One Attention class serves every layer: a layer that owns a cache projects K/V and hands them to
the model's cache; a KV-shared layer (the target's last layers, and every drafter layer) has no
K/V projections and attends to what its store layer attended over.

Where K/V live is chosen once, when the model is built (Gemma4Target(cache=...) or
Gemma4Target.with_cache), as ExecuTorch's source transforms swap a model's KV-cache module:

    StaticCache    buffers the model owns, written in place at the query positions: the eager
                   runtime and the .pte's prefill / verify / decode methods
    ExternalCache  cache tensors the caller owns, read and never written (an ONNX graph cannot
                   write its inputs): the T fresh K/V rows are returned for the caller to store
    NoCache        none: a pass over whole sequences from position 0 (training) attends over its
                   own fresh K/V

Every cache answers the same calls (KVCache), so neither Attention nor the target's forward asks
which one it holds. K/V travel as parts, ((k, v), ...), each [B, kv_heads, S_i, head_dim] with one
mask [1, 1, T, S_i] per part: attention runs over the parts together without concatenating them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .components import RMSNorm, apply_rope, attend, attend_grouped, causal_masks, rotate_half, split_causal_masks
from .config import DecoderConfig

KV = tuple[torch.Tensor, torch.Tensor]


class KVCache(nn.Module):
    """Where a model's K/V live. A pass calls masks() once, then for each layer that owns K/V
    read() what the cache holds for it and update() with its fresh K/V, then attend()."""

    def masks(self, positions: torch.Tensor, start_pos, past) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per layer type, one boolean mask [1, 1, T, S_i] (True = attend) per K/V part."""
        raise NotImplementedError

    def read(self, layer: int, past):
        """What the cache holds for `layer` before the pass (`past`: the caller's cache, if it has one)."""
        raise NotImplementedError

    def update(self, held, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> tuple[KV, ...]:
        """Store a layer's fresh K/V [B, kv_heads, T, head_dim]; returns the K/V parts to attend over."""
        raise NotImplementedError

    def attend(self, q: torch.Tensor, kv: tuple[KV, ...], masks: tuple[torch.Tensor, ...], matmul=torch.matmul) -> torch.Tensor:
        # A cache is read in place (grouped query heads, no repeated K/V): repeating it cost a
        # copy of every attended cache tensor per call, 70% of an E2B-geometry draft step.
        return attend_grouped(q, kv, masks, matmul)

    def reset(self) -> None:
        """Forget what is stored (only a cache with buffers stores anything)."""


class StaticCache(KVCache):
    """K/V buffers [1, kv_heads, max_seq_len, head_dim] for the layers that own a cache, written in
    place at the query positions.

    Sliding layers keep a full-length buffer rather than a `window`-slot ring: a speculative
    write that is later rejected can then never overwrite a key that is still inside the window.
    Rollback is the caller's business: rejected K/V stay in the buffer and are masked, because a
    query never attends a key at or after its own position.
    """

    def __init__(self, cfg: DecoderConfig, max_seq_len: int, dtype: torch.dtype):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.sliding_window = cfg.sliding_window
        for layer in cfg.cache_layers:
            shape = (1, cfg.num_kv_heads[layer], max_seq_len, cfg.head_dims[layer])
            self.register_buffer(f"k_{layer}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_{layer}", torch.zeros(shape, dtype=dtype), persistent=False)

    def layer(self, layer: int) -> KV:
        return getattr(self, f"k_{layer}"), getattr(self, f"v_{layer}")

    def reset(self) -> None:
        for buf in self.buffers():
            buf.zero_()

    def masks(self, positions, start_pos, past=None):
        return {t: (m,) for t, m in causal_masks(positions, self.max_seq_len, self.sliding_window).items()}

    def read(self, layer, past=None):
        return self.layer(layer)

    def update(self, held, k, v, positions):
        held[0].index_copy_(2, positions, k)
        held[1].index_copy_(2, positions, v)
        return (held,)


class PastAndNew(NamedTuple):
    """An ExternalCache layer's two K/V parts: the cache it read (valid below start_pos) and its T fresh rows."""

    past: KV
    new: KV


class ExternalCache(KVCache):
    """A cache the caller owns: `past` (layer -> K/V [1, kv_heads, L, head_dim], an ONNX graph's
    cache inputs) is read and never written. A layer attends over it and its fresh rows beside it,
    never concatenated, so no node copies a cache tensor; the fresh rows come back as PastAndNew.new."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.sliding_window = cfg.sliding_window

    def masks(self, positions, start_pos, past):
        cache_len = next(iter(past.values()))[0].shape[2]
        return split_causal_masks(positions, start_pos, cache_len, self.sliding_window)

    def read(self, layer, past):
        return past[layer]

    def update(self, held, k, v, positions):
        return PastAndNew(held, (k, v))


class NoCache(KVCache):
    """No cache: a pass over whole sequences [B, T] from position 0 attends over its own fresh K/V."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.sliding_window = cfg.sliding_window

    def masks(self, positions, start_pos, past=None):
        return {t: (m,) for t, m in causal_masks(positions, positions.shape[0], self.sliding_window).items()}

    def read(self, layer, past=None):
        return None

    def update(self, held, k, v, positions):
        return ((k, v),)

    def attend(self, q, kv, masks, matmul=torch.matmul):
        # PyTorch's SDPA over the layer's own fresh K/V (the training pass's path). Its KV-shared
        # layers still read these K/V through attend_grouped, as they read any cache.
        (k, v), = kv
        return attend(q, k, v, masks[0])


def make_cache(kind: str, cfg: DecoderConfig, max_seq_len: int, dtype: torch.dtype) -> KVCache:
    """"static", "external" or "none": the cache a model is built with."""
    if kind == "static":
        return StaticCache(cfg, max_seq_len, dtype)
    if kind == "external":
        return ExternalCache(cfg)
    if kind == "none":
        return NoCache(cfg)
    raise ValueError(f"unknown KV cache kind {kind!r}: choose static, external or none.")


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
        # export/pte.py's delegable_ops swaps in RotateHalfByMatmul and batched_matmul
        self.rotate, self.matmul = rotate_half, torch.matmul
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        if not self.kv_shared:
            kv_dim = self.num_kv_heads * self.head_dim
            self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
            # attention_k_eq_v (full layers only): values are the un-normed keys.
            self.v_proj = None if (cfg.attention_k_eq_v and full) else nn.Linear(cfg.hidden_size, kv_dim, bias=False)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.v_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, with_scale=False)

    def forward(self, x, rope, masks, kv, positions, cache=None):
        """Returns (output, the K/V parts attended over: what this layer's KV-shared layers read).

        A layer that owns K/V is given the model's `cache` and `kv`, what the cache held for it
        (cache.read); it stores its fresh K/V there and attends over what update() returns. A
        KV-shared layer is given `kv`, the K/V parts its store layer attended over (the drafter's
        layers: the target's store layers' K/V), and no cache. `masks` has one mask per part.
        """
        batch, seq = x.shape[:2]
        cos, sin = rope
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        q = apply_rope(self.q_norm(q), cos, sin, self.rotate).transpose(1, 2)
        if self.kv_shared:
            # Another layer's K/V are read in place like any cache: grouped query heads, never repeated.
            return self.o_proj(attend_grouped(q, kv, masks, self.matmul)), kv
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = k if self.v_proj is None else self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        k = apply_rope(self.k_norm(k), cos, sin, self.rotate).transpose(1, 2)
        v = self.v_norm(v).transpose(1, 2)
        kv = cache.update(kv, k, v, positions)
        return self.o_proj(cache.attend(q, kv, masks, self.matmul)), kv
