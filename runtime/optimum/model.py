"""MtpEdgeModelForCausalLM: an mtp-edge bundle behind optimum's OptimizedModel, for transformers users.

    model = MtpEdgeModelForCausalLM.from_pretrained("gemma-4-E2B-it", drafter="gemma-4-E2B-it-assistant",
                                                    export=True, format="pte", quantize="default")
    ids = model.generate(input_ids, max_new_tokens=64)     # speculative decoding; ids shaped like transformers'
    model.last_stats[0].acceptance_rate                    # what the last call did, one entry per row
    model.save_pretrained("gemma-4-e2b-bundle")            # a bundle, as written by `mtp-edge export`
    model = MtpEdgeModelForCausalLM.from_pretrained("gemma-4-e2b-bundle")   # no export this time

The export is runtime.cli's and export.bundle's and the decoding is runtime.speculative's generate:
this class only translates transformers' conventions (batches, attention masks, GenerationConfig,
streamers, the returned tensor) to them. Folders only: download checkpoints first
(`hf download ID --local-dir DIR`); nothing here reaches the network.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import torch
from optimum.modeling_base import OptimizedModel
from transformers import AutoConfig, GenerationConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

from mtp_edge.export.bundle import MANIFEST, BundleManifest, copy_bundle, read_manifest, write_bundle
from mtp_edge.export.settings import DEFAULT, ExportSettings
from mtp_edge.models.errors import MtpEdgeError

from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.commands.evaluate import teacher_forced_logits
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import GenerationStats, generate

# GenerationConfig fields generate() follows; any other field a caller sets to a non-default value
# is refused rather than silently ignored (beam search, penalties, ... would change the output).
FOLLOWED = {"max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
            "pad_token_id", "bos_token_id", "num_assistant_tokens", "use_cache"}
# Accepted by generate() beside GenerationConfig fields; `seed` is mtp-edge's own (see generate).
# token_type_ids is accepted (and ignored: Gemma has none) so that `generate(**tokenizer(...))` works.
CALL_ARGUMENTS = {"attention_mask", "streamer", "seed", "generation_config", "token_type_ids"}


class MtpEdgeModelError(MtpEdgeError, ValueError):
    """from_pretrained / save_pretrained / generate used in a way this model class cannot serve."""


class MtpEdgeModelForCausalLM(OptimizedModel):
    """A target + MTP drafter pair exported to a bundle and run by one of the bundle's backends."""

    export_feature = "text-generation"
    auto_model_class = None

    def __init__(self, bundle_dir: str | Path, *, config: PretrainedConfig | None = None, backend: str | None = None,
                 threads: int | None = None, owned_dir: tempfile.TemporaryDirectory | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir, verify_hashes=False)  # the backend checks them as it opens
        runtime = open_bundle(self.bundle_dir, backend, threads=threads)
        if config is None:
            config = AutoConfig.from_pretrained(self.bundle_dir) if (self.bundle_dir / "config.json").is_file() \
                else PretrainedConfig(vocab_size=self.manifest.vocab_size)
        super().__init__(runtime, config)
        self.backend_name = backend or self.manifest.formats[0]
        self.generation_config = _generation_defaults(self.bundle_dir, self.manifest)
        self.last_stats: list[GenerationStats] = []
        self._owned_dir = owned_dir  # an export made by from_pretrained(export=True) lives as long as the model

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, model_id: str | Path, config: PretrainedConfig | None = None, export: bool = False,
                        **kwargs) -> "MtpEdgeModelForCausalLM":
        """Load a bundle, or with export=True export a transformers checkpoint pair first.

        export=True: drafter=DIR (required), format="pte" | "onnx" | "pte,onnx", quantize="default"
        (each format's default recipe) | "none" (fp32) | a recipe string, max_seq_len=1024, k=4,
        prefill_chunk=32, pte_backend="xnnpack" | "portable", draft_chains=None (every length 2..k) | "none" |
        (2, 4) (together an ExportSettings), progress=True.
        Both: backend="pte" | "onnx" (default: the bundle's first format), threads (ONNX Runtime). Hub
        options are accepted and unused.
        """
        folder = Path(model_id)
        if not folder.is_dir():
            raise MtpEdgeModelError(
                f"{model_id}: not a local folder. mtp-edge reads local checkpoints and bundles only; download the "
                f"checkpoint first (for example `hf download {model_id} --local-dir DIR`) and pass DIR."
            )
        is_bundle = (folder / MANIFEST).is_file()
        if export and is_bundle:
            raise MtpEdgeModelError(f"{folder} is already an mtp-edge bundle; load it with export=False.")
        if not export and not is_bundle:
            hint = ("it looks like a transformers checkpoint: pass export=True and drafter=DIR to export it"
                    if (folder / "config.json").is_file() else "pass a folder written by save_pretrained or `mtp-edge export`")
            raise MtpEdgeModelError(f"{folder}: not an mtp-edge bundle (no {MANIFEST}); {hint}.")
        load = cls._export if export else cls._from_pretrained
        return load(model_id=folder, config=config, **kwargs)

    @classmethod
    def _from_pretrained(cls, model_id: str | Path, config: PretrainedConfig | None = None, *, backend: str | None = None,
                         threads: int | None = None, **hub_kwargs) -> "MtpEdgeModelForCausalLM":
        _check_unused(hub_kwargs)
        return cls(model_id, config=config, backend=backend, threads=threads)

    @classmethod
    def _export(cls, model_id: str | Path, config: PretrainedConfig | None = None, *, drafter: str | Path | None = None,
                format: str = "pte", quantize: str = DEFAULT, max_seq_len: int = 1024, k: int = 4,
                prefill_chunk: int = 32, pte_backend: str = "xnnpack", draft_chains: str | tuple | None = None,
                backend: str | None = None, threads: int | None = None, progress: bool = True, **hub_kwargs) -> "MtpEdgeModelForCausalLM":
        from mtp_edge.models.config import check_pair, drafter_config_from_folder, target_config_from_folder

        _check_unused(hub_kwargs)
        if drafter is None:
            raise MtpEdgeModelError("export=True needs drafter=DIR: the MTP drafter (assistant) checkpoint of this target.")
        if not Path(drafter).is_dir():
            raise MtpEdgeModelError(f"drafter={drafter}: not a local folder; pass the drafter checkpoint folder.")
        settings = ExportSettings(k=k, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk, backend=pte_backend,
                                  formats=format, quantize=quantize, draft_chains=draft_chains)  # checked before any config is read
        # Configs only: a drafter made for another target is refused before any weight is read.
        check_pair(target_config_from_folder(model_id), drafter_config_from_folder(drafter))
        owned = tempfile.TemporaryDirectory(prefix="mtp-edge-export-")
        bundle = Path(owned.name) / "bundle"
        write_bundle(model_id, drafter, bundle, settings, progress=progress)
        return cls(bundle, config=config, backend=backend, threads=threads, owned_dir=owned)

    def save_pretrained(self, save_directory: str | Path, push_to_hub: bool = False, **kwargs) -> None:
        """Write the bundle to save_directory (replacing an old bundle there; any other non-empty folder is refused)."""
        if push_to_hub:
            raise MtpEdgeModelError("push_to_hub is not supported: save_pretrained writes a local bundle; upload the folder yourself.")
        self._save_pretrained(save_directory)

    def _save_pretrained(self, save_directory) -> None:  # OptimizedModel's hook
        copy_bundle(self.bundle_dir, save_directory)

    # ------------------------------------------------------------------ running

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def can_generate(self) -> bool:
        return True

    def forward(self, input_ids, attention_mask=None, **kwargs) -> CausalLMOutput:
        """Teacher-forced logits [1, seq, vocab] of the bundle's target (one sequence; no KV cache is returned)."""
        rows = _rows(input_ids, attention_mask)
        if len(rows) != 1:
            raise MtpEdgeModelError(f"forward takes one sequence, got a batch of {len(rows)}; call it once per row.")
        ids = rows[0]
        if not 1 <= len(ids) <= self.model.max_seq_len:
            raise MtpEdgeModelError(f"forward needs 1..{self.model.max_seq_len} tokens (the bundle's context), got {len(ids)}.")
        logits = teacher_forced_logits(self.model, ids, self.model.max_draft + 1)
        return CausalLMOutput(logits=logits.float().unsqueeze(0))

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, generation_config: GenerationConfig | None = None,
                 streamer=None, seed: int | None = None, token_type_ids=None, **kwargs) -> torch.LongTensor:
        """Speculative decoding of each row, returned as transformers' generate returns it: [batch, prompt + new]
        token ids, prompt (with its padding) first, finished rows padded with pad_token_id.

        Follows GenerationConfig's max_new_tokens / max_length, do_sample, temperature, top_k, top_p,
        eos_token_id, pad_token_id, and num_assistant_tokens (draft tokens per round, at most the
        bundle's K; 0 = the target alone; unset = chosen each round by the draft-length policy, as
        `--k auto`); the bundle's generation_config.json gives the defaults.
        Sampling draws from mtp-edge's own seeded generator: `seed` fixes it, otherwise it is drawn
        from torch's generator (torch.manual_seed makes calls repeatable). Statistics: self.last_stats.
        """
        if input_ids is None:
            raise MtpEdgeModelError("generate needs input_ids (a [batch, seq] tensor of token ids).")
        gen = self._resolve(generation_config, kwargs)
        rows = _rows(input_ids, attention_mask)
        prompts = torch.as_tensor(input_ids).reshape(len(rows), -1)
        if streamer is not None and len(rows) != 1:
            raise MtpEdgeModelError("a streamer needs a batch of one sequence, as in transformers.")
        max_new = gen.max_new_tokens if gen.max_new_tokens is not None else gen.max_length - prompts.shape[1]
        if max_new < 1:
            raise MtpEdgeModelError(
                f"nothing to generate: max_length={gen.max_length} leaves no room after a {prompts.shape[1]}-token prompt; "
                "pass max_new_tokens."
            )
        # Unset: the draft length is chosen each round by mtp-edge's policy (k="auto").
        k = "auto" if gen.num_assistant_tokens is None else int(gen.num_assistant_tokens)
        if k != "auto" and not 0 <= k <= self.model.max_draft:
            raise MtpEdgeModelError(
                f"num_assistant_tokens={k}: this bundle verifies 0..{self.model.max_draft} draft tokens per round "
                "(its K); pass a value in that range or export again with a larger k."
            )
        eos = gen.eos_token_id if gen.eos_token_id is not None else list(self.model.eos_ids)
        eos = [eos] if isinstance(eos, int) else list(eos)
        pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else 0)
        if seed is None:  # torch's generator decides, so torch.manual_seed governs repeatability as in transformers
            seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
        sampling = SamplingConfig(temperature=gen.temperature if gen.do_sample else 0.0,
                                  top_k=(gen.top_k or 0) if gen.do_sample else 0,
                                  top_p=gen.top_p if gen.do_sample else 1.0, seed=seed)

        if streamer is not None:
            streamer.put(prompts.cpu())
        on_token = (lambda t: streamer.put(torch.tensor([t]))) if streamer is not None else None
        outputs, self.last_stats = [], []
        for i, prompt in enumerate(rows):
            result = generate(self.model, prompt, k=k, max_new_tokens=max_new,
                              sampling=dataclasses.replace(sampling, seed=seed + i),
                              eos_ids=eos, on_token=on_token)
            outputs.append(result.tokens)
            self.last_stats.append(result.stats)
        if streamer is not None:
            streamer.end()
        width = max(len(t) for t in outputs)
        new = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, tokens in enumerate(outputs):
            new[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return torch.cat([prompts.to(torch.long), new], dim=1)

    def _resolve(self, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
        """Defaults <- the bundle's generation config (or the one passed) <- keyword arguments; refuse what
        the speculative loop cannot do instead of ignoring it."""
        gen = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        for name, value in GenerationConfig._get_default_generation_params().items():
            # transformers' default of 20 assistant tokens is for its own assisted decoding; ours is the bundle's K.
            if getattr(gen, name, None) is None and name != "num_assistant_tokens":
                setattr(gen, name, value)
        unknown = gen.update(**kwargs)
        if unknown:
            raise MtpEdgeModelError(
                f"generate() got unexpected argument(s) {sorted(unknown)}; it takes input_ids, "
                f"{', '.join(sorted(CALL_ARGUMENTS))} and GenerationConfig fields."
            )
        defaults = GenerationConfig._get_default_generation_params()
        refused = {name: value for name, value in kwargs.items()
                   if name not in FOLLOWED and value is not None and value != defaults.get(name)}
        if refused:
            raise MtpEdgeModelError(
                f"generate() does not support {', '.join(f'{n}={v!r}' for n, v in sorted(refused.items()))}: mtp-edge "
                f"runs greedy or sampled speculative decoding only. Supported: {', '.join(sorted(FOLLOWED))}."
            )
        if gen.do_sample and not gen.temperature > 0:
            raise MtpEdgeModelError(f"do_sample=True needs temperature > 0, got {gen.temperature}.")
        return gen

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bundle={self.bundle_dir}, backend={self.backend_name}, k={self.model.max_draft})"


def _generation_defaults(bundle_dir: Path, manifest: BundleManifest) -> GenerationConfig:
    if (bundle_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(bundle_dir)
    return GenerationConfig(eos_token_id=list(manifest.eos_token_ids), pad_token_id=manifest.pad_token_id,
                            bos_token_id=manifest.bos_token_id)


def _rows(input_ids, attention_mask) -> list[list[int]]:
    """Each row's real tokens: padding (attention_mask 0, left or right) removed, as transformers ignores it."""
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype.is_floating_point:
        raise MtpEdgeModelError(f"input_ids must be integer token ids shaped [batch, seq], got {tuple(ids.shape)} {ids.dtype}.")
    if attention_mask is None:
        return [row.tolist() for row in ids]
    mask = torch.as_tensor(attention_mask).reshape(ids.shape).bool()
    rows = [row[m].tolist() for row, m in zip(ids, mask)]
    if any(not row for row in rows):
        raise MtpEdgeModelError("a row of attention_mask is all zeros: every sequence needs at least one token.")
    return rows


def _check_unused(hub_kwargs: dict) -> None:
    """OptimizedModel's hub options are accepted (local folders need none of them); anything else is a mistake."""
    hub = {"subfolder", "revision", "force_download", "local_files_only", "trust_remote_code", "cache_dir", "token"}
    unknown = sorted(set(hub_kwargs) - hub)
    if unknown:
        raise MtpEdgeModelError(f"from_pretrained got unexpected argument(s) {unknown}.")

