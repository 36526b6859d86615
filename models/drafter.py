"""The Gemma 4 assistant ("MTP drafter").

Every layer is KV-shared: the drafter projects no K/V and writes no cache. Its layers attend to
the target's store-layer K/V, masked to the validated length. One step takes the target's scaled
embedding of the last token and a hidden state (the target's at first, then its own projected
output), both at a position that stays constant for the whole drafting round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .components import RMSNorm, RotaryTables, validated_masks
from .config import DrafterConfig
from .layer import DecoderLayer


class ClusteredHead(nn.Module):
    """Centroid LM head: score `num_centroids` clusters, keep the top k, score only their tokens."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.top_k = cfg.centroid_top_k
        self.num_centroids = cfg.num_centroids
        self.centroids = nn.Linear(cfg.decoder.hidden_size, cfg.num_centroids, bias=False)
        # token_ordering lists the vocabulary cluster by cluster: row c of its [centroids, per] view is cluster c.
        self.register_buffer("token_ordering", torch.arange(cfg.decoder.vocab_size, dtype=torch.long))

    def forward(self, hidden: torch.Tensor, head_rows) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, T, D] -> candidate ids and logits, both [B, T, top_k * tokens_per_centroid].
        head_rows(ids) gathers the LM head's rows of `ids` (Gemma4Drafter.lm_head_rows)."""
        _, clusters = torch.topk(self.centroids(hidden), k=self.top_k, dim=-1)
        # embedding() gathers rows on the fast path; advanced indexing lowers to a slow generic
        # index kernel in ExecuTorch (29 of 48 ms of an E2B-width draft step).
        ids = F.embedding(clusters, self.token_ordering.view(self.num_centroids, -1)).flatten(-2)
        rows = head_rows(ids)  # [B, T, C, D]
        # rows @ hidden, not hidden @ rows^T: the gathered rows are used as they lie (a transposed
        # copy of them cost more than the matmul in the exported program). A 3-D bmm, since a 4-D
        # matmul is exported with an expand_copy of its operands.
        logits = torch.bmm(rows.flatten(0, 1), hidden.flatten(0, 1).unsqueeze(-1)).view(ids.shape)
        return ids, logits


