"""The Gemma 4 text decoder (the target) with a static, preallocated KV cache.

One forward serves prefill (T = chunk) and verify (T = K + 1): it writes the K/V of the T
tokens at positions start..start+T-1 and returns their logits and final hidden states (the
drafter's input). Rollback is the caller's business: rejected K/V stay in the buffer and are
masked, because a query never attends a key at or after its own position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ReadOnlyCache
from .components import RMSNorm, RotaryTables, causal_masks, split_causal_masks
from .config import DecoderConfig
from .layer import DecoderLayer


class KVCache(nn.Module):
    """K/V buffers [1, kv_heads, max_seq_len, head_dim] for the layers that own a cache.

    Sliding layers keep a full-length buffer rather than a `window`-slot ring: a speculative
    write that is later rejected can then never overwrite a key that is still inside the window.
    """

    def __init__(self, cfg: DecoderConfig, max_seq_len: int, dtype: torch.dtype):
        super().__init__()
        self.max_seq_len = max_seq_len
        for layer in cfg.cache_layers:
            shape = (1, cfg.num_kv_heads[layer], max_seq_len, cfg.head_dims[layer])
            self.register_buffer(f"k_{layer}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_{layer}", torch.zeros(shape, dtype=dtype), persistent=False)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"k_{layer}"), getattr(self, f"v_{layer}")

    def reset(self) -> None:
        for buf in self.buffers():
            buf.zero_()


class Gemma4Target(nn.Module):
    def __init__(self, cfg: DecoderConfig, max_seq_len: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        # The reference keeps its embedding scales as tensors cast to the weight dtype (bf16 rounds sqrt(h)).
        self.register_buffer("embed_scale", torch.tensor(h**0.5), persistent=False)
        if cfg.ple_dim:
            self.embed_tokens_per_layer = nn.Embedding(cfg.ple_vocab_size, cfg.num_layers * cfg.ple_dim)
            self.register_buffer("ple_embed_scale", torch.tensor(cfg.ple_dim**0.5), persistent=False)
            self.per_layer_model_projection = nn.Linear(h, cfg.num_layers * cfg.ple_dim, bias=False)
            self.per_layer_projection_norm = RMSNorm(cfg.ple_dim, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(h, cfg.vocab_size, bias=False)
        self.rotary = RotaryTables(cfg)
        self.cache = KVCache(cfg, max_seq_len, dtype)
        self.to(dtype)
        self.reset_derived_buffers()

    def reset_derived_buffers(self) -> None:
        """Buffers computed from the config, not loaded: RoPE tables, embedding scales, an empty cache."""
        self.rotary.reset()
        self.embed_scale = torch.tensor(self.cfg.hidden_size**0.5)
        if self.cfg.ple_dim:
            self.ple_embed_scale = torch.tensor(self.cfg.ple_dim**0.5)
        self.cache.reset()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings: also the drafter's token input."""
        return self.embed_tokens(tokens) * self.embed_scale.to(self.embed_tokens.weight.dtype)

    def per_layer_inputs(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-Layer Embeddings [B, T, layers, ple_dim]: a token-identity row mixed with a projection of x."""
        cfg = self.cfg
        shape = (*tokens.shape, cfg.num_layers, cfg.ple_dim)
        identity = self.embed_tokens_per_layer(tokens) * self.ple_embed_scale.to(x.dtype)
        context = self.per_layer_model_projection(x) * cfg.hidden_size**-0.5
        context = self.per_layer_projection_norm(context.reshape(shape))
        return (context + identity.reshape(shape)) * 2.0**-0.5

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        cap = self.cfg.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self, tokens: torch.Tensor, start_pos: torch.Tensor, logits_at: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [1, T] at positions start_pos[0] + arange(T), through the static cache.

        Returns (logits [1, T or len(logits_at), vocab], hidden [1, T, hidden]); `logits_at`
        selects the positions whose logits are needed (a prefill chunk needs one).
        """
        positions = start_pos + torch.arange(tokens.shape[1], device=tokens.device)
        hidden, _ = self._decode(tokens, positions, self.max_seq_len, use_cache=True)
        selected = hidden if logits_at is None else hidden.index_select(1, logits_at)
        return self.logits(selected), hidden

    def forward_external(
        self, tokens: torch.Tensor, start_pos: torch.Tensor, logits_at: torch.Tensor, cache: dict[int, tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """The forward of a graph that does not own its cache (ONNX): reads `cache` (layer -> K/V
        [1, kv_heads, L, head_dim], valid below start_pos) and never writes it.

        Returns (logits [1, len(logits_at), vocab], hidden [1, len(logits_at), hidden], the new
        K/V rows [1, kv_heads, T, head_dim] per cache layer, for the caller to store at
        start_pos..start_pos+T-1).
        """
        positions = start_pos + torch.arange(tokens.shape[1], device=tokens.device)
        views = {layer: ReadOnlyCache(*kv) for layer, kv in cache.items()}
        hidden, pending = self._decode(tokens, positions, 0, use_cache=False, external=views, start_pos=start_pos)
        hidden = hidden.index_select(1, logits_at)
        return self.logits(hidden), hidden, {layer: (kv.new_k, kv.new_v) for layer, kv in pending.items()}

    def forward_train(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Cache-free pass over a batch [B, T] from position 0 (training, distillation).

        Returns (logits [B, T, vocab], hidden [B, T, hidden], the store layers' K/V per layer type).
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden, store = self._decode(tokens, positions, tokens.shape[1], use_cache=False)
        return self.logits(hidden), hidden, store

    def _decode(self, tokens, positions, key_len: int, use_cache: bool, external=None, start_pos=None):
        cfg = self.cfg
        x = self.embed(tokens)
        ple = self.per_layer_inputs(tokens, x) if cfg.ple_dim else None
        rope = self.rotary(positions, x.dtype)
        if external is None:
            masks = causal_masks(positions, key_len, cfg.sliding_window)
        else:
            cache_len = next(iter(external.values())).k.shape[2]
            masks = split_causal_masks(positions, start_pos, cache_len, cfg.sliding_window)
        store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # K/V of the layers that own one
        for i, layer in enumerate(self.layers):
            layer_type = cfg.layer_types[i]
            source = cfg.kv_source(i)
            if external is not None:
                kv = store[source] if source in store else external[source]
            else:
                kv = self.cache.layer(source) if use_cache else store.get(source)
            per_layer = ple[:, :, i] if ple is not None else None
            x, store[source] = layer(x, per_layer, rope[layer_type], masks[layer_type], kv, positions)
        if external is not None:
            return self.norm(x), store
        by_type = {layer_type: store[layer] for layer_type, layer in cfg.store_layers.items()}
        return self.norm(x), by_type

    def store_kv(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The store layers' K/V buffers, per layer type: what KV-shared layers and the drafter read."""
        return {layer_type: self.cache.layer(layer) for layer_type, layer in self.cfg.store_layers.items()}
