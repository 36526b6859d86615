"""Exporting a target + drafter pair into a bundle, and what a bundle is.

    bundle             write_bundle / copy_bundle: the bundle folder (written staged, renamed into place)
    manifest           BundleManifest and its parts: manifest.json as frozen dataclasses, read_manifest
    settings           ExportSettings: k, max_seq_len, prefill_chunk, backend, formats, quantize,
                       onnx_external_data, validated in one place
    cache              cached_bundle: a pair exported once per (weights, code, settings, versions)
    pte                the ExecuTorch program: prefill / verify / decode / draft over one shared KV cache
    onnx               the ONNX graphs: target.onnx and drafter.onnx reading a KV cache the runtime owns
    executorch_compat  the workarounds for the pinned executorch release, kept in one file
"""
