"""Hugging Face checkpoint folder -> mtp_edge modules, streaming, without building transformers models.

The modules are built on the meta device, given uninitialised storage, and filled tensor by
tensor (large tensors in row chunks) straight from the safetensors files, so peak memory stays
close to the size of the loaded model even when a bf16 checkpoint is loaded as fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from .config import (
    DecoderConfig,
    DrafterConfig,
    check_pair,
    drafter_config_from_folder,
    target_config_from_folder,
)
from .drafter import Gemma4Drafter
from .errors import CheckpointError
from .target import Gemma4Target

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CHUNK_BYTES = 64 << 20

# Key prefixes of the text decoder in the two target layouts, and in the assistant.
TEXT_PREFIXES = ("model.language_model.", "model.")
NON_TEXT_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")
SHARED_LAYER_ABSENT = ("k_proj", "v_proj", "k_norm", "v_norm")


def checkpoint_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e}).") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    else:
        raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}. Save the model with save_pretrained(safe_serialization=True).")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: shard listed in {INDEX_FILE} is missing.")
    return files


def iter_tensor_names(files: list[Path]) -> Iterator[tuple[Path, str]]:
    for path in files:
        with _open(path) as f:
            for name in f.keys():
                yield path, name


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file is truncated or corrupt, save or copy it again.") from None


def _target_key(name: str) -> str | None:
    """Checkpoint key -> module key for a target, or None for a tensor outside the text decoder."""
    if name == "lm_head.weight":
        return name
    if name.startswith(NON_TEXT_PREFIXES):
        return None
    for prefix in TEXT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


def _drafter_key(name: str) -> str | None:
    return name[len("model."):] if name.startswith("model.") else name


def _ignorable(key: str, cfg: DecoderConfig, tied: bool) -> bool:
    """Tensors a checkpoint may carry that the modules do not own."""
    if key == "lm_head.weight" and tied:
        return True
    parts = key.split(".")
    if len(parts) >= 4 and parts[0] == "layers" and parts[2] == "self_attn" and parts[3] in SHARED_LAYER_ABSENT:
        return cfg.is_kv_shared(int(parts[1]))
    return False


def _fill(module: torch.nn.Module, folder: Path, to_key, cfg: DecoderConfig, dtype: torch.dtype, sink=None) -> None:
    """Fill the module's tensors from the checkpoint; a tensor the sink claims goes to it in row chunks instead."""
    expected = dict(module.named_parameters())
    expected.update((n, b) for n, b in module.named_buffers() if n in module.state_dict())
    loaded = set()
    for path, name in iter_tensor_names(checkpoint_files(folder)):
        key = to_key(name)
        if key is None or (key not in expected and _ignorable(key, cfg, cfg.tie_word_embeddings)):
            continue
        if key not in expected:
            raise CheckpointError(f"{path.name}: unexpected tensor {name!r}: the config does not describe it (wrong config.json for these weights?).")
        dest = expected[key]
        with _open(path) as f:
            view = f.get_slice(name)
            found = tuple(view.get_shape())
            if found != tuple(dest.shape):
                raise CheckpointError(f"{path.name}: tensor {name!r} has shape {list(found)}, expected {list(dest.shape)} from config.json.")
            if sink is not None and sink.claims(key):
                sink.take(key, found[0], _row_chunks(view, dest, found, dtype, path, name))
            else:
                _copy_in_chunks(view, dest, found, dtype if dest.is_floating_point() else dest.dtype, path, name)
        loaded.add(key)
    missing = sorted(set(expected) - loaded)
    if missing:
        shapes = ", ".join(f"{m} {list(expected[m].shape)}" for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{folder}: missing tensor(s) {shapes}{more}.")


def _copy_in_chunks(view, dest: torch.Tensor, shape: tuple, dtype: torch.dtype, path: Path, name: str) -> None:
    if not shape or dest.numel() * dest.element_size() <= CHUNK_BYTES:
        try:
            dest.copy_(view[:].to(dtype))
        except (SafetensorError, RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: could not read tensor {name!r} ({e}); the file is truncated or corrupt.") from None
        return
    start = 0
    for chunk in _row_chunks(view, dest, shape, dtype, path, name):
        dest[start:start + chunk.shape[0]].copy_(chunk)
        start += chunk.shape[0]


def _row_chunks(view, dest: torch.Tensor, shape: tuple, dtype: torch.dtype, path: Path, name: str):
    """The tensor's rows, about CHUNK_BYTES of `dtype` at a time.

    A tensor larger than one chunk is read through a fresh safetensors handle per chunk: the file is
    memory-mapped, and the pages a handle has read stay in this process's RSS until it is closed, so
    reading a 1.6 GB table through one handle would add the whole table to the peak RSS."""
    step = max(1, CHUNK_BYTES // max(1, dest[0].numel() * dest.element_size()))
    for start in range(0, shape[0], step):
        try:
            if shape[0] <= step:
                chunk = view[start:start + step].to(dtype)
            else:
                with _open(path) as f:
                    chunk = f.get_slice(name)[start:start + step].to(dtype)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: could not read tensor {name!r} ({e}); the file is truncated or corrupt.") from None
        yield chunk


def _materialize(module_cls, cfg, dtype, **kwargs):
    with torch.device("meta"):
        module = module_cls(cfg, dtype=dtype, **kwargs)
    module.to_empty(device="cpu")
    module.reset_derived_buffers()
    return module


# `sink`, in the loaders below: called with the materialised module before any tensor is read, it
# returns an object whose claims(key) picks tensors and take(key, rows, chunks) receives their rows
# (mtp_edge.quantize.streaming quantizes them as they arrive), or None.


@torch.no_grad()
def load_target(folder: str | Path, max_seq_len: int, dtype: torch.dtype = torch.float32, sink=None) -> Gemma4Target:
    cfg = target_config_from_folder(folder)
    model = _materialize(Gemma4Target, cfg, dtype, max_seq_len=max_seq_len)
    _fill(model, Path(folder), _target_key, cfg, dtype, sink(model) if sink else None)
    return model.eval()


@torch.no_grad()
def load_drafter(folder: str | Path, dtype: torch.dtype = torch.float32, target: DecoderConfig | None = None,
                 sink=None) -> Gemma4Drafter:
    cfg: DrafterConfig = drafter_config_from_folder(folder)
    if target is not None:
        check_pair(target, cfg)
    model = _materialize(Gemma4Drafter, cfg, dtype)
    _fill(model, Path(folder), _drafter_key, cfg.decoder, dtype, sink(model) if sink else None)
    return model.eval()


def load_pair(target_dir, drafter_dir, max_seq_len: int, dtype: torch.dtype = torch.float32):
    target = load_target(target_dir, max_seq_len, dtype)
    return target, load_drafter(drafter_dir, dtype, target.cfg)
