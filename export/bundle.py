"""A bundle: one folder a runtime needs to serve a pair, nothing else.

    model.pte        the ExecuTorch program (prefill / verify / decode / draft, one shared KV cache)
    target.onnx      ONNX graphs (prefill and verify; the draft step) that read one KV cache the
    drafter.onnx     runtime owns and binds to both sessions (+ .data files above 2 GB)
    tokenizer.json   the target's tokenizer, when its checkpoint folder has one
    config.json      the target's transformers config and generation config, when its folder has
    generation_config.json   them (for transformers / optimum users: MtpEdgeModelForCausalLM.config)
    manifest.json    schema_version 1: configs, method signatures, cache layout, K, prefill chunk,
                     EOS ids, quantization recipe, versions, and the sha256 of every artifact;
                     `formats` lists which of pte / onnx the bundle holds

write_bundle builds everything in a hidden sibling folder and renames it into place at the end,
so an interrupted export never leaves a folder that reads as a bundle. read_manifest checks the
schema version, that every artifact is there and that none was modified since export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from mtp_edge.models import MtpEdgeError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM_FILE = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
# Files copied from the target's checkpoint folder when it has them, by artifact role.
COPIED_FROM_TARGET = {"tokenizer": TOKENIZER_FILE, "hf_config": "config.json", "hf_generation_config": "generation_config.json"}
FORMATS = ("pte", "onnx")
# Artifact roles each format needs (read_manifest checks them; a manifest without `formats` is a pte bundle).
FORMAT_ARTIFACTS = {"pte": ("program",), "onnx": ("onnx_target", "onnx_drafter")}


def parse_formats(text: str | tuple | list) -> tuple[str, ...]:
    """"pte", "onnx", "pte,onnx" -> a tuple in canonical order; a clear error otherwise."""
    names = [f.strip() for f in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise BundleError(f"unknown export format(s) {unknown or names!r}; choose from {', '.join(FORMATS)} (comma-separated for several).")
    return tuple(f for f in FORMATS if f in names)


def bundle_formats(manifest: dict) -> tuple[str, ...]:
    return tuple(manifest.get("formats", ("pte",)))


class BundleError(MtpEdgeError, ValueError):
    """A bundle folder that is missing, incomplete, modified or of an unknown format."""


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions = {}
    for dist in ("mtp-edge", "torch", "executorch", "transformers", "torchao", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _artifact(folder: Path, name: str) -> dict:
    path = folder / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_bundle(
    target_dir: str | Path,
    drafter_dir: str | Path,
    out_dir: str | Path,
    *,
    k: int,
    max_seq_len: int,
    prefill_chunk: int,
    backend: str = "xnnpack",
    formats: str | tuple = ("pte",),
    onnx_external_data: bool | None = None,
    quantize: str | None = "none",
    progress: bool = True,
) -> dict:
    """Load the pair, export it in each of `formats` and write the bundle folder out_dir; returns the manifest.

    quantize: a --quantize string (see quantize.recipes; None = each format's default recipe, "none" = fp32).
    """
    from mtp_edge.models import load_pair
    from mtp_edge.quantize.recipes import decode_step_parameters, parse_recipe

    from .pte import PAD_TOKEN, buffer_length, cache_layout, export_pte

    formats = parse_formats(formats)
    # No --quantize: each format's default, which for the .pte depends on the target's size.
    step_parameters = decode_step_parameters(target_dir) if quantize is None and "pte" in formats else None
    recipes = {fmt: parse_recipe(quantize, fmt, step_parameters) for fmt in formats}
    if "pte" in formats:
        from mtp_edge.quantize.modules import check_pte_recipe

        check_pte_recipe(recipes["pte"])

    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    if k < 1 or prefill_chunk < 1 or max_seq_len < 2:
        raise BundleError(f"need k >= 1, prefill_chunk >= 1 and max_seq_len >= 2; got k={k}, prefill_chunk={prefill_chunk}, max_seq_len={max_seq_len}.")

    started = time.perf_counter()
    buffer = buffer_length(max_seq_len, k, prefill_chunk)
    # A quantized .pte is loaded quantizing tensor by tensor (the fp32 model is never whole in memory);
    # fp32 modules are loaded only for the ONNX export (it quantizes the exported graphs) or an fp32 .pte.
    stream_quantized = "pte" in formats and not recipes["pte"].is_none
    target = drafter = None
    if "onnx" in formats or not stream_quantized:
        if progress:
            print(f"[bundle] loading {target_dir} + {drafter_dir}", file=sys.stderr, flush=True)
        target, drafter = load_pair(target_dir, drafter_dir, buffer)

    with _staged(out_dir) as tmp:
        artifacts, sections, sizes = {}, {}, {}
        texts = {fmt: r.text() for fmt, r in recipes.items()}
        first = recipes[formats[0]]
        if len(set(texts.values())) == 1:
            quantization = {**first.as_dict(), "recipes": texts}
        else:  # the per-format defaults differ
            quantization = {"recipe": "default (" + ", ".join(f"{f}: {t}" for f, t in texts.items()) + ")", "recipes": texts}
        if "onnx" in formats:  # first: it quantizes the exported graphs, so it needs the fp32 modules
            from .onnx import export_onnx

            info = export_onnx(target, drafter, tmp, max_seq_len=max_seq_len, external_data=onnx_external_data,
                               recipe=recipes["onnx"], progress=progress)
            artifacts["onnx_target"] = _artifact(tmp, info["graphs"]["target"]["file"])
            artifacts["onnx_drafter"] = _artifact(tmp, info["graphs"]["drafter"]["file"])
            for i, name in enumerate(info["data_files"]):
                artifacts[f"onnx_data_{i}"] = _artifact(tmp, name)
            sections["onnx"] = info["graphs"]
            sizes["onnx_bytes"] = info["bytes"]
            quantization["onnx"] = _count_schemes(info["quantized_nodes"])
        if stream_quantized:
            from mtp_edge.quantize.streaming import load_quantized_pair

            del target, drafter
            gc.collect()
            if progress:
                print(f"[bundle] loading {target_dir} + {drafter_dir}, quantizing while loading", file=sys.stderr, flush=True)
            target, drafter, quantization["pte"] = load_quantized_pair(target_dir, drafter_dir, buffer, recipes["pte"],
                                                                       progress=progress)
        layout = cache_layout(target, max_seq_len)
        if "pte" in formats:
            info = export_pte(
                target, drafter, tmp / PROGRAM_FILE, k=k, prefill_chunk=prefill_chunk, max_seq_len=max_seq_len,
                backend=backend, quantized=not recipes["pte"].is_none, consume=True, progress=progress,
            )
            artifacts["program"] = _artifact(tmp, PROGRAM_FILE)
            sections.update(methods=info["methods"], backend=backend)
            sizes.update(info["sizes"])
        for role, name in COPIED_FROM_TARGET.items():
            if (Path(target_dir) / name).is_file():
                shutil.copyfile(Path(target_dir) / name, tmp / name)
                artifacts[role] = _artifact(tmp, name)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": "mtp-edge-bundle",
            "target_config": dataclasses.asdict(target.cfg),
            "drafter_config": dataclasses.asdict(drafter.cfg),
            "formats": list(formats),
            **sections,
            "cache": layout,
            "k": k,
            "prefill_chunk": prefill_chunk,
            "eos_token_ids": list(target.cfg.eos_token_ids),
            "bos_token_id": target.cfg.bos_token_id,
            "pad_token_id": target.cfg.pad_token_id,
            "tokenizer": TOKENIZER_FILE if "tokenizer" in artifacts else None,
            "quantization": quantization,
            # Where the unquantized pair came from: `mtp-edge eval` compares against it.
            "source": {"target": str(Path(target_dir).resolve()), "drafter": str(Path(drafter_dir).resolve())},
            # The methods address one KV cache (memory arena 2): the C++ executorch::extension::Module
            # must be built with share_memory_arenas=true; padded slots hold pad_token_for_padding.
            "runtime": {"shared_kv_cache": True, "pad_token_for_padding": PAD_TOKEN},
            "versions": library_versions(),
            "sizes": sizes,
            "artifacts": artifacts,
        }
        # The manifest is written last: a folder without one is never taken for a bundle.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if progress:
        print(f"[bundle] wrote {out_dir} ({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
    return manifest


def copy_bundle(bundle_dir: str | Path, out_dir: str | Path) -> dict:
    """Copy a bundle (its manifest and the artifacts it lists, hashes checked) to out_dir, atomically."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = read_manifest(bundle_dir, verify_hashes=False)  # the copy is hashed as it is made
    if out_dir.exists() and out_dir.resolve() == bundle_dir.resolve():
        return manifest
    _check_output_dir(out_dir)
    with _staged(out_dir) as tmp:
        for entry in manifest["artifacts"].values():
            if _copy_hashed(bundle_dir / entry["file"], tmp / entry["file"]) != entry["sha256"]:
                raise BundleError(f"{bundle_dir / entry['file']}: artifact {entry['file']} was modified after export "
                                  f"(sha256 does not match {MANIFEST}); export the bundle again.")
        shutil.copyfile(bundle_dir / MANIFEST, tmp / MANIFEST)  # last, as in write_bundle
    return manifest


def _copy_hashed(src: Path, dst: Path, block: int = 1 << 20) -> str:
    """Copy src to dst in one read; the sha256 of what was copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(block):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _staged(out_dir: Path):
    """A hidden sibling folder to write a bundle into: renamed onto out_dir when the block ends,
    removed if it fails, so out_dir never holds a half-written bundle."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_output_dir(out_dir: Path) -> None:
    """An output folder may be new, empty or an old bundle (replaced); anything else is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a folder; choose another output path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise BundleError(f"{out_dir}: a non-empty folder that is not a bundle; refusing to replace it. Choose another output path.")


def _count_schemes(quantized_nodes: dict) -> dict:
    """Per graph: how many nodes each scheme quantized (the full node list would swamp the manifest)."""
    counts = {}
    for graph, nodes in quantized_nodes.items():
        per = {}
        for entry in nodes.values():
            key = entry["scheme"] if entry["scheme"] in ("8da8w", "emb8") else f"{entry['scheme']}:{entry['group']}"
            per[key] = per.get(key, 0) + 1
        counts[graph] = per
    return counts


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename `new` onto `dest`; an old bundle (or empty folder) there is moved aside first, then removed."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(bundle_dir: str | Path, *, verify_hashes: bool = True, needs: str | None = None) -> dict:
    """Load and validate manifest.json: schema version, artifacts present, sha256 unchanged; with
    `needs`, that the bundle holds that format."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a folder. Pass a bundle folder written by `export`.")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}; not a bundle, or its export was interrupted. Export it again.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); the manifest is damaged, export the bundle again.") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: not a bundle manifest (expected a JSON object).")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema_version {version!r} is not supported; this mtp-edge reads schema_version "
            f"{SCHEMA_VERSION}. Re-export the bundle with this version of mtp-edge."
        )
    artifacts = manifest.get("artifacts")
    formats = manifest.get("formats", ["pte"])
    if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
        raise BundleError(f"{path}: formats {formats!r} is not a list of {', '.join(FORMATS)}; the manifest is damaged, export the bundle again.")
    needed = [role for f in formats for role in FORMAT_ARTIFACTS[f]]
    if not isinstance(artifacts, dict) or any(role not in artifacts for role in needed):
        raise BundleError(f"{path}: lists no {' / '.join(needed)} artifact for formats {formats}; the manifest is damaged, export the bundle again.")
    for role, entry in artifacts.items():
        file = bundle_dir / entry["file"]
        if not file.is_file():
            raise BundleError(f"{bundle_dir}: missing artifact {entry['file']} ({role}) listed in {MANIFEST}; export the bundle again.")
        if file.stat().st_size != entry["bytes"] or (verify_hashes and sha256_file(file) != entry["sha256"]):
            raise BundleError(
                f"{file}: artifact {entry['file']} was modified after export (sha256 does not match {MANIFEST}); export the bundle again."
            )
    if needs is not None and needs not in formats:
        raise BundleError(
            f"{bundle_dir}: this bundle holds {', '.join(formats)} only, not {needs}; use --backend {formats[0]} or "
            f"re-export with --format {','.join([*formats, needs])}."
        )
    return manifest
