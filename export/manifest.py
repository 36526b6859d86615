"""The bundle contract: manifest.json as frozen dataclasses, read and checked in one place.

    BundleManifest                  the whole manifest (schema_version 4)
      .target_config                models.config.DecoderConfig of the target
      .drafter_config               models.config.DrafterConfig of the drafter
      .formats                      ("pte",), ("onnx",) or ("pte", "onnx"): what the bundle holds
      .onnx[role]                   OnnxGraph of "target" / "drafter" (ONNX bundles): file, inputs,
                                    outputs, opset, cache_inputs (graph input -> cache buffer),
                                    new_rows_outputs (target: output -> cache buffer)
      .methods[name]                MethodSignature of the .pte's verify / draft / draft_chain_n
                                    (verify's `lengths`: the token counts it takes, 1..max(C, K+1))
      .backend                      the .pte's ExecuTorch kernels (xnnpack / portable)
      .cache                        CacheLayout: buffers (TensorInfo), max_seq_len, buffer_length,
                                    bytes, store_layers
      .k, .prefill_chunk            the largest draft length verified, prompt tokens per prefill call
      .eos_token_ids, .bos_token_id, .pad_token_id, .tokenizer
      .quantization                 Quantization: recipe, recipes (per format), recipe_for(fmt);
                                    the per-format reports stay plain mappings (their shape varies)
      .source                       Sources: the unquantized checkpoint folders (or None)
      .runtime                      RuntimeContract: shared KV cache, the padding token
      .versions, .sizes             library versions and byte counts (plain mappings)
      .artifacts[role] / .artifact(role)   Artifact: file, bytes, sha256

from_json(dict) checks the schema version, the formats and that each format's artifacts are listed;
to_json() gives back the dict write_bundle writes (same keys, same order). read_manifest(bundle_dir)
loads manifest.json, checks that every artifact is there and unmodified, and returns a BundleManifest.
Every JSON array becomes a tuple and every JSON object a read-only mapping, so a manifest cannot be
changed after it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mtp_edge.models.errors import MtpEdgeError

# 2: the .pte's verify takes any token count 1..K+1 (methods.verify.lengths; no decode method) where
# schema 1 had a verify of exactly K + 1 tokens and a decode.
# 3: the .pte carries its runtime metadata as constant methods (PROGRAM_METADATA).
# 4: no prefill method: verify(tokens, start_pos, logits_at) takes a prompt chunk too
# (methods.verify.lengths 1..max(prefill_chunk, K+1)).
# Older bundles are refused (re-export them).
SCHEMA_VERSION = 4
OLDER_SCHEMAS = {1: "schema 1 bundles verify at one padded length",
                 2: "schema 2 programs carry no runtime metadata (get_k, get_max_seq_len, ...)",
                 3: "schema 3 programs prefill through a separate method"}

# Runtime metadata in the program itself, as ExecuTorch's and optimum-executorch's LLM exports put it:
# constant methods (no inputs; an int, or a list of ints as that many outputs) a runner reads with
# Module::get / execute before it runs anything. manifest.json keeps provenance and hashes; where both
# say the same thing, a runner checks that they agree (a manifest edited to lie is caught early).
PROGRAM_METADATA = ("get_schema_version", "get_k", "get_max_seq_len", "get_vocab_size", "get_prefill_chunk",
                    "get_pad_token", "get_eos_ids")


def program_metadata(*, k: int, max_seq_len: int, vocab_size: int, prefill_chunk: int, pad_token: int,
                     eos_ids) -> dict[str, int | list[int]]:
    """The constant methods export/pte.py puts in a bundle's program (PROGRAM_METADATA, in that order)."""
    return {"get_schema_version": SCHEMA_VERSION, "get_k": int(k), "get_max_seq_len": int(max_seq_len),
            "get_vocab_size": int(vocab_size), "get_prefill_chunk": int(prefill_chunk), "get_pad_token": int(pad_token),
            "get_eos_ids": [int(i) for i in eos_ids]}
BUNDLE_FORMAT = "mtp-edge-bundle"
MANIFEST = "manifest.json"
FORMATS = ("pte", "onnx")
# Artifact roles each format needs (a manifest without `formats` is a pte bundle).
FORMAT_ARTIFACTS = {"pte": ("program",), "onnx": ("onnx_target", "onnx_drafter")}


