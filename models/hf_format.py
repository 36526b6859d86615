"""mtp_edge modules -> Hugging Face checkpoint folders: the write side of load.py.

The folders are what transformers' Gemma4ForCausalLM / Gemma4AssistantForCausalLM save: the
same config.json, generation_config.json and model.safetensors keys, so transformers and
load.py both read them back.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import fields
from pathlib import Path

import safetensors.torch
import torch

from .config import FULL, SLIDING, DecoderConfig, DrafterConfig, hf_config_to_drafter, hf_config_to_target
from .drafter import Gemma4Drafter
from .errors import CheckpointError
from .load import INDEX_FILE, SINGLE_FILE
from .target import Gemma4Target

SHARD_BYTES = 2 << 30  # per safetensors file when saving

MAX_POSITION_EMBEDDINGS = 131072  # Gemma 4 E2B/E4B's; the modules themselves take max_seq_len at load
DRAFTER_INNER_MODEL = ("layers.", "norm.", "embed_tokens.")  # under "model." in the assistant's keys


# --------------------------------------------------------------------------- configs


def _per_type(cfg: DecoderConfig, layer_type: str) -> tuple[int, int] | None:
    """(head_dim, kv_heads) shared by every layer of this type; transformers has one pair per type."""
    found = {(cfg.head_dims[i], cfg.num_kv_heads[i]) for i, t in enumerate(cfg.layer_types) if t == layer_type}
    if len(found) > 1:
        raise CheckpointError(
            f"{layer_type} layers differ in (head_dim, kv_heads) {sorted(found)}; Gemma4TextConfig has one pair per layer type."
        )
    return found.pop() if found else None


def _eos(ids) -> int | list[int] | None:
    ids = list(ids)
    return ids[0] if len(ids) == 1 else (ids or None)


def _check_same(written, wanted, what: str) -> None:
    """Guard: the config transformers built must parse back to exactly the one we were given."""
    diff = [f.name for f in fields(wanted) if getattr(written, f.name) != getattr(wanted, f.name)]
    if diff:
        raise CheckpointError(f"{what} cannot be written as a transformers config: it would change {', '.join(diff)}.")


def decoder_to_hf_text_config(cfg: DecoderConfig):
    """A transformers Gemma4TextConfig that parses back (hf_config_to_target) to exactly `cfg`."""
    from transformers import Gemma4TextConfig

    if cfg.layer_types[-1] != FULL:
        raise CheckpointError("the last layer is sliding_attention; Gemma4TextConfig forces the last layer to full_attention.")
    full = _per_type(cfg, FULL)
    sliding = _per_type(cfg, SLIDING) or full
    global_kv_heads = None
    if full[1] != sliding[1]:
        # transformers applies num_global_key_value_heads only when attention_k_eq_v is set.
        if not cfg.attention_k_eq_v:
            raise CheckpointError(
                f"full layers have {full[1]} KV heads and sliding layers {sliding[1]}: Gemma4TextConfig allows "
                "different KV heads on full layers only with attention_k_eq_v=True."
            )
        global_kv_heads = full[1]
    rope = {
        layer_type: {"rope_type": "default", "rope_theta": r.theta}
        if r.partial_rotary_factor == 1.0
        else {"rope_type": "proportional", "partial_rotary_factor": r.partial_rotary_factor, "rope_theta": r.theta}
        for layer_type, r in cfg.rope.items()
    }
    hf = Gemma4TextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=sliding[1],
        head_dim=sliding[0],
        global_head_dim=full[0],
        num_global_key_value_heads=global_kv_heads,
        layer_types=list(cfg.layer_types),
        sliding_window=cfg.sliding_window,
        rope_parameters=rope,
        rms_norm_eps=cfg.rms_norm_eps,
        final_logit_softcapping=cfg.final_logit_softcap,
        hidden_size_per_layer_input=cfg.ple_dim,
        vocab_size_per_layer_input=cfg.ple_vocab_size,
        num_kv_shared_layers=cfg.num_kv_shared_layers,
        use_double_wide_mlp=cfg.use_double_wide_mlp,
        attention_k_eq_v=cfg.attention_k_eq_v,
        hidden_activation=cfg.hidden_activation,
        tie_word_embeddings=cfg.tie_word_embeddings,
        eos_token_id=_eos(cfg.eos_token_ids),
        bos_token_id=cfg.bos_token_id,
        pad_token_id=cfg.pad_token_id,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
    )
    _check_same(hf_config_to_target(hf), cfg, "this decoder config")
    return hf


def drafter_to_hf_config(cfg: DrafterConfig):
    """A transformers Gemma4AssistantConfig that parses back (hf_config_to_drafter) to exactly `cfg`."""
    from transformers import Gemma4AssistantConfig

    hf = Gemma4AssistantConfig(
        text_config=decoder_to_hf_text_config(cfg.decoder),
        backbone_hidden_size=cfg.backbone_hidden_size,
        use_ordered_embeddings=cfg.use_ordered_embeddings,
        num_centroids=cfg.num_centroids,
        centroid_intermediate_top_k=cfg.centroid_top_k,
        tie_word_embeddings=cfg.decoder.tie_word_embeddings,
    )
    _check_same(hf_config_to_drafter(hf), cfg, "this drafter config")
    return hf


# --------------------------------------------------------------------------- checkpoints


def save_target(
    model: Gemma4Target,
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    tokenizer_file: str | Path | None = None,
    eos_token_ids=None,
) -> Path:
    """Write `model` as a Gemma4ForCausalLM checkpoint folder; eos_token_ids overrides the config's in generation_config.json."""
    cfg = model.cfg
    hf = decoder_to_hf_text_config(cfg)
    hf.architectures = ["Gemma4ForCausalLM"]
    tensors = {k if k == "lm_head.weight" else "model." + k: v for k, v in model.state_dict().items()}
    eos = cfg.eos_token_ids if eos_token_ids is None else eos_token_ids
    generation = dict(bos_token_id=cfg.bos_token_id, eos_token_id=_eos(eos), pad_token_id=cfg.pad_token_id)
    return _write(Path(folder), hf, tensors, dtype, generation, tokenizer_file)


