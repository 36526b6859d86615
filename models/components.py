"""Small building blocks shared by the target and the drafter: norms, RoPE, MLP, attention masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig, RopeConfig

def gelu_tanh_elementwise(x: torch.Tensor) -> torch.Tensor:
    """gelu(x, approximate="tanh") written out in the ops of its definition (mul, add, tanh).

    What exported programs compute: XNNPACK delegates these ops, while executorch 1.5.1 lowers the
    gelu op itself to XNNPACK's exact (erf) GELU (export/executorch_compat.py keeps it out of the
    delegate, in a portable kernel that splits every method at every MLP). Eager models keep
    F.gelu, the kernel transformers' reference runs; the two agree to float rounding.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


class RMSNorm(nn.Module):
    """Gemma 4 RMSNorm: computed in fp32, scale multiplies directly (not 1 + w); v_norm has no scale."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        # XNNPACK delegates a mean only over the two inner dims of a 4-D tensor with keepdim (its
        # global average pooling), and rsqrt; a last-dim mean of a 3-D tensor, a mean without keepdim
        # and pow(-0.5) stay in portable kernels, and every one splits an exported method (60 means
        # out of the shipped pair's verify alone).
        mean_square = (h * h).reshape(-1, 1, h.shape[-1], 1).mean(dim=(2, 3), keepdim=True).reshape(*h.shape[:-1], 1)
        h = h * torch.rsqrt(mean_square + self.eps)
        if self.weight is not None:
            h = h * self.weight.float()
        return h.type_as(x)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies; "proportional" RoPE rotates the first share and leaves the rest (zero frequency)."""
    rotated = int(rope.partial_rotary_factor * head_dim // 2)
    inv = 1.0 / (rope.theta ** (torch.arange(0, 2 * rotated, 2, dtype=torch.int64).float() / head_dim))
    return torch.cat([inv, torch.zeros(head_dim // 2 - rotated)])


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin for positions [T] -> [1, T, 1, head_dim], computed in fp32 like the reference."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[None, :, None, :], emb.sin().to(dtype)[None, :, None, :]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RotateHalfByMatmul:
    """rotate_half as a product with a signed permutation matrix: x @ P, exact (each output is one
    input times +-1, plus zeros).

    What exported programs compute: the two half slices of rotate_half, on a tensor whose token count
    is dynamic (the .pte's verify), are not delegated to XNNPACK (executorch 1.5.1 slices only static
    shapes), and each splits the method; a linear is delegated at any token count. It costs head_dim
    multiply-adds per element (about 1% of an E2B layer), so eager models keep rotate_half.
    """

    def __init__(self, dim: int):
        half = dim // 2
        matrix = torch.zeros(dim, dim)
        index = torch.arange(half)
        matrix[index + half, index] = -1.0  # out[j] = -x[j + half] for j < half
        matrix[index, index + half] = 1.0  # out[j + half] = x[j]
        self.weight = matrix.T.contiguous()  # F.linear's layout: out = x @ weight.T

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate=rotate_half) -> torch.Tensor:
    return x * cos + rotate(x) * sin


class RotaryTables(nn.Module):
    """One inv_freq buffer per layer type (head_dim differs between sliding and full layers)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        for layer_type in sorted(set(cfg.layer_types)):
            self.register_buffer(f"{layer_type}_inv_freq", self._inv_freq(layer_type), persistent=False)

    def _inv_freq(self, layer_type: str) -> torch.Tensor:
        head_dim = self.cfg.head_dims[self.cfg.layer_types.index(layer_type)]
        return rope_inv_freq(self.cfg.rope[layer_type], head_dim)

    def reset(self) -> None:
        """Recompute in fp32 (after a dtype cast or a meta-device build): RoPE needs full precision."""
        for layer_type in sorted(set(self.cfg.layer_types)):
            setattr(self, f"{layer_type}_inv_freq", self._inv_freq(layer_type))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            name.removesuffix("_inv_freq"): rope_cos_sin(inv, positions, dtype) for name, inv in self.named_buffers()
        }


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def causal_masks(query_positions: torch.Tensor, cache_len: int, sliding_window: int) -> dict[str, torch.Tensor]:
    """Boolean [1, 1, T, cache_len] masks (True = attend) for a static cache.

    Keys at or after a query's position were either never written or hold a rolled-back
    speculative token, so `key <= query` masks both; sliding layers also drop keys that
    have left the window.
    """
    keys = torch.arange(cache_len, device=query_positions.device)[None, :]
    q = query_positions[:, None]
    full = keys <= q
    sliding = full & (keys > q - sliding_window)
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def split_causal_masks(
    query_positions: torch.Tensor, start_pos: torch.Tensor, cache_len: int, sliding_window: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Masks for a pass that reads a cache it does not write (ONNX graphs): (past [1, 1, T, cache_len],
    new [1, 1, T, T]), True = attend.

    Cache keys count only below start_pos (later slots are stale or unwritten); the pass's own
    fresh keys are causal among themselves. Sliding layers drop keys that left the window.
    """
    q = query_positions[:, None]
    past = torch.arange(cache_len, device=q.device)[None, :]
    past_full = (past < start_pos) & (past < q)  # the second term only broadcasts to [T, L]
    new = query_positions[None, :]
    new_full = new <= q
    masks = {}
    for layer_type, window in (("full_attention", None), ("sliding_attention", sliding_window)):
        p, n = past_full, new_full
        if window is not None:
            p, n = p & (past > q - window), n & (new > q - window)
        masks[layer_type] = (p[None, None], n[None, None])
    return masks


def validated_masks(validated_length: torch.Tensor, cache_len: int, sliding_window: int) -> dict[str, torch.Tensor]:
    """Drafter masks [1, 1, 1, cache_len]: only K/V of validated tokens (index < validated_length).

    The reference drafter attends to the last `sliding_window + 1` validated keys on sliding
    layers (a bidirectional window of radius `sliding_window`); this matches it.
    """
    keys = torch.arange(cache_len, device=validated_length.device)[None, :]
    valid = keys < validated_length[:, None]
    sliding = valid & (keys >= validated_length[:, None] - (sliding_window + 1))
    return {"full_attention": valid[None, None], "sliding_attention": sliding[None, None]}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [1, H, T, D], k/v [1, KV, S, D] -> [1, T, H*D]. Gemma 4 uses attention scaling 1.0."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [B, KV, m, n] @ b [B, KV, n, p] as one 3-D bmm over B * KV.

    What exported programs compute: torch.export decomposes a 4-D matmul into expand_copy of both
    operands, a bmm and views, and ExecuTorch runs each expand_copy as a copy outside XNNPACK (a copy
    of the KV cache per layer and call, 32 in the shipped pair's verify). ONNX keeps a 4-D MatMul
    that reads the cache in place, so the ONNX graphs and eager models use `@`.
    """
    out = torch.bmm(a.reshape(-1, a.shape[2], a.shape[3]), b.reshape(-1, b.shape[2], b.shape[3]))
    return out.reshape(a.shape[0], a.shape[1], a.shape[2], b.shape[3])


def attend_grouped(q: torch.Tensor, kv, masks, matmul=torch.matmul) -> torch.Tensor:
    """Attention of q [B, H, T, D] over several K/V parts kv = ((k, v) [B, KV, S_i, D], ...), part i
    masked by masks[i] [B or 1, 1, T, S_i].

    Query heads are grouped per KV head instead of repeating K/V, the parts are never
    concatenated, and scores are computed key-major (k @ q^T) so that only the small score tensor
    is transposed: a graph that reads the KV cache this way feeds it straight into matmuls and never
    copies it (`matmul`: batched_matmul for ExecuTorch programs). The mask is added as a bias and the
    softmax runs over the last dim: XNNPACK delegates neither a masked_fill (where) nor a softmax over
    another dim, and each would split an exported method.
    """
    batch, heads, seq, dim = q.shape
    kv_heads = kv[0][0].shape[1]
    groups, rows = heads // kv_heads, heads // kv_heads * seq
    qt = q.reshape(batch, kv_heads, rows, dim).transpose(-1, -2)  # [B, KV, D, G*T]
    scores = []
    for (k, _), mask in zip(kv, masks):
        keys = k.shape[2]
        s = matmul(k, qt).transpose(-1, -2)  # [B, KV, G*T, S]; Gemma 4 uses attention scaling 1.0
        # The bias of one query group, then repeated (row g*T + t: query t's): the masked_fill runs in
        # ExecuTorch's portable `where`, outside XNNPACK, at a cost per element (over the G groups it
        # was 26% of the shipped pair's prefill chunk, `bench methods --profile`); a copy is cheaper.
        keep = mask.reshape(mask.shape[0], 1, seq, keys)
        bias = torch.zeros(keep.shape, dtype=s.dtype).masked_fill(~keep, torch.finfo(s.dtype).min).repeat(1, 1, groups, 1)
        scores.append(s + bias)
    # One part (a static cache) is neither concatenated nor sliced: both would copy it.
    scores = scores[0] if len(scores) == 1 else torch.cat(scores, dim=-1)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # [B, KV, G*T, sum S]
    out, offset = 0, 0
    for k, v in kv:
        keys = k.shape[2]
        part = probs if len(kv) == 1 else probs[..., offset:offset + keys]
        out = out + matmul(part, v)
        offset += keys
    return out.reshape(batch, heads, seq, dim).transpose(1, 2).reshape(batch, seq, heads * dim)