class BundleError(MtpEdgeError, ValueError):
    """A bundle folder that is missing, incomplete, modified or of an unknown format."""


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- JSON <-> immutable values


def _freeze(value: Any) -> Any:
    """JSON objects -> read-only mappings, arrays -> tuples, all the way down."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of _freeze: plain dicts and lists, as json.dumps writes them."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _mapping(items) -> Mapping:
    return MappingProxyType(dict(items))


# --------------------------------------------------------------------------- the parts


@dataclass(frozen=True)
class TensorInfo:
    """One input, output or cache buffer: its name, shape (ONNX dynamic dims by name) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_json(cls, d: Mapping) -> TensorInfo:
        return cls(name=str(d["name"]), shape=tuple(d["shape"]), dtype=str(d["dtype"]))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _tensors(items) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo.from_json(v) for v in items)


class _Signature:
    """Lookup of inputs and outputs by name (shared by MethodSignature and OnnxGraph)."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> TensorInfo:
        return _named(self.inputs, name, "input")

    def output(self, name: str) -> TensorInfo:
        return _named(self.outputs, name, "output")


def _named(tensors: tuple[TensorInfo, ...], name: str, what: str) -> TensorInfo:
    for t in tensors:
        if t.name == name:
            return t
    raise BundleError(f"no {what} named {name!r} in {MANIFEST} (it lists {', '.join(t.name for t in tensors)}); re-export the bundle.")


@dataclass(frozen=True)
class MethodSignature(_Signature):
    """A .pte method's user inputs and outputs, in call order.

    lengths: (lowest, highest) token count of a method whose token count is dynamic (verify: its
    tokens are [1, n], its outputs' first dim n); its shapes then give the highest. None: static.
    """

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    lengths: tuple[int, int] | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> MethodSignature:
        lengths = d.get("lengths")
        return cls(inputs=_tensors(d["inputs"]), outputs=_tensors(d["outputs"]),
                   lengths=None if lengths is None else (int(lengths[0]), int(lengths[1])))

    def to_json(self) -> dict:
        out = {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}
        if self.lengths is not None:
            out["lengths"] = list(self.lengths)
        return out


@dataclass(frozen=True)
class OnnxGraph(_Signature):
    """One ONNX graph of the bundle and how it reads the KV cache the runtime owns."""

    file: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    opset: int | None = None
    cache_inputs: Mapping[str, str] = field(default_factory=lambda: _mapping({}))  # graph input -> cache buffer
    new_rows_outputs: Mapping[str, str] | None = None  # target: output -> the cache buffer its rows go to

    @classmethod
    def from_json(cls, d: Mapping) -> OnnxGraph:
        new_rows = d.get("new_rows_outputs")
        return cls(file=str(d["file"]), inputs=_tensors(d["inputs"]), outputs=_tensors(d["outputs"]),
                   opset=d.get("opset"), cache_inputs=_mapping(d.get("cache_inputs", {})),
                   new_rows_outputs=None if new_rows is None else _mapping(new_rows))

    def to_json(self) -> dict:
        out = {"file": self.file, "inputs": [t.to_json() for t in self.inputs],
               "outputs": [t.to_json() for t in self.outputs]}
        if self.opset is not None:
            out["opset"] = self.opset
        out["cache_inputs"] = dict(self.cache_inputs)
        if self.new_rows_outputs is not None:
            out["new_rows_outputs"] = dict(self.new_rows_outputs)
        return out


@dataclass(frozen=True)
class CacheLayout:
    """The target's KV cache: one buffer per K or V of each cache layer."""

    buffers: tuple[TensorInfo, ...]
    max_seq_len: int  # usable positions
    buffer_length: int  # positions allocated (spare ones take padded writes)
    bytes: int
    store_layers: Mapping[str, int]  # per layer type, the layer whose K/V the shared layers and the drafter read

    @classmethod
    def from_json(cls, d: Mapping) -> CacheLayout:
        return cls(buffers=_tensors(d["buffers"]), max_seq_len=int(d["max_seq_len"]), buffer_length=int(d["buffer_length"]),
                   bytes=int(d["bytes"]), store_layers=_mapping(d["store_layers"]))

    def to_json(self) -> dict:
        return {"buffers": [b.to_json() for b in self.buffers], "max_seq_len": self.max_seq_len,
                "buffer_length": self.buffer_length, "bytes": self.bytes, "store_layers": dict(self.store_layers)}

    def buffer(self, name: str) -> TensorInfo:
        return _named(self.buffers, name, "cache buffer")


@dataclass(frozen=True)
class Artifact:
    """A file of the bundle (listed under its role) and what it held at export."""

    file: str
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, d: Mapping) -> Artifact:
        return cls(file=str(d["file"]), bytes=int(d["bytes"]), sha256=str(d["sha256"]))

    @classmethod
    def of(cls, folder: Path, name: str) -> Artifact:
        path = Path(folder) / name
        return cls(file=name, bytes=path.stat().st_size, sha256=sha256_file(path))

    def to_json(self) -> dict:
        return {"file": self.file, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Quantization:
    """The recipe the bundle was exported with.

    recipe: the canonical --quantize text ("none" for fp32; "default (pte: ..., onnx: ...)" when the
    formats' default recipes differ); recipes: that text per format; schemes: the target and drafter
    Scheme fields when one recipe serves every format (quantize.recipes.PairRecipe.as_dict);
    details: per format, what quantizing reported (ONNX: node counts per graph; pte: the streaming
    quantizer's report), kept as plain read-only mappings since their shape varies.
    """

    recipe: str = "none"
    recipes: Mapping[str, str] = field(default_factory=lambda: _mapping({}))
    schemes: Mapping[str, Any] = field(default_factory=lambda: _mapping({}))
    details: Mapping[str, Any] = field(default_factory=lambda: _mapping({}))

    def __post_init__(self):
        for name in ("recipes", "schemes", "details"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))

    @classmethod
    def from_json(cls, d: Mapping) -> Quantization:
        known = {"recipe", "recipes"}
        return cls(recipe=str(d["recipe"]), recipes=_mapping(d.get("recipes", {})),
                   schemes=_freeze({k: v for k, v in d.items() if k not in known and k not in FORMATS}),
                   details=_freeze({k: v for k, v in d.items() if k in FORMATS}))

    def to_json(self) -> dict:
        out = {"recipe": self.recipe, **_thaw(self.schemes)}
        if self.recipes:
            out["recipes"] = dict(self.recipes)
        return {**out, **_thaw(self.details)}

    def recipe_for(self, fmt: str) -> str:
        """The --quantize text that format `fmt` was exported with."""
        return self.recipes.get(fmt, self.recipe)