def save_drafter(model: Gemma4Drafter, folder: str | Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `model` as a Gemma4AssistantForCausalLM checkpoint folder."""
    d = model.cfg.decoder
    hf = drafter_to_hf_config(model.cfg)
    hf.architectures = ["Gemma4AssistantForCausalLM"]
    tensors = {"model." + k if k.startswith(DRAFTER_INNER_MODEL) else k: v for k, v in model.state_dict().items()}
    generation = dict(bos_token_id=d.bos_token_id, eos_token_id=_eos(d.eos_token_ids), pad_token_id=d.pad_token_id)
    return _write(Path(folder), hf, tensors, dtype, generation, None)


def _write(folder: Path, hf_config, tensors: dict, dtype: torch.dtype, generation: dict, tokenizer_file) -> Path:
    """Build the checkpoint in a hidden sibling folder, then swap it in: an interrupted save leaves
    the old folder (or none) in place, never a half-written one under the real name."""
    from transformers import GenerationConfig

    _check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(folder, "partial")
    partial.mkdir()
    try:
        _save_tensors(partial, {name: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
                                for name, t in tensors.items()})
        GenerationConfig(**generation).save_pretrained(partial)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, partial / "tokenizer.json")
        hf_config.dtype = dtype
        # config.json last: without it even the hidden folder is no loadable checkpoint.
        hf_config.save_pretrained(partial)
        _swap_in(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def _save_tensors(folder: Path, tensors: dict) -> None:
    """One model.safetensors, or shards of at most SHARD_BYTES and an index (as save_pretrained does):
    safetensors serializes a whole file in memory, so a single file would double peak memory."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= SHARD_BYTES:
        safetensors.torch.save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
        return
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors.torch.save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _sibling(folder: Path, tag: str) -> Path:
    return folder.parent / f".{folder.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _check_replaceable(folder: Path) -> None:
    """Only an empty folder or a checkpoint may be replaced: never a folder of someone's other files."""
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; choose another output path.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not empty and holds no config.json; refusing to replace it, choose another output path.")


def _swap_in(partial: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(partial, folder)
        return
    old = _sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(partial, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old)
