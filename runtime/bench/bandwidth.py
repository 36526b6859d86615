"""Decode's achieved weight bandwidth against the machine's: how close a decode runs to memory speed.

A decode step of a large target is memory-bound: it streams every weight once (models.sizes.
target_step_reads: each linear, the LM head whole, one row per embedding table). gpt-fast prints
the same figure, bytes of weights per token x tokens per second. Here it sits beside this machine's
read bandwidth, measured by summing a buffer far larger than the last-level cache, so that the
fraction says what is left to win. Weight bytes are raw bits at the bundle's recipe (4 for 8da4w,
8 for 8da8w, 32 unquantized); group scales are not counted, as `mtp-edge inspect` counts them.
"""

from __future__ import annotations

import time
from pathlib import Path

LINEAR_BITS = {"none": 32, "8da4w": 4, "8da8w": 8, "int4": 4}
EMBEDDING_BITS = {"none": 32, "emb4": 4, "emb8": 8}


def decode_weight_bytes(bundle_dir, fmt: str) -> dict:
    """Bytes of weights one target decode step of the bundle reads, at the recipe `fmt` was exported with."""
    from mtp_edge.export.manifest import read_manifest
    from mtp_edge.models.config import target_config_from_folder
    from mtp_edge.models.sizes import build_target, target_step_reads
    from mtp_edge.quantize.recipes import parse_recipe

    manifest = read_manifest(bundle_dir, verify_hashes=False)
    recipe = parse_recipe(manifest.quantization.recipe_for(fmt) if fmt != "eager" else "none", "onnx" if fmt == "onnx" else "pte")
    scheme = recipe.target
    reads = {name: part["parameters"] for name, part in target_step_reads(build_target(target_config_from_folder(Path(bundle_dir))))["reads"].items()}
    linear_bits, embedding_bits = LINEAR_BITS[scheme.linear], EMBEDDING_BITS[scheme.embedding]
    # The LM head is a linear (a tied one is untied and follows the linear scheme, quantize.recipes).
    bits = {"weights": linear_bits, "lm_head": linear_bits, "embedding_rows": embedding_bits}
    return {"recipe": scheme.text(), "parameters": sum(reads.values()),
            "bytes": sum(reads[name] * bits[name] // 8 for name in reads)}


def machine_read_bandwidth(size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second this machine reads from memory: the best of `repeats` sums of a float32 buffer
    of size_bytes (far above the last-level cache), on torch's default threads (all cores)."""
    import torch

    buffer = torch.ones(size_bytes // 4, dtype=torch.float32)
    buffer.sum()  # pages in, threads up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return buffer.numel() * 4 / best


def decode_bandwidth(bundle_dir, fmt: str, decode_ms: float, machine_bytes_per_s: float | None = None) -> dict:
    """Achieved weight bandwidth of a decode of `decode_ms`, the machine's read bandwidth, and their ratio."""
    weights = decode_weight_bytes(bundle_dir, fmt)
    achieved = weights["bytes"] / (decode_ms / 1e3)
    machine = machine_read_bandwidth() if machine_bytes_per_s is None else machine_bytes_per_s
    return {"weight_bytes_per_decode": weights["bytes"], "weight_parameters_per_decode": weights["parameters"],
            "recipe": weights["recipe"], "decode_ms": decode_ms, "achieved_gb_s": achieved / 1e9,
            "machine_read_gb_s": machine / 1e9, "fraction_of_machine": achieved / machine}


def format_bandwidth(b: dict) -> str:
    return (f"decode reads {b['weight_bytes_per_decode'] / 1e9:.3f} GB of weights ({b['recipe']}) in {b['decode_ms']:.1f} ms: "
            f"{b['achieved_gb_s']:.1f} GB/s achieved, {b['machine_read_gb_s']:.1f} GB/s machine read bandwidth "
            f"({b['fraction_of_machine']:.0%})")