@dataclass(frozen=True)
class Sources:
    """Where the unquantized pair came from (`mtp-edge eval` compares against it)."""

    target: str
    drafter: str

    @classmethod
    def from_json(cls, d: Mapping) -> Sources:
        return cls(target=str(d.get("target") or ""), drafter=str(d.get("drafter") or ""))

    def to_json(self) -> dict:
        return {"target": self.target, "drafter": self.drafter}


@dataclass(frozen=True)
class RuntimeContract:
    """What a runtime must do: the .pte's methods address one KV cache (memory arena 2), so the C++
    executorch::extension::Module must be built with share_memory_arenas=true; padded slots hold
    pad_token_for_padding."""

    shared_kv_cache: bool = True
    pad_token_for_padding: int = 0

    @classmethod
    def from_json(cls, d: Mapping) -> RuntimeContract:
        return cls(shared_kv_cache=bool(d["shared_kv_cache"]), pad_token_for_padding=int(d["pad_token_for_padding"]))

    def to_json(self) -> dict:
        return {"shared_kv_cache": self.shared_kv_cache, "pad_token_for_padding": self.pad_token_for_padding}


# --------------------------------------------------------------------------- configs


def decoder_config_from_json(d: Mapping):
    """models.config.DecoderConfig from its dataclasses.asdict form (JSON arrays back to tuples)."""
    from mtp_edge.models.config import DecoderConfig, RopeConfig

    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}
    values["rope"] = {layer_type: RopeConfig(**r) for layer_type, r in d["rope"].items()}
    return DecoderConfig(**values)


