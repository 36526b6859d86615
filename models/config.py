"""Target and drafter configurations: presets and Hugging Face config.json parsing.

The transformers config classes (pinned 5.24.0) do the parsing and fill in Gemma 4's defaults;
this module flattens them into small frozen dataclasses that the export-friendly modules read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import CheckpointError

SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)

TARGET_MODEL_TYPES = ("gemma4_text", "gemma4")
DRAFTER_MODEL_TYPES = ("gemma4_assistant",)


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    partial_rotary_factor: float = 1.0  # "proportional" rope rotates only this share of each head


@dataclass(frozen=True)
class DecoderConfig:
    """One Gemma 4 text decoder: the target, or the drafter's backbone."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_types: tuple[str, ...]
    head_dims: tuple[int, ...]  # per layer: full layers use global_head_dim
    num_kv_heads: tuple[int, ...]  # per layer: full layers may use num_global_key_value_heads
    sliding_window: int
    rope: dict[str, RopeConfig]  # keyed by layer type
    rms_norm_eps: float = 1e-6
    final_logit_softcap: float | None = None
    ple_dim: int = 0  # hidden_size_per_layer_input; 0 disables Per-Layer Embeddings
    ple_vocab_size: int = 0
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False
    attention_k_eq_v: bool = False
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    eos_token_ids: tuple[int, ...] = (1,)
    bos_token_id: int | None = 2
    pad_token_id: int | None = 0

    @property
    def first_shared_layer(self) -> int:
        return self.num_layers - self.num_kv_shared_layers

    def is_kv_shared(self, layer: int) -> bool:
        """A KV-shared ("reuse") layer computes no K/V; it reads its store layer's."""
        return layer >= self.first_shared_layer

    @property
    def store_layers(self) -> dict[str, int]:
        """Per layer type, the last non-shared layer: its K/V serve the shared layers and the drafter."""
        stores = {}
        for i in range(self.first_shared_layer):
            stores[self.layer_types[i]] = i
        return stores

    def kv_source(self, layer: int) -> int:
        """The layer whose cache this layer attends to (itself unless KV-shared)."""
        return self.store_layers[self.layer_types[layer]] if self.is_kv_shared(layer) else layer

    @property
    def cache_layers(self) -> tuple[int, ...]:
        """Layers that own a KV cache: every non-shared layer."""
        return tuple(range(self.first_shared_layer))

    def mlp_size(self, layer: int) -> int:
        return self.intermediate_size * (2 if self.use_double_wide_mlp and self.is_kv_shared(layer) else 1)


@dataclass(frozen=True)
class DrafterConfig:
    """The Gemma 4 assistant ("MTP drafter"): a decoder whose every layer reads the target's K/V."""

    decoder: DecoderConfig
    backbone_hidden_size: int
    use_ordered_embeddings: bool = False  # clustered (centroid) LM head
    num_centroids: int = 2048
    centroid_top_k: int = 32

    @property
    def tokens_per_centroid(self) -> int:
        return self.decoder.vocab_size // self.num_centroids

    @property
    def num_candidates(self) -> int:
        return self.centroid_top_k * self.tokens_per_centroid


@dataclass(frozen=True)
class ModelPair:
    target: DecoderConfig
    drafter: DrafterConfig | None = None


# --------------------------------------------------------------------------- HF parsing


