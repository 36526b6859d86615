"""The ExecuTorch backend: a bundle's .pte through the executorch.runtime Python API.

The program's methods (verify, draft, draft_chain_k: see mtp_edge.export.pte) share one KV cache
allocation, so this backend only feeds tensors and keeps the validated length. verify is the
target's one method: a prompt goes through it prefill_chunk tokens at a time (the last chunk as
long as what is left, logits at its last token only), and a round's 1..K+1 tokens as they are (its
token count is dynamic), so a shortened round pays for its own tokens only.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mtp_edge.export.bundle import BundleError, read_manifest
from mtp_edge.export.manifest import PROGRAM_METADATA, program_metadata
from mtp_edge.export.pte import draft_chain_name

from ..backend import DraftOutput
from ..errors import GenerationError


class PteBackend:
    def __init__(self, bundle_dir: str | Path, *, verify_hashes: bool = True, etdump: bool = False):
        """etdump=True records every operator and delegate call of the program (ExecuTorch's ETDump),
        for `write_etdump`: `bench methods --profile` reads it with the devtools Inspector."""
        from executorch.runtime import Runtime

        try:  # registers the quantized kernels a quantized bundle's methods need; harmless otherwise
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the executorch build
            pass

        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir, verify_hashes=verify_hashes, needs="pte")
        m = self.manifest
        self.k = m.k
        self.prefill_chunk = m.prefill_chunk
        self.vocab_size = m.vocab_size
        self.hidden_size = m.hidden_size
        self.max_seq_len = m.cache.max_seq_len  # usable positions, not the buffer length
        self.buffer_length = m.cache.buffer_length
        self.max_draft = self.k
        self.method_seconds = 0.0  # inside ExecuTorch method calls since the backend was opened
        self.has_drafter = "draft" in m.methods
        # Lengths with a one-call greedy draft (draft_chain_k); bundles exported before them have none.
        self.draft_chains = frozenset(k for k in range(2, self.k + 1) if draft_chain_name(k) in m.methods)
        self.eos_ids = m.eos_token_ids
        self.validated_length = 0

        path = self.bundle_dir / m.artifact("program").file
        try:
            self.program = Runtime.get().load_program(path, enable_etdump=etdump)
        except Exception as e:  # the pybindings raise RuntimeError/ValueError with an error code
            raise BundleError(f"{path}: ExecuTorch could not load the program ({e}); re-export the bundle.") from None
        self._check_metadata(path)
        missing = set(m.methods) - set(self.program.method_names)
        if missing:
            raise BundleError(f"{path}: the program lacks method(s) {sorted(missing)} listed in manifest.json; re-export the bundle.")
        self.methods = {}
        for name in m.methods:
            try:
                self.methods[name] = self.program.load_method(name)
            except Exception as e:
                raise BundleError(f"{path}: ExecuTorch could not load method {name!r} ({e}).") from None
        verify = m.methods.get("verify")
        lengths = None if verify is None else verify.lengths
        longest = max(self.k + 1, self.prefill_chunk)
        if lengths is None or lengths[0] > 1 or lengths[1] < longest:
            took = ("no verify method" if verify is None else "a verify of one fixed length" if lengths is None
                    else f"a verify of {lengths[0]}..{lengths[1]} tokens")
            raise BundleError(f"{path}: manifest.json lists {took}; this runtime verifies 1..{longest} tokens "
                              f"(K={self.k}, prefill chunks of {self.prefill_chunk}). Re-export the bundle.")
        self.dtype = getattr(torch, verify.output("hidden").dtype)
        self._rows = [torch.arange(n) for n in range(self.k + 2)]  # verify's logits_at for a round of n tokens

    def _check_metadata(self, path: Path) -> None:
        """The program's constant methods (manifest.PROGRAM_METADATA) agree with manifest.json, as the native runner checks."""
        absent = [name for name in PROGRAM_METADATA if name not in self.program.method_names]
        if absent:
            raise BundleError(f"{path}: the program has no runtime metadata (constant method(s) {', '.join(absent)}); it was "
                              "exported before bundle schema 3 (which added it). Re-export the bundle with this version of mtp-edge.")
        m = self.manifest
        expected = program_metadata(k=m.k, max_seq_len=m.cache.max_seq_len, vocab_size=m.vocab_size,
                                    prefill_chunk=m.prefill_chunk, pad_token=m.runtime.pad_token_for_padding,
                                    eos_ids=m.eos_token_ids)
        for name, want in expected.items():
            got = [int(v) for v in self.program.load_method(name).execute([])]
            if got != (want if isinstance(want, list) else [want]):
                said = got if isinstance(want, list) else (got[0] if got else None)
                raise BundleError(f"{path}: manifest.json says {name.removeprefix('get_')} = {want}, but the program was exported "
                                  f"with {said}; the manifest was edited or belongs to another export. Export the bundle again.")

    def write_etdump(self, path: str | Path) -> None:
        """The calls recorded since the program loaded (a backend opened with etdump=True) to `path`."""
        path = Path(path)
        self.program.write_etdump_result_to_file(str(path), str(path.with_suffix(".debug.bin")))

    def _run(self, name: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        started = time.perf_counter()
        try:
            return self.methods[name].execute(list(inputs))
        finally:
            self.method_seconds += time.perf_counter() - started

    @staticmethod
    def _pos(value: int) -> torch.Tensor:
        return torch.tensor([value], dtype=torch.long)

    def _check_span(self, start: int, n: int) -> None:
        if start < 0 or start + n > self.max_seq_len:
            raise GenerationError(
                f"positions {start}..{start + n - 1} are outside the exported context of {self.max_seq_len} positions; "
                "re-export the bundle with a larger --max-seq-len."
            )

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens.reshape(-1).to(torch.long)
        total = tokens.numel()
        if total == 0:
            raise GenerationError("the prompt is empty: give at least one token.")
        self._check_span(0, total)
        chunk = self.prefill_chunk
        logits = hidden = None
        for start in range(0, total, chunk):
            piece = tokens[start:start + chunk]
            logits, hidden = self._run("verify", piece.view(1, -1), self._pos(start), self._pos(piece.numel() - 1))
        self.validated_length = total
        return logits.view(-1), hidden.view(-1)

    def verify(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens.reshape(-1).to(torch.long)
        n = tokens.numel()
        if not 1 <= n <= self.k + 1:
            raise GenerationError(f"verify takes 1..{self.k + 1} tokens on this bundle (exported with K={self.k}), got {n}.")
        self._check_span(start, n)
        logits, hidden = self._run("verify", tokens.view(1, n), self._pos(start), self._rows[n])
        return logits.view(n, -1), hidden.view(n, -1)

    def draft(self, token: int, hidden: torch.Tensor, position: int, validated_length: int) -> DraftOutput:
        if not self.has_drafter:
            raise GenerationError("this bundle has no drafter: generate with K=0.")
        if not 0 <= position < self.max_seq_len or not 0 < validated_length <= self.max_seq_len:
            raise GenerationError(f"draft position {position} / validated length {validated_length} outside the exported context of {self.max_seq_len}.")
        ids, logits, projected, best = self._run(
            "draft",
            torch.tensor([token], dtype=torch.long),
            hidden.reshape(-1).to(self.dtype).contiguous(),
            self._pos(position),
            self._pos(validated_length),
        )
        return DraftOutput(ids, logits, projected, int(best[0]))

    def draft_chain(self, token: int, hidden: torch.Tensor, position: int, validated_length: int, k: int
                    ) -> tuple[list[int], torch.Tensor]:
        """k greedy draft tokens in one call (draft_chain_k), and each step's top candidate probability."""
        if k not in self.draft_chains:
            raise GenerationError(f"this bundle has no one-call draft of {k} tokens (it has {sorted(self.draft_chains)}); draft step by step.")
        if not 0 <= position < self.max_seq_len or not 0 < validated_length <= self.max_seq_len:
            raise GenerationError(f"draft position {position} / validated length {validated_length} outside the exported context of {self.max_seq_len}.")
        ids, top = self._run(
            draft_chain_name(k),
            torch.tensor([token], dtype=torch.long),
            hidden.reshape(-1).to(self.dtype).contiguous(),
            self._pos(position),
            self._pos(validated_length),
        )
        return [int(t) for t in ids], top

    def rollback(self, length: int) -> None:
        # The cache is static: later passes mask positions >= their own, the drafter those >= validated_length.
        self.validated_length = length
