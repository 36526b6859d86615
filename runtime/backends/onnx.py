"""The ONNX Runtime backend: a bundle's target.onnx and drafter.onnx over one KV cache it owns.

The cache is one numpy array per cache tensor, wrapped as an OrtValue over the same memory and
bound (IO binding) as an input of both sessions once, at start-up: the target and drafter
sessions read the very same bytes, and nothing copies the cache between them. ONNX graphs cannot
write their inputs, so the target graph returns the K/V rows of its T new tokens into staging
buffers (bound as outputs, so ONNX Runtime writes them in place) and this backend copies those T
rows into the cache: at most K + 1 rows per cache tensor per speculative round. `bytes_copied`
counts every byte so copied.

The graphs take dynamic T, so nothing is padded: a prompt goes in prefill_chunk tokens at a time
(bounding activation memory), verify takes exactly the round's tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mtp_edge.export.bundle import BundleError, read_manifest

from ..backend import DraftOutput
from ..errors import GenerationError


def session_options(threads: int | None):
    """Options for one of the two sessions. They take turns (a verify, then K draft steps), so
    worker threads must not spin after a run: a spinning pool of one session competes with the
    other session's work for the same cores. Measured on the shipped pair (2 cores): a verify + 4
    draft steps took 10.7 ms with spinning pools, 5.0 ms without them and a one-thread drafter."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # keep ORT's warnings about unused initializers off the console
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxBackend:
    def __init__(self, bundle_dir: str | Path, *, threads: int | None = None, draft_threads: int | None = None,
                 verify_hashes: bool = True):
        import onnxruntime as ort

        for name, value in (("threads", threads), ("draft_threads", draft_threads)):
            if value is not None and value < 1:
                raise GenerationError(f"{name} must be >= 1 (or None for the default), got {value}.")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = m = read_manifest(self.bundle_dir, verify_hashes=verify_hashes, needs="onnx")
        graphs = m.onnx
        self.k = m.k
        self.prefill_chunk = m.prefill_chunk
        self.vocab_size = m.vocab_size
        self.max_seq_len = m.cache.max_seq_len
        self.max_draft = self.k
        self.has_drafter = True
        self.eos_ids = m.eos_token_ids
        self.session_threads = session_options(threads).intra_op_num_threads
        # The draft step (one token through the drafter's few layers and the clustered head) runs
        # on the calling thread: a thread pool's hand-off costs more than it saves at that size.
        threads_per_role = {"target": threads, "drafter": draft_threads or 1}
        self.bytes_copied = 0  # cache bytes written by this backend (the new K/V rows), over its lifetime

        self.sessions = {}
        for role in ("target", "drafter"):
            path = self.bundle_dir / graphs[role].file
            try:
                self.sessions[role] = ort.InferenceSession(path, session_options(threads_per_role[role]),
                                                           providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise BundleError(f"{path}: ONNX Runtime could not load the graph ({reason}); re-export the bundle.") from None
            expected = list(graphs[role].input_names)
            found = [v.name for v in self.sessions[role].get_inputs()]
            if found != expected:
                raise BundleError(f"{path}: graph inputs {found} differ from manifest.json's {expected}; re-export the bundle.")

        # The cache: one array per buffer, one OrtValue over each, bound to both sessions.
        self.cache = {b.name: np.zeros(b.shape, dtype=b.dtype) for b in m.cache.buffers}
        self.cache_values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.cache.items()}
        self.bindings = {role: session.io_binding() for role, session in self.sessions.items()}
        self.bound_cache = {}  # role -> graph input -> the OrtValue bound to it (tests check they alias)
        for role in self.sessions:
            self.bound_cache[role] = {}
            for graph_input, buffer in graphs[role].cache_inputs.items():
                value = self.cache_values[buffer]
                self.bindings[role].bind_ortvalue_input(graph_input, value)
                self.bound_cache[role][graph_input] = value
        self.new_rows = graphs["target"].new_rows_outputs or {}  # output -> cache buffer
        self.staging: dict[int, dict[str, tuple[np.ndarray, object]]] = {}  # T -> output -> (array, OrtValue)
        dtype = graphs["target"].output("hidden").dtype
        self.dtype = getattr(torch, dtype)
        self.np_dtype = np.dtype(dtype)

    # ------------------------------------------------------------------ helpers

    def _staging(self, n: int) -> dict[str, tuple[np.ndarray, object]]:
        """Preallocated [1, kv_heads, n, head_dim] outputs for the new rows of an n-token pass."""
        import onnxruntime as ort

        if n not in self.staging:
            buffers = {}
            for output, buffer in self.new_rows.items():
                shape = list(self.cache[buffer].shape)
                shape[2] = n
                array = np.empty(shape, dtype=self.cache[buffer].dtype)
                buffers[output] = (array, ort.OrtValue.ortvalue_from_numpy(array))
            self.staging[n] = buffers
        return self.staging[n]

    @staticmethod
    def _i64(values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    def _check_span(self, start: int, n: int) -> None:
        if start < 0 or start + n > self.max_seq_len:
            raise GenerationError(
                f"positions {start}..{start + n - 1} are outside the exported context of {self.max_seq_len} positions; "
                "re-export the bundle with a larger --max-seq-len."
            )

    def _run_target(self, tokens: np.ndarray, start: int, logits_at: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        binding = self.bindings["target"]
        binding.bind_cpu_input("tokens", tokens.reshape(1, -1))
        binding.bind_cpu_input("start_pos", self._i64([start]))
        binding.bind_cpu_input("logits_at", logits_at)
        binding.bind_output("logits")  # get_outputs() returns outputs in binding order: these two first
        binding.bind_output("hidden")
        staging = self._staging(tokens.size)
        for output, (_, value) in staging.items():
            binding.bind_ortvalue_output(output, value)
        self.sessions["target"].run_with_iobinding(binding)
        logits, hidden = binding.get_outputs()[:2]
        end = start + tokens.size
        for output, buffer in self.new_rows.items():
            rows = staging[output][0]
            self.cache[buffer][:, :, start:end] = rows
            self.bytes_copied += rows.nbytes
        binding.clear_binding_outputs()
        return torch.from_numpy(logits.numpy()), torch.from_numpy(hidden.numpy())

    # ------------------------------------------------------------------ Backend protocol

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens.reshape(-1).to(torch.long).numpy()
        total = tokens.size
        if total == 0:
            raise GenerationError("the prompt is empty: give at least one token.")
        self._check_span(0, total)
        logits = hidden = None
        for start in range(0, total, self.prefill_chunk):
            logits, hidden = self.prefill_at(torch.from_numpy(tokens[start:start + self.prefill_chunk]), start)
        return logits, hidden

    def prefill_at(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One prefill chunk at positions start..: (logits [vocab], hidden [backbone]) of its last token."""
        tokens = tokens.reshape(-1).to(torch.long).numpy()
        self._check_span(start, tokens.size)
        logits, hidden = self._run_target(tokens, start, self._i64([tokens.size - 1]))
        return logits[0], hidden[0]

    def verify(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens.reshape(-1).to(torch.long).numpy()
        n = tokens.size
        if not 1 <= n <= self.k + 1:
            raise GenerationError(f"verify takes 1..{self.k + 1} tokens on this bundle (exported with K={self.k}), got {n}.")
        self._check_span(start, n)
        return self._run_target(tokens, start, np.arange(n, dtype=np.int64))

    def draft(self, token: int, hidden: torch.Tensor, position: int, validated_length: int) -> DraftOutput:
        if not 0 <= position < self.max_seq_len or not 0 < validated_length <= self.max_seq_len:
            raise GenerationError(f"draft position {position} / validated length {validated_length} outside the exported context of {self.max_seq_len}.")
        binding = self.bindings["drafter"]
        binding.bind_cpu_input("token", self._i64([token]))
        binding.bind_cpu_input("hidden", np.ascontiguousarray(hidden.reshape(-1).to(self.dtype).numpy(), dtype=self.np_dtype))
        binding.bind_cpu_input("position", self._i64([position]))
        binding.bind_cpu_input("validated_length", self._i64([validated_length]))
        for name in ("candidate_ids", "candidate_logits", "next_hidden", "argmax_id"):
            binding.bind_output(name)
        self.sessions["drafter"].run_with_iobinding(binding)
        ids, logits, projected, best = (torch.from_numpy(v.numpy()) for v in binding.get_outputs())
        binding.clear_binding_outputs()
        return DraftOutput(ids, logits, projected, int(best[0]))

    def rollback(self, length: int) -> None:
        # The cache is static: the target graph reads cache rows < start_pos only, the drafter < validated_length.
        pass
