"""Block-quantized weights in onnxruntime's layouts, as torch modules (the ONNX path).

A quantized ONNX graph is exported from these modules directly: each holds the packed integers and
scales that onnxruntime's MatMulNBits (linears) and GatherBlockQuantized (embedding tables, the
clustered head's candidate rows) read, and calls a torch custom op that export.onnx_contrib
translates into that node. So the fp32 weight never exists, neither as a module nor as a graph
initializer: the loader quantizes each checkpoint tensor row chunk by row chunk
(quantize.streaming, form "onnx") straight into these buffers.

The integers are torchao's grid (quantize.modules.grid_integers), the ones the .pte stores:

    4-bit (8da4w, int4, emb4)  q in [-8, 7], one scale per `group` columns; stored as q + 8, two
                               per byte, the low nibble first (onnxruntime's 4-bit packing)
    8-bit (8da8w, emb8)        q in [-128, 127], one scale per row (torchao's per-channel int8),
                               stored as q + 128, one per byte; the row's scale is repeated for
                               every block of BLOCK_8BIT columns, as both operators take one scale
                               per block

No zero points are stored: both operators default to the middle of the unsigned range (8, 128),
which is where q = 0 lands. Activations stay fp32 (see export.onnx: int8 activations in these
operators make a token's logits depend on the other tokens of a verify).

The ops' eager kernels dequantize and run the float op, so a model holding these modules also
runs in PyTorch (tests compare it with onnxruntime).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import BITS, grid_integers

BLOCK_8BIT = 32
FOUR_BIT = ("8da4w", "int4", "emb4")


def bits_of(scheme: str) -> int:
    return 4 if BITS[scheme] == torch.int4 else 8


def block_of(scheme: str, group: int) -> int:
    return group if bits_of(scheme) == 4 else BLOCK_8BIT


def packing(scheme: str, group: int) -> tuple[int, int]:
    """(bits, block): two schemes with the same packing store the same integers for the same rows
    (grid_integers depends on nothing else), so a tied head and its embedding table can share them."""
    return bits_of(scheme), block_of(scheme, group)


def shape_rule(kind: str, scheme: str, group: int, columns: int) -> str | None:
    """Why a [rows, columns] weight cannot take `scheme` in onnxruntime's operators (None: it can):
    quantize.modules.plan_model's shape rule for the ONNX path."""
    block = block_of(scheme, group)
    if columns % block:
        return f"{columns} columns are not a multiple of the block of {block}"
    if block < 16 or block & (block - 1):
        return f"onnxruntime's block-quantized operators take a power-of-two block of at least 16, not {block}"
    return None


# Rows are quantized this many bytes of them at a time: grid_integers' temporaries (several fp32
# copies of its input) then stay small beside the loader's 64 MiB chunks.
PACK_BYTES = 4 << 20


def pack_rows(rows: torch.Tensor, scheme: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[r, c] float rows -> (uint8 data [r, c * bits / 8], fp32 scales [r, c / block]) on torchao's grid."""
    step = max(1, PACK_BYTES // max(1, rows[0].numel() * rows.element_size()))
    if rows.shape[0] > step:
        parts = [_pack(part, scheme, group) for part in rows.split(step)]
        return torch.cat([d for d, _ in parts]), torch.cat([s for _, s in parts])
    return _pack(rows, scheme, group)


def _pack(rows: torch.Tensor, scheme: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, scale = grid_integers(rows, scheme, group)
    if bits_of(scheme) == 4:
        nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
        return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale.float()
    data = (q.to(torch.int16) + 128).to(torch.uint8)
    return data, scale.float().expand(-1, rows.shape[1] // BLOCK_8BIT).contiguous()


def _unpack(data: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 data [..., c * bits / 8] and scales [..., c / block] -> the fp32 values [..., c]."""
    if bits == 4:
        q = torch.stack([(data & 15).to(torch.int16) - 8, (data >> 4).to(torch.int16) - 8], -1).flatten(-2)
    else:
        q = data.to(torch.int16) - 128
    blocks = q.float().unflatten(-1, (scales.shape[-1], -1))
    return (blocks * scales.unsqueeze(-1)).flatten(-2)


@torch.library.custom_op("mtp_edge::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """x @ W.T for W [n, k] stored as `data` [n, k / block, block * bits / 8] (MatMulNBits' B)."""
    return F.linear(x, _unpack(data.flatten(1), scales, bits).to(x.dtype))


@matmul_nbits.register_fake
def _(x, data, scales, bits, block):
    return x.new_empty((*x.shape[:-1], data.shape[0]))


@torch.library.custom_op("mtp_edge::gather_block_quantized", mutates_args=())
def gather_block_quantized(data: torch.Tensor, ids: torch.Tensor, scales: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Rows `ids` of the table stored as `data` [rows, c * bits / 8] (GatherBlockQuantized's data)."""
    return _unpack(data[ids], scales[ids], bits)


@gather_block_quantized.register_fake
def _(data, ids, scales, bits, block):
    return data.new_empty((*ids.shape, data.shape[1] * 8 // bits), dtype=torch.float32)


class _BlockQuantized(nn.Module):
    """A [rows, columns] weight held as packed integers + block scales."""

    def __init__(self, data: torch.Tensor, scales: torch.Tensor, scheme: str, group: int):
        super().__init__()
        self.scheme, self.bits, self.block = scheme, bits_of(scheme), block_of(scheme, group)
        self.rows, self.columns = data.shape[0], data.shape[1] * 8 // self.bits
        self.register_buffer("data", self._layout(data))
        self.register_buffer("scales", scales)

    def _layout(self, data: torch.Tensor) -> torch.Tensor:
        return data

    @property
    def weight(self) -> torch.Tensor:
        """A stand-in with the float weight's shape and dtype, on the meta device: code that asks a
        module its weight's dtype keeps working, and code that would read the values fails loudly."""
        return torch.empty(self.rows, self.columns, device="meta")

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.mtp_edge.gather_block_quantized(self.data.flatten(1) if self.data.dim() > 2 else self.data, ids, self.scales, self.bits, self.block)

    def extra_repr(self) -> str:
        return f"{self.rows}x{self.columns}, {self.scheme}, {self.bits}-bit blocks of {self.block}"


class BlockQuantizedLinear(_BlockQuantized):
    """nn.Linear(columns, rows, bias=False) -> MatMulNBits. rows_of (an untied drafter head's candidate
    rows) gathers from the same data, reshaped in the graph."""

    def _layout(self, data: torch.Tensor) -> torch.Tensor:
        return data.view(self.rows, self.columns // self.block, -1)  # MatMulNBits' B: [N, K / block, block bytes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mtp_edge.matmul_nbits(x, self.data, self.scales, self.bits, self.block)


class BlockQuantizedEmbedding(_BlockQuantized):
    """nn.Embedding(rows, columns) -> GatherBlockQuantized."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows_of(ids)


def block_quantized(kind: str, data: torch.Tensor, scales: torch.Tensor, scheme: str, group: int) -> _BlockQuantized:
    return (BlockQuantizedEmbedding if kind == "embedding" else BlockQuantizedLinear)(data, scales, scheme, group)
