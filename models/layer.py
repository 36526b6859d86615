"""The Gemma 4 decoder layer, shared by the target and the drafter."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .components import ACTIVATIONS, MLP, RMSNorm
from .config import DecoderConfig


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg.hidden_size, cfg.mlp_size(layer), cfg.hidden_activation)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.register_buffer("layer_scalar", torch.ones(1))
        self.ple_dim = cfg.ple_dim
        if self.ple_dim:
            self.activation = cfg.hidden_activation
            self.act = ACTIVATIONS[cfg.hidden_activation]
            self.per_layer_input_gate = nn.Linear(cfg.hidden_size, self.ple_dim, bias=False)
            self.per_layer_projection = nn.Linear(self.ple_dim, cfg.hidden_size, bias=False)
            self.post_per_layer_input_norm = RMSNorm(cfg.hidden_size, eps)

    def forward(self, x, per_layer_input, rope, masks, kv, positions, cache=None):
        """Returns (x, the K/V parts this layer attended over): see Attention.forward."""
        h, kv = self.self_attn(self.input_layernorm(x), rope, masks, kv, positions, cache)
        x = x + self.post_attention_layernorm(h)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        if self.ple_dim:
            gate = self.act(self.per_layer_input_gate(x)) * per_layer_input
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(gate))
        return x * self.layer_scalar, kv