class Gemma4Drafter(nn.Module):
    def __init__(self, cfg: DrafterConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder
        self.pre_projection = nn.Linear(2 * cfg.backbone_hidden_size, d.hidden_size, bias=False)
        self.post_projection = nn.Linear(d.hidden_size, cfg.backbone_hidden_size, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(d, i) for i in range(d.num_layers))
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.embed_tokens = nn.Embedding(d.vocab_size, d.hidden_size)  # the (tied) LM head
        self.lm_head = None if d.tie_word_embeddings else nn.Linear(d.hidden_size, d.vocab_size, bias=False)
        self.masked_embedding = ClusteredHead(cfg) if cfg.use_ordered_embeddings else None
        self.rotary = RotaryTables(d)
        self.to(dtype)
        self.reset_derived_buffers()

    def reset_derived_buffers(self) -> None:
        self.rotary.reset()

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def lm_head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The LM head's rows of `ids`. Through the modules, not their weights: a quantized ONNX head
        (quantize.nbits) gathers packed rows with its own operator."""
        if self.lm_head is None:
            return self.embed_tokens(ids)
        rows_of = getattr(self.lm_head, "rows_of", None)
        return rows_of(ids) if rows_of is not None else F.embedding(ids, self.lm_head.weight)

    def forward(
        self,
        token_embedding: torch.Tensor,
        last_hidden: torch.Tensor,
        position: torch.Tensor,
        validated_length: torch.Tensor,
        kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draft step. token_embedding, last_hidden [B, N, backbone]; position, validated_length [N].

        N > 1 runs N independent draft queries at once (training). kv maps layer type -> the target's store-layer (k, v) buffers. Returns the drafter's
        final hidden [1, 1, hidden] (input to the LM head) and the projected hidden
        [1, 1, backbone] that feeds the next step.
        """
        return self.step(token_embedding, last_hidden, position, kv, self.step_context(position, validated_length, kv, token_embedding.dtype))

    def step_context(self, position: torch.Tensor, validated_length: torch.Tensor, kv: dict, dtype: torch.dtype) -> tuple[dict, dict]:
        """(RoPE tables, attention masks) of a draft step: the same for every step of a round, whose
        position and validated length stay constant, so a multi-step graph builds them once."""
        d = self.cfg.decoder
        key_len = next(iter(kv.values()))[0].shape[2]
        return self.rotary(position, dtype), validated_masks(validated_length, key_len, d.sliding_window)

    def step(self, token_embedding, last_hidden, position, kv, context) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.decoder
        rope, masks = context
        x = self.pre_projection(torch.cat([token_embedding, last_hidden], dim=-1))
        for i, layer in enumerate(self.layers):
            layer_type = d.layer_types[i]
            # Every drafter layer is KV-shared: it reads the target's K/V as one part, writes nothing.
            x, _ = layer(x, None, rope[layer_type], (masks[layer_type],), (kv[layer_type],), position)
        hidden = self.norm(x)
        return hidden, self.post_projection(hidden)

    def draft_step(
        self,
        token_embedding: torch.Tensor,
        last_hidden: torch.Tensor,
        position: torch.Tensor,
        validated_length: torch.Tensor,
        kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exported draft step: (candidate ids [C], candidate logits [C], next hidden [backbone], argmax id [1]).

        With the clustered head C = top_k * tokens per cluster, and nothing here has the
        vocabulary's size; the argmax is taken over the candidates, so greedy drafting reads
        one id and never the logits.
        """
        h, projected = self(token_embedding, last_hidden, position, validated_length, kv)
        ids, logits = self.candidates(h)
        ids, logits = ids.reshape(-1), logits.reshape(-1)
        return ids, logits, projected.reshape(-1), ids.gather(0, logits.argmax().view(1))

    def greedy_chain(self, embed, token: torch.Tensor, last_hidden: torch.Tensor, position: torch.Tensor,
                     validated_length: torch.Tensor, kv: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k greedy draft steps in one graph, each step's argmax the next step's token: the exported
        draft_chain_k method. embed(token [1, 1]) is the target's scaled embedding [1, 1, backbone].

        Returns (draft ids [k] i64, each step's top candidate probability [k]): the probabilities let
        a runtime cut the chain where --draft-p-min would have stopped (greedy stays exact either way).
        """
        context = self.step_context(position, validated_length, kv, last_hidden.dtype)
        ids, top = [], []
        for _ in range(k):
            h, last_hidden = self.step(embed(token.view(1, 1)), last_hidden, position, kv, context)
            candidate_ids, logits = self.candidates(h)
            candidate_ids, logits = candidate_ids.reshape(-1), logits.reshape(-1)
            best = logits.argmax().view(1)
            token = candidate_ids.gather(0, best)
            ids.append(token)
            top.append(torch.softmax(logits, dim=-1).gather(0, best))
        return torch.cat(ids), torch.cat(top)

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary (the assistant applies no softcap)."""
        return F.linear(hidden, self.lm_head_weight)

    def candidates(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, logits) of the candidate tokens: the clustered head's, or the whole vocabulary."""
        if self.masked_embedding is None:
            logits = self.full_logits(hidden)
            ids = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
            return ids, logits
        return self.masked_embedding(hidden, self.lm_head_rows)

    def scattered_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits as the reference builds them (non-candidates at min - 1): for tests and training."""
        if self.masked_embedding is None:
            return self.full_logits(hidden)
        ids, logits = self.candidates(hidden)
        out = torch.full((*hidden.shape[:-1], self.cfg.decoder.vocab_size), logits.min().item() - 1.0, dtype=logits.dtype)
        return out.scatter(-1, ids, logits)
