"""A bundle: one folder a runtime needs to serve a pair, nothing else.

    model.pte        the ExecuTorch program (prefill / verify / draft, one shared KV cache)
    target.onnx      ONNX graphs (prefill and verify; the draft step) that read one KV cache the
    drafter.onnx     runtime owns and binds to both sessions (+ .data files above 2 GB)
    tokenizer.json   the target's tokenizer, when its checkpoint folder has one
    tokenizer_config.json   its transformers tokenizer config (special tokens; maybe the chat
    chat_template.jinja     template) and chat template file, when the folder has them: a bundle
                     has a chat template where the checkpoint has one, found as transformers finds it
    config.json      the target's transformers config and generation config, when its folder has
    generation_config.json   them (for transformers / optimum users: MtpEdgeModelForCausalLM.config)
    manifest.json    schema_version 3: configs, method signatures, cache layout, K, prefill chunk,
                     EOS ids, quantization recipe, versions, and the sha256 of every artifact;
                     `formats` lists which of pte / onnx the bundle holds

The contract is typed: export.manifest.BundleManifest (and its parts: MethodSignature, OnnxGraph,
TensorInfo, CacheLayout, Artifact, Quantization, Sources, RuntimeContract) is what write_bundle
writes (BundleManifest.to_json) and what read_manifest returns; export.settings.ExportSettings
holds what an export makes (k, max_seq_len, prefill_chunk, backend, formats, quantize,
onnx_external_data), validated when it is built.

write_bundle builds everything in a hidden sibling folder and renames it into place at the end,
so an interrupted export never leaves a folder that reads as a bundle. read_manifest checks the
schema version, that every artifact is there and that none was modified since export.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import hashlib
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from .manifest import (
    FORMAT_ARTIFACTS,
    FORMATS,
    MANIFEST,
    SCHEMA_VERSION,
    Artifact,
    BundleError,
    BundleManifest,
    CacheLayout,
    MethodSignature,
    OnnxGraph,
    Quantization,
    RuntimeContract,
    Sources,
    program_metadata,
    read_manifest,
    sha256_file,
)
from .settings import ExportSettings, parse_formats

__all__ = [
    "COPIED_FROM_TARGET", "FORMATS", "FORMAT_ARTIFACTS", "MANIFEST", "PROGRAM_FILE", "SCHEMA_VERSION", "TOKENIZER_FILE",
    "BundleError", "BundleManifest", "ExportSettings", "copy_bundle", "library_versions", "parse_formats",
    "read_manifest", "sha256_file", "write_bundle",
]

PROGRAM_FILE = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
# Files copied from the target's checkpoint folder when it has them, by artifact role.
# Copied byte for byte when the target's folder has them (each hashed in the manifest like every
# artifact). The chat template is where transformers keeps it: chat_template.jinja, which wins, or
# tokenizer_config.json's "chat_template"; runtime.tokenizer.ChatTemplate and the native runner read both.
COPIED_FROM_TARGET = {"tokenizer": TOKENIZER_FILE, "tokenizer_config": "tokenizer_config.json",
                      "chat_template": "chat_template.jinja", "hf_config": "config.json",
                      "hf_generation_config": "generation_config.json"}


def library_versions() -> dict[str, str | None]:
    versions = {}
    for dist in ("mtp-edge", "torch", "executorch", "transformers", "torchao", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def write_bundle(
    target_dir: str | Path,
    drafter_dir: str | Path,
    out_dir: str | Path,
    settings: ExportSettings,
    *,
    progress: bool = True,
) -> BundleManifest:
    """Load the pair, export it as `settings` say and write the bundle folder out_dir; returns its manifest."""
    from mtp_edge.models import load_pair

    from .pte import PAD_TOKEN, buffer_length, cache_layout, export_pte

    if not isinstance(settings, ExportSettings):
        raise TypeError(f"write_bundle takes an ExportSettings, got {type(settings).__name__}.")
    formats, k, max_seq_len, prefill_chunk = settings.formats, settings.k, settings.max_seq_len, settings.prefill_chunk
    recipes = settings.recipes(target_dir)
    if "pte" in formats:
        from mtp_edge.quantize.modules import check_pte_recipe

        check_pte_recipe(recipes["pte"])

    out_dir = Path(out_dir)
    _check_output_dir(out_dir)

    started = time.perf_counter()
    buffer = buffer_length(max_seq_len, k, prefill_chunk)
    # A quantized recipe is applied while loading, tensor by tensor (the fp32 model is never whole in
    # memory), once per format: torchao's tensors for the .pte, onnxruntime's packed layout for ONNX.
    quantized = {fmt: not recipes[fmt].is_none for fmt in formats}
    target = drafter = None

    def load(fmt: str):
        from mtp_edge.quantize.streaming import load_quantized_pair

        nonlocal target, drafter
        target = drafter = None  # the other format's modules go before these load
        gc.collect()
        if not quantized[fmt]:
            if progress:
                print(f"[bundle] loading {target_dir} + {drafter_dir}", file=sys.stderr, flush=True)
            target, drafter = load_pair(target_dir, drafter_dir, buffer)
            return {}
        if progress:
            print(f"[bundle] loading {target_dir} + {drafter_dir}, quantizing while loading ({fmt})", file=sys.stderr, flush=True)
        target, drafter, report = load_quantized_pair(target_dir, drafter_dir, buffer, recipes[fmt], progress=progress,
                                                      form="onnx" if fmt == "onnx" else "torchao")
        return report

    with _staged(out_dir) as tmp:
        artifacts, onnx_graphs, methods, sizes, details = {}, {}, {}, {}, {}
        texts = {fmt: r.text() for fmt, r in recipes.items()}
        if len(set(texts.values())) == 1:
            schemes = recipes[formats[0]].as_dict()
            recipe = schemes.pop("recipe")
        else:  # the per-format defaults differ
            schemes, recipe = {}, "default (" + ", ".join(f"{f}: {t}" for f, t in texts.items()) + ")"
        if "onnx" in formats:
            from .onnx import export_onnx

            load("onnx")
            info = export_onnx(target, drafter, tmp, max_seq_len=max_seq_len, external_data=settings.onnx_external_data,
                               progress=progress)
            onnx_graphs = {role: OnnxGraph.from_json(graph) for role, graph in info["graphs"].items()}
            artifacts["onnx_target"] = Artifact.of(tmp, onnx_graphs["target"].file)
            artifacts["onnx_drafter"] = Artifact.of(tmp, onnx_graphs["drafter"].file)
            for i, name in enumerate(info["data_files"]):
                artifacts[f"onnx_data_{i}"] = Artifact.of(tmp, name)
            sizes["onnx_bytes"] = info["bytes"]
            details["onnx"] = _count_schemes(info["quantized_nodes"])
        if "pte" in formats and (target is None or quantized["pte"] or quantized.get("onnx")):
            report = load("pte")
            if report:
                details["pte"] = report
        layout = CacheLayout.from_json(cache_layout(target, max_seq_len))
        if "pte" in formats:
            info = export_pte(
                target, drafter, tmp / PROGRAM_FILE, k=k, prefill_chunk=prefill_chunk, max_seq_len=max_seq_len,
                backend=settings.backend, quantized=not recipes["pte"].is_none, consume=True, progress=progress,
                draft_chains=settings.draft_chains, metadata=program_metadata(k=k, max_seq_len=max_seq_len, vocab_size=target.cfg.vocab_size,
                                          prefill_chunk=prefill_chunk, pad_token=PAD_TOKEN, eos_ids=target.cfg.eos_token_ids),
            )
            artifacts["program"] = Artifact.of(tmp, PROGRAM_FILE)
            methods = {name: MethodSignature.from_json(sig) for name, sig in info["methods"].items()}
            sizes.update(info["sizes"])
        for role, name in COPIED_FROM_TARGET.items():
            if (Path(target_dir) / name).is_file():
                shutil.copyfile(Path(target_dir) / name, tmp / name)
                artifacts[role] = Artifact.of(tmp, name)
        manifest = BundleManifest(
            target_config=target.cfg,
            drafter_config=drafter.cfg,
            formats=formats,
            onnx=onnx_graphs,
            methods=methods,
            backend=settings.backend if "pte" in formats else None,
            cache=layout,
            k=k,
            prefill_chunk=prefill_chunk,
            eos_token_ids=target.cfg.eos_token_ids,
            bos_token_id=target.cfg.bos_token_id,
            pad_token_id=target.cfg.pad_token_id,
            tokenizer=TOKENIZER_FILE if "tokenizer" in artifacts else None,
            quantization=Quantization(recipe=recipe, recipes=texts, schemes=schemes, details=details),
            source=Sources(target=str(Path(target_dir).resolve()), drafter=str(Path(drafter_dir).resolve())),
            runtime=RuntimeContract(shared_kv_cache=True, pad_token_for_padding=PAD_TOKEN),
            versions=library_versions(),
            sizes=sizes,
            artifacts=artifacts,
        )
        # The manifest is written last: a folder without one is never taken for a bundle.
        (tmp / MANIFEST).write_text(manifest.dumps())
    if progress:
        print(f"[bundle] wrote {out_dir} ({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
    return manifest


def copy_bundle(bundle_dir: str | Path, out_dir: str | Path) -> BundleManifest:
    """Copy a bundle (its manifest and the artifacts it lists, hashes checked) to out_dir, atomically."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = read_manifest(bundle_dir, verify_hashes=False)  # the copy is hashed as it is made
    if out_dir.exists() and out_dir.resolve() == bundle_dir.resolve():
        return manifest
    _check_output_dir(out_dir)
    with _staged(out_dir) as tmp:
        for entry in manifest.artifacts.values():
            if _copy_hashed(bundle_dir / entry.file, tmp / entry.file) != entry.sha256:
                raise BundleError(f"{bundle_dir / entry.file}: artifact {entry.file} was modified after export "
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
    removed if it fails, so out_dir never holds a half-written bundle. A full disk is a BundleError
    naming the folder (nothing is left behind)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise BundleError(f"{out_dir}: {e.strerror} while writing the bundle; nothing was written. Free space on "
                              "that disk or choose another output folder.") from e
        raise


def _remove_stale_staging(out_dir: Path) -> None:
    """Remove the staging folders (.NAME.partial-PID, .NAME.old-PID) that killed exports into out_dir
    left behind: those whose process is gone. A live one belongs to an export still running."""
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*"):
        kind, _, pid = path.name.removeprefix(f".{out_dir.name}.").partition("-")
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