def drafter_config_from_json(d: Mapping):
    from mtp_edge.models.config import DrafterConfig

    return DrafterConfig(**{**d, "decoder": decoder_config_from_json(d["decoder"])})


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class BundleManifest:
    """manifest.json of a bundle (schema_version 4), as write_bundle writes it.

    methods / backend are empty / None in a bundle without a .pte, onnx empty without ONNX graphs;
    source is None when the manifest does not record it.
    """

    target_config: Any  # models.config.DecoderConfig
    drafter_config: Any  # models.config.DrafterConfig
    formats: tuple[str, ...]
    cache: CacheLayout
    k: int
    prefill_chunk: int
    eos_token_ids: tuple[int, ...]
    artifacts: Mapping[str, Artifact]
    onnx: Mapping[str, OnnxGraph] = field(default_factory=lambda: _mapping({}))
    methods: Mapping[str, MethodSignature] = field(default_factory=lambda: _mapping({}))
    backend: str | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    tokenizer: str | None = None
    quantization: Quantization = field(default_factory=Quantization)
    source: Sources | None = None
    runtime: RuntimeContract = field(default_factory=RuntimeContract)
    versions: Mapping[str, str | None] = field(default_factory=lambda: _mapping({}))
    sizes: Mapping[str, Any] = field(default_factory=lambda: _mapping({}))

    def __post_init__(self):
        # Plain dicts / lists given by a caller become the read-only forms from_json builds.
        for name in ("onnx", "methods", "artifacts"):
            object.__setattr__(self, name, _mapping(getattr(self, name)))
        for name in ("versions", "sizes"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

    # ------------------------------------------------------------------ accessors

    @property
    def vocab_size(self) -> int:
        return int(self.target_config.vocab_size)

    @property
    def hidden_size(self) -> int:
        """The target's hidden size: what the draft step takes as its `hidden` input."""
        return int(self.target_config.hidden_size)

    def artifact(self, role: str) -> Artifact:
        """The artifact listed under `role` (program, onnx_target, onnx_drafter, tokenizer, hf_config, ...)."""
        if role not in self.artifacts:
            raise BundleError(f"{MANIFEST} lists no {role} artifact (it lists {', '.join(self.artifacts)}); re-export the bundle.")
        return self.artifacts[role]

    def require(self, fmt: str, bundle_dir: str | Path = ".") -> None:
        """Refuse a bundle that does not hold format `fmt`."""
        if fmt not in self.formats:
            raise BundleError(
                f"{bundle_dir}: this bundle holds {', '.join(self.formats)} only, not {fmt}; use --backend {self.formats[0]} or "
                f"re-export with --format {','.join([*self.formats, fmt])}."
            )

    def check_files(self, bundle_dir: str | Path, *, verify_hashes: bool = True) -> None:
        """Every artifact is in bundle_dir with its exported size (and sha256 with verify_hashes)."""
        bundle_dir = Path(bundle_dir)
        for role, entry in self.artifacts.items():
            file = bundle_dir / entry.file
            if not file.is_file():
                raise BundleError(f"{bundle_dir}: missing artifact {entry.file} ({role}) listed in {MANIFEST}; export the bundle again.")
            if file.stat().st_size != entry.bytes or (verify_hashes and sha256_file(file) != entry.sha256):
                raise BundleError(
                    f"{file}: artifact {entry.file} was modified after export (sha256 does not match {MANIFEST}); export the bundle again."
                )

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_json(cls, data: Any, *, origin: str | Path = MANIFEST) -> BundleManifest:
        """Check and convert a parsed manifest.json; `origin` (its path) starts every error message."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{origin}: not a bundle manifest (expected a JSON object).")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            why = f" ({OLDER_SCHEMAS[version]})" if version in OLDER_SCHEMAS else ""
            raise BundleError(
                f"{origin}: bundle schema_version {version!r} is not supported{why}; this mtp-edge reads schema_version "
                f"{SCHEMA_VERSION}. Re-export the bundle with this version of mtp-edge."
            )
        if data.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
            raise BundleError(f"{origin}: format {data.get('format')!r} is not {BUNDLE_FORMAT!r}; not an mtp-edge bundle manifest.")
        formats = data.get("formats", ["pte"])
        if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
            raise BundleError(f"{origin}: formats {formats!r} is not a list of {', '.join(FORMATS)}; the manifest is damaged, export the bundle again.")
        artifacts = data.get("artifacts")
        needed = [role for f in formats for role in FORMAT_ARTIFACTS[f]]
        if not isinstance(artifacts, Mapping) or any(role not in artifacts for role in needed):
            raise BundleError(f"{origin}: lists no {' / '.join(needed)} artifact for formats {formats}; the manifest is damaged, export the bundle again.")

        def part(key: str, parse, default=None):
            if key not in data:
                if default is not None:
                    return default
                raise BundleError(f"{origin}: no {key!r} entry; the manifest is damaged, export the bundle again.")
            try:
                return parse(data[key])
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise BundleError(f"{origin}: its {key!r} entry is malformed ({type(e).__name__}: {e}); the manifest is "
                                  "damaged, export the bundle again.") from None

        none = lambda v: v  # noqa: E731
        onnx = part("onnx", lambda d: {role: OnnxGraph.from_json(g) for role, g in d.items()}, {})
        if "onnx" in formats and any(role not in onnx for role in ("target", "drafter")):
            raise BundleError(f"{origin}: its 'onnx' entry lists no target / drafter graph for format onnx; the manifest is "
                              "damaged, export the bundle again.")
        return cls(
            target_config=part("target_config", decoder_config_from_json),
            drafter_config=part("drafter_config", drafter_config_from_json),
            formats=tuple(formats),
            onnx=onnx,
            methods=part("methods", lambda d: {name: MethodSignature.from_json(s) for name, s in d.items()}, {}),
            backend=data.get("backend"),
            cache=part("cache", CacheLayout.from_json),
            k=part("k", int),
            prefill_chunk=part("prefill_chunk", int),
            eos_token_ids=part("eos_token_ids", lambda v: tuple(int(i) for i in v)),
            bos_token_id=data.get("bos_token_id"),
            pad_token_id=data.get("pad_token_id"),
            tokenizer=data.get("tokenizer"),
            quantization=part("quantization", Quantization.from_json, Quantization()),
            source=part("source", Sources.from_json) if data.get("source") else None,
            runtime=part("runtime", RuntimeContract.from_json, RuntimeContract()),
            versions=part("versions", none, {}),
            sizes=part("sizes", none, {}),
            artifacts=part("artifacts", lambda d: {role: Artifact.from_json(a) for role, a in d.items()}),
        )

    def to_json(self) -> dict:
        """The manifest.json document (keys in write_bundle's order; absent sections left out)."""
        out = {
            "schema_version": SCHEMA_VERSION,
            "format": BUNDLE_FORMAT,
            "target_config": _thaw(dataclasses.asdict(self.target_config)),
            "drafter_config": _thaw(dataclasses.asdict(self.drafter_config)),
            "formats": list(self.formats),
        }
        if self.onnx:
            out["onnx"] = {role: g.to_json() for role, g in self.onnx.items()}
        if self.methods or self.backend is not None:
            out["methods"] = {name: s.to_json() for name, s in self.methods.items()}
        if self.backend is not None:
            out["backend"] = self.backend
        out.update({
            "cache": self.cache.to_json(),
            "k": self.k,
            "prefill_chunk": self.prefill_chunk,
            "eos_token_ids": list(self.eos_token_ids),
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "tokenizer": self.tokenizer,
            "quantization": self.quantization.to_json(),
            "source": None if self.source is None else self.source.to_json(),
            "runtime": self.runtime.to_json(),
            "versions": _thaw(self.versions),
            "sizes": _thaw(self.sizes),
            "artifacts": {role: a.to_json() for role, a in self.artifacts.items()},
        })
        return out

    def dumps(self) -> str:
        """The text of manifest.json."""
        return json.dumps(self.to_json(), indent=1) + "\n"


def read_manifest(bundle_dir: str | Path, *, verify_hashes: bool = True, needs: str | None = None) -> BundleManifest:
    """Load and validate bundle_dir/manifest.json: schema version, artifacts present, sha256 unchanged;
    with `needs`, that the bundle holds that format."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a folder. Pass a bundle folder written by `export`.")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}; not a bundle, or its export was interrupted. Export it again.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); the manifest is damaged, export the bundle again.") from None
    manifest = BundleManifest.from_json(data, origin=path)
    manifest.check_files(bundle_dir, verify_hashes=verify_hashes)
    if needs is not None:
        manifest.require(needs, bundle_dir)
    return manifest
