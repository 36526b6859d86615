"""The Gemma 4 text decoder (the target).

One pass, `run`, serves every use: tokens [B, T] at positions start_pos..start_pos+T-1 through
the decoder and the KV cache the model was built with (models.attention: StaticCache unless
built otherwise or viewed through `with_cache`). Built on it:

    forward                  prefill (T = chunk) and verify (T = K + 1) through the static cache:
                             logits and the final hidden states (the drafter's input); the eager
                             runtime, and the .pte's methods (export/pte.py)
    export/onnx.py           TargetGraph: an ExternalCache pass that returns the new K/V rows
    models/training, qat     a NoCache pass over whole batches (training, distillation, evaluation)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KV, KVCache, make_cache
from .components import RMSNorm, RotaryTables
from .config import DecoderConfig
from .layer import DecoderLayer


class Gemma4Target(nn.Module):
    def __init__(self, cfg: DecoderConfig, max_seq_len: int, dtype: torch.dtype = torch.float32, cache: str = "static"):
        """cache: "static" (max_seq_len positions of buffers), "external" or "none" (see models.attention)."""
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
        self.cache: KVCache = make_cache(cache, cfg, max_seq_len, dtype)
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
        # The module, not its weight: a quantized ONNX head (quantize.nbits) is an operator, not a tensor.
        logits = F.linear(hidden, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(hidden)
        cap = self.cfg.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def with_cache(self, kind: str) -> Gemma4Target:
        """This model over another kind of cache, its weights and modules shared, not copied (the
        ONNX graph's ExternalCache, training's NoCache); the view holds no buffers of this model's cache."""
        view = copy.copy(self)
        view._modules = dict(self._modules)  # copy.copy shares the dict: swap the cache in the view's own
        view.cache = make_cache(kind, self.cfg, self.max_seq_len, self.embed_tokens.weight.dtype)
        return view

    def run(self, tokens: torch.Tensor, start_pos, past: dict[int, KV] | None = None) -> tuple[torch.Tensor, dict]:
        """The one pass: tokens [B, T] at positions start_pos + arange(T) through the decoder and its cache.

        past: the cache an ExternalCache reads (cache layer -> K/V [1, kv_heads, L, head_dim], valid
        below start_pos); None for the other caches. Returns (final hidden [B, T, hidden], per cache
        layer the K/V parts it attended over: a StaticCache's (buffers,), an ExternalCache's
        PastAndNew(the cache read, the T new rows), NoCache's (fresh K/V,)).
        """
        cfg = self.cfg
        positions = start_pos + torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens)
        ple = self.per_layer_inputs(tokens, x) if cfg.ple_dim else None
        rope = self.rotary(positions, x.dtype)
        masks = self.cache.masks(positions, start_pos, past)
        kv: dict[int, tuple[KV, ...]] = {}
        for i, layer in enumerate(self.layers):
            layer_type, source = cfg.layer_types[i], cfg.kv_source(i)
            # A layer that owns K/V starts from what the cache holds; a KV-shared one reads its store layer's.
            held = kv[source] if cfg.is_kv_shared(i) else self.cache.read(i, past)
            per_layer = ple[:, :, i] if ple is not None else None
            x, kv[source] = layer(x, per_layer, rope[layer_type], masks[layer_type], held, positions, self.cache)
        return self.norm(x), kv

    def forward(
        self, tokens: torch.Tensor, start_pos: torch.Tensor, logits_at: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [1, T] at positions start_pos[0] + arange(T), through the static cache (or a batch
        [B, T] from start_pos 0 without one).

        Returns (logits [B, T or len(logits_at), vocab], hidden [B, T, hidden]); `logits_at`
        selects the positions whose logits are needed (a prefill chunk needs one).
        """
        hidden, _ = self.run(tokens, start_pos)
        selected = hidden if logits_at is None else hidden.index_select(1, logits_at)
        return self.logits(selected), hidden

    def store_kv(self, kv: dict[int, tuple[KV, ...]] | None = None) -> dict[str, KV]:
        """The store layers' K/V per layer type: what the KV-shared layers and the drafter read.

        The static cache's buffers, or from `kv` (run's K/V parts: one each from a StaticCache or
        NoCache pass) those of that pass."""
        if kv is None:
            return {layer_type: self.cache.layer(layer) for layer_type, layer in self.cfg.store_layers.items()}
        return {layer_type: kv[layer][0] for layer_type, layer in self.cfg.store_layers.items()}