def _hf_text_to_decoder(text, eos_override=None) -> DecoderConfig:
    """Flatten a transformers Gemma4TextConfig (already validated by transformers)."""
    if getattr(text, "enable_moe_block", False):
        raise CheckpointError(
            "enable_moe_block=True (the 26B-A4B mixture of experts) is not supported: mtp-edge exports the "
            "dense E2B/E4B family. Use a gemma-4 E2B/E4B checkpoint."
        )
    n = text.num_hidden_layers
    per_layer = [text.per_layer_config[i] for i in range(n)]
    rope = {}
    for layer_type in dict.fromkeys(text.layer_types):  # first-seen order: a set would order by hash seed
        params = text.rope_parameters[layer_type]
        rope_type = params.get("rope_type", "default")
        if rope_type not in ("default", "proportional"):
            raise CheckpointError(f"rope_type {rope_type!r} for {layer_type} is not supported (expected default or proportional).")
        factor = params.get("factor", 1.0)
        if factor != 1.0:
            raise CheckpointError(f"rope scaling factor {factor} for {layer_type} is not supported (expected 1.0).")
        partial = params.get("partial_rotary_factor", 1.0) if rope_type == "proportional" else 1.0
        rope[layer_type] = RopeConfig(theta=float(params["rope_theta"]), partial_rotary_factor=float(partial))
    eos = eos_override if eos_override is not None else text.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    return DecoderConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=n,
        num_heads=text.num_attention_heads,
        layer_types=tuple(text.layer_types),
        head_dims=tuple(c.head_dim for c in per_layer),
        num_kv_heads=tuple(c.num_key_value_heads for c in per_layer),
        sliding_window=text.sliding_window,
        rope=rope,
        rms_norm_eps=text.rms_norm_eps,
        final_logit_softcap=text.final_logit_softcapping,
        ple_dim=text.hidden_size_per_layer_input or 0,
        ple_vocab_size=text.vocab_size_per_layer_input or 0,
        num_kv_shared_layers=text.num_kv_shared_layers or 0,
        use_double_wide_mlp=bool(text.use_double_wide_mlp),
        attention_k_eq_v=bool(text.attention_k_eq_v),
        hidden_activation=text.hidden_activation,
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", True)),
        eos_token_ids=eos_ids,
        bos_token_id=text.bos_token_id,
        pad_token_id=text.pad_token_id,
    )


def hf_config_to_target(hf_config, eos_override=None) -> DecoderConfig:
    text = hf_config.get_text_config() if hf_config.model_type == "gemma4" else hf_config
    decoder = _hf_text_to_decoder(text, eos_override)
    if hf_config.model_type == "gemma4":
        decoder = replace(decoder, tie_word_embeddings=bool(hf_config.tie_word_embeddings))
    return decoder


def hf_config_to_drafter(hf_config) -> DrafterConfig:
    decoder = _hf_text_to_decoder(hf_config.text_config)
    if decoder.num_kv_shared_layers != decoder.num_layers:
        raise CheckpointError(
            f"drafter has {decoder.num_kv_shared_layers} KV-shared layers of {decoder.num_layers}; "
            "a Gemma 4 assistant must share every layer."
        )
    return DrafterConfig(
        decoder=replace(decoder, tie_word_embeddings=bool(hf_config.tie_word_embeddings)),
        backbone_hidden_size=hf_config.backbone_hidden_size,
        use_ordered_embeddings=bool(hf_config.use_ordered_embeddings),
        num_centroids=hf_config.num_centroids,
        centroid_top_k=hf_config.centroid_intermediate_top_k,
    )


def read_config_json(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory. Pass a Hugging Face checkpoint folder.")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing config.json. A Hugging Face checkpoint folder holds config.json and model.safetensors.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}).") from None


