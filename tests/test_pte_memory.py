"""The .pte export's memory savers: packing each 4-bit embedding table once, and releasing weights.

Whole exports through them are covered by every quantized .pte test (test_quantize: tokens equal
to the eager quantized pair); here the pieces are held to executorch's own behaviour.
"""

from __future__ import annotations

import torch

from mtp_edge.export import executorch_compat as compat


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.quant_fusion._pack_embedding_weight(weight, 4)


def test_tables_are_packed_once_as_executorch_packs_them():
    from executorch.exir.passes._quant_patterns_and_replacements import _pack_embedding_weight

    gen = torch.Generator().manual_seed(0)
    table = torch.randint(-8, 8, (37, 64), dtype=torch.int8, generator=gen)
    other = torch.randint(-8, 8, (37, 64), dtype=torch.int8, generator=gen)
    expected = _pack_embedding_weight._init_fn(table, 4)
    with compat.embedding_tables_packed_once(rows_per_block=8):  # several row blocks, the last one short
        first, again, second = _pack(table), _pack(table), _pack(other)
    assert first.dtype == torch.uint8 and torch.equal(first, expected)
    assert again.data_ptr() == first.data_ptr()  # every method gets the same packed table
    assert torch.equal(second, _pack_embedding_weight._init_fn(other, 4)) and second.data_ptr() != first.data_ptr()
    outside = _pack(table)  # outside the context: executorch's implementation, a fresh tensor
    assert torch.equal(outside, expected) and outside.data_ptr() != first.data_ptr()


def test_release_weights_leaves_modules_without_tensors():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    module.register_buffer("table", torch.ones(3))
    weight = module[0].weight
    compat.release_weights(module)
    assert not list(module.parameters()) and not list(module.buffers())
    assert weight.shape == (4, 4)  # whoever else holds a weight (an exported program) still has it
