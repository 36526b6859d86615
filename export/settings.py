"""Export settings: what `mtp-edge export` / write_bundle make of a pair, in one validated dataclass.

    settings = ExportSettings(k=4, max_seq_len=1024, prefill_chunk=32, backend="xnnpack",
                              formats=("pte", "onnx"), quantize=DEFAULT)
    write_bundle(target_dir, drafter_dir, out_dir, settings)

Every front door builds one: the CLI (`mtp-edge export`, `optimum-cli export mtp-edge`) through
ExportSettings.from_args, MtpEdgeModelForCausalLM.from_pretrained(export=True), the demo
(runtime.commands.demo.DEMO_EXPORT) and the bundle cache (export.cache.cached_bundle, whose cache key
holds settings.to_json()). The defaults are the CLI's. A bad value fails at construction with one
line naming the field and the fix (ExportSettingsError, a BundleError).

quantize, one rule:
    DEFAULT ("default")   each format's default recipe, chosen by measurement
                          (quantize.recipes.default_recipe: by the target's size, both formats); no --quantize
    "none"                both models stay fp32, in every format
    a recipe string       that recipe in every format (quantize.recipes: e.g. target=8da4w+emb4,drafter=8da8w)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import FORMATS, BundleError

DEFAULT = "default"  # quantize: each format's default recipe
PTE_BACKENDS = ("xnnpack", "portable")


class ExportSettingsError(BundleError):
    """An export setting out of range or of the wrong kind."""


def parse_formats(text: str | tuple | list) -> tuple[str, ...]:
    """"pte", "onnx", "pte,onnx" -> a tuple in canonical order; a clear error otherwise."""
    names = [f.strip() for f in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ExportSettingsError(f"unknown export format(s) {unknown or names!r}; choose from {', '.join(FORMATS)} (comma-separated for several).")
    return tuple(f for f in FORMATS if f in names)


def parse_draft_chains(value: str | tuple | list | None, k: int) -> tuple[int, ...] | None:
    """"all" / None -> None (every length 2..k); "none" / "" -> (); "2,4" or (2, 4) -> (2, 4)."""
    given = value
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "none"):
            return ()
        try:
            value = [int(v) for v in text.split(",")]
        except ValueError:
            value = None
    lengths = tuple(sorted(set(value))) if isinstance(value, (tuple, list)) else None
    if lengths is None or any(isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= k for n in lengths):
        raise ExportSettingsError(
            f"draft_chains={given!r}: the one-call draft lengths must be 'all', 'none' or lengths from 2 to k={k} "
            "(comma-separated, e.g. --draft-chains 2,4)."
        )
    return lengths


@dataclass(frozen=True)
class ExportSettings:
    """How a target + drafter pair is exported into a bundle.

    Attributes:
        k: the largest draft length the bundle verifies per round (>= 1).
        max_seq_len: usable context positions (>= 2); the cache gets a few spare ones for padded writes.
        prefill_chunk: prompt tokens per prefill call of the .pte (>= 1; ONNX prefills in chunks of it too).
        backend: ExecuTorch kernels for the .pte: "xnnpack" or "portable".
        formats: which of "pte" / "onnx" the bundle holds, in canonical order ("pte,onnx" is accepted).
        quantize: DEFAULT (each format's default recipe), "none" (fp32) or a recipe string (see module doc).
        onnx_external_data: None keeps an ONNX graph's weights inside it unless they approach protobuf's
            2 GB limit; True / False force the choice for both graphs.
        draft_chains: the lengths the .pte gets a one-call greedy draft method for (draft_chain_n,
            2 <= n <= k): None for every length 2..k, () for none (rounds then draft step by step), or
            some of them. Each is another method to lower (the draft step unrolled n times), which
            costs export time (the test suite's export of the shipped pair's demo bundle, k=4: 245 s
            without, 398 s with 2..4, two exports sharing the 2 cores); a round whose length has none
            drafts step by step.
    """

    k: int = 4
    max_seq_len: int = 1024
    prefill_chunk: int = 32
    backend: str = "xnnpack"
    formats: tuple[str, ...] = ("pte",)
    quantize: str = DEFAULT
    onnx_external_data: bool | None = None
    draft_chains: tuple[int, ...] | None = None

    def __post_init__(self):
        for name, least, what in (("k", 1, "the largest draft length the bundle verifies"),
                                  ("max_seq_len", 2, "usable context positions"),
                                  ("prefill_chunk", 1, "prompt tokens per prefill call")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ExportSettingsError(f"{name}={value!r}: {what} must be an integer >= {least}; pass {name} of {least} or more "
                                          f"(--{name.replace('_', '-')}).")
        if self.backend not in PTE_BACKENDS:
            raise ExportSettingsError(f"backend={self.backend!r}: the .pte's ExecuTorch kernels must be one of "
                                      f"{', '.join(PTE_BACKENDS)} (--backend).")
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if not isinstance(self.quantize, str):
            raise ExportSettingsError(
                f"quantize={self.quantize!r}: pass {DEFAULT!r} (each format's default recipe), 'none' (fp32) or a recipe "
                "string such as 'target=8da4w+emb4,drafter=8da8w'."
            )
        object.__setattr__(self, "quantize", self.quantize.strip())
        if self.quantize != DEFAULT:
            from mtp_edge.quantize.recipes import RecipeError, parse_recipe

            try:
                parse_recipe(self.quantize)
            except RecipeError as e:  # its message says what is wrong and how to write it
                raise RecipeError(f"quantize={self.quantize!r}: {e}") from None
        if self.draft_chains is not None:
            object.__setattr__(self, "draft_chains", parse_draft_chains(self.draft_chains, self.k))
        if self.onnx_external_data not in (None, True, False):
            raise ExportSettingsError(f"onnx_external_data={self.onnx_external_data!r}: pass None (decide by size), True or False.")

    @classmethod
    def from_args(cls, args) -> ExportSettings:
        """From the parsed `mtp-edge export` / `optimum-cli export mtp-edge` arguments (runtime.commands.cli)."""
        return cls(k=args.k, max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk, backend=args.backend,
                   formats=args.format, quantize=args.quantize, draft_chains=args.draft_chains)

    @classmethod
    def from_json(cls, d: dict) -> ExportSettings:
        chains = d.get("draft_chains")
        return cls(**{**d, "formats": tuple(d.get("formats", ("pte",))), "draft_chains": None if chains is None else tuple(chains)})

    def to_json(self) -> dict:
        d = {**asdict(self), "formats": list(self.formats)}
        return {**d, "draft_chains": None if self.draft_chains is None else list(self.draft_chains)}

    @property
    def draft_chain_lengths(self) -> tuple[int, ...]:
        """The lengths the .pte drafts in one call: draft_chains, or every length 2..k."""
        return tuple(range(2, self.k + 1)) if self.draft_chains is None else self.draft_chains

    def recipes(self, target_dir: str | Path) -> dict:
        """Format -> quantize.recipes.PairRecipe. With DEFAULT each format's default depends on how many
        weights one decode step of the target in target_dir reads (read from its config)."""
        from mtp_edge.quantize.recipes import decode_step_parameters, parse_recipe

        if self.quantize == DEFAULT:
            step_parameters = decode_step_parameters(target_dir)
            return {fmt: parse_recipe(None, fmt, step_parameters) for fmt in self.formats}
        return {fmt: parse_recipe(self.quantize, fmt) for fmt in self.formats}