def load_hf_config(folder: str | Path):
    """Parse config.json with transformers; returns the transformers config object."""
    raw = read_config_json(folder)
    model_type = raw.get("model_type")
    known = TARGET_MODEL_TYPES + DRAFTER_MODEL_TYPES
    if model_type not in known:
        raise CheckpointError(
            f"{Path(folder) / 'config.json'}: unknown model_type {model_type!r}; expected one of {', '.join(known)}."
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: transformers rejected the config: {e}") from None


def generation_eos_ids(folder: str | Path) -> tuple[int, ...] | None:
    """EOS ids from generation_config.json, which overrides config.json's when present."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return None
    return tuple(eos) if isinstance(eos, list) else (eos,)


def target_config_from_folder(folder: str | Path) -> DecoderConfig:
    hf = load_hf_config(folder)
    if hf.model_type not in TARGET_MODEL_TYPES:
        raise CheckpointError(f"{folder}: model_type {hf.model_type!r} is a drafter, expected a target ({', '.join(TARGET_MODEL_TYPES)}).")
    return hf_config_to_target(hf, generation_eos_ids(folder))


def drafter_config_from_folder(folder: str | Path) -> DrafterConfig:
    hf = load_hf_config(folder)
    if hf.model_type not in DRAFTER_MODEL_TYPES:
        raise CheckpointError(f"{folder}: model_type {hf.model_type!r} is not a drafter, expected gemma4_assistant.")
    return hf_config_to_drafter(hf)


def check_pair(target: DecoderConfig, drafter: DrafterConfig) -> None:
    """A drafter reads the target's hidden state, embeddings and stored K/V: their shapes must agree."""
    if drafter.backbone_hidden_size != target.hidden_size:
        raise CheckpointError(
            f"drafter backbone_hidden_size {drafter.backbone_hidden_size} does not match the target's hidden_size "
            f"{target.hidden_size}: this drafter was trained for another target."
        )
    if drafter.decoder.vocab_size != target.vocab_size:
        raise CheckpointError(
            f"drafter vocab_size {drafter.decoder.vocab_size} does not match the target's vocab_size {target.vocab_size}: "
            "this drafter was trained for another target."
        )
    stores = target.store_layers
    for i, layer_type in enumerate(drafter.decoder.layer_types):
        if layer_type not in stores:
            raise CheckpointError(f"drafter layer {i} is {layer_type} but the target stores no K/V of that type.")
        s = stores[layer_type]
        if (drafter.decoder.head_dims[i], drafter.decoder.num_kv_heads[i]) != (target.head_dims[s], target.num_kv_heads[s]):
            raise CheckpointError(
                f"drafter layer {i} ({layer_type}) expects K/V of head_dim {drafter.decoder.head_dims[i]} x "
                f"{drafter.decoder.num_kv_heads[i]} heads; the target's store layer {s} has {target.head_dims[s]} x "
                f"{target.num_kv_heads[s]}."
            )


# --------------------------------------------------------------------------- presets


def _text_config(**kw):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**kw)


def _layer_pattern(num_layers: int, sliding_per_full: int) -> list[str]:
    period = sliding_per_full + 1
    return [FULL if (i + 1) % period == 0 else SLIDING for i in range(num_layers)]


def preset_hf_configs(name: str):
    """transformers configs for the named preset: (Gemma4TextConfig, Gemma4AssistantConfig)."""
    from transformers import Gemma4AssistantConfig

    if name in ("e2b", "e4b"):
        e2b = name == "e2b"
        hidden = 1536 if e2b else 2560
        layers = 35 if e2b else 42
        kv_heads = 1 if e2b else 2
        target = _text_config(
            vocab_size=262144, hidden_size=hidden, intermediate_size=6144 if e2b else 10240,
            num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=kv_heads,
            head_dim=256, global_head_dim=512, layer_types=_layer_pattern(layers, 4 if e2b else 5),
            sliding_window=512, final_logit_softcapping=30.0, hidden_size_per_layer_input=256,
            vocab_size_per_layer_input=262144, num_kv_shared_layers=20 if e2b else 18,
            use_double_wide_mlp=e2b, max_position_embeddings=131072, eos_token_id=[1, 106],
        )
        drafter_text = _text_config(
            vocab_size=262144, hidden_size=256, intermediate_size=2048, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=256, global_head_dim=512,
            layer_types=[SLIDING, SLIDING, SLIDING, FULL], sliding_window=512,
            hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, num_kv_shared_layers=4,
        )
        drafter = Gemma4AssistantConfig(
            text_config=drafter_text, backbone_hidden_size=hidden, use_ordered_embeddings=True,
            num_centroids=2048, centroid_intermediate_top_k=32,
        )
        return target, drafter
    if name == "tiny":
        target = _text_config(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=2, layer_types=[SLIDING, SLIDING, FULL, SLIDING, FULL],
            sliding_window=8, final_logit_softcapping=30.0, hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=512, num_kv_shared_layers=2, use_double_wide_mlp=True,
            attention_k_eq_v=True,
        )
        drafter_text = _text_config(
            vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=2, layer_types=[SLIDING, FULL], sliding_window=8,
            hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, num_kv_shared_layers=2,
            attention_k_eq_v=True,
        )
        drafter = Gemma4AssistantConfig(
            text_config=drafter_text, backbone_hidden_size=64, use_ordered_embeddings=True,
            num_centroids=16, centroid_intermediate_top_k=4,
        )
        return target, drafter
    raise CheckpointError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a checkpoint folder.")


PRESETS = ("e2b", "e4b", "tiny")


def preset(name: str) -> ModelPair:
    target, drafter = preset_hf_configs(name)
    return ModelPair(hf_config_to_target(target), hf_config_to_drafter(drafter))
