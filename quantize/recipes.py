"""Named quantization recipes for a target + drafter pair, and the `--quantize` syntax.

    (no flag)                                            the default recipe of each format (default_recipe)
    --quantize none                                      both models stay fp32
    --quantize target=8da4w+emb4,drafter=8da8w           a scheme per model (a model not named stays fp32)
    --quantize target=8da4w:64+emb4:32                   group sizes (linears: 32, 64 or 128; default 32)
    --quantize drafter=8da4w+emb4,drafter.pre_projection=8da8w,drafter.post_projection=8da8w
                                                         per-module overrides of the linear scheme, by
                                                         module path prefix inside that model

Linear schemes: 8da4w (int8 dynamic activations, int4 weights in groups), 8da8w (int8 dynamic
activations, int8 per-channel weights), int4 (int4 weight-only in groups; ONNX only), none.
Embedding schemes: emb4 (int4 rows in groups), emb8 (int8 per row), none. They cover the token
embedding, the Per-Layer-Embedding table and the drafter's LM head (the clustered head gathers
its candidate rows out of it). A tied target LM head is untied first: it is a linear and
follows the linear scheme, while the embedding table follows the embedding scheme.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mtp_edge.models import MtpEdgeError

LINEAR_SCHEMES = ("none", "8da4w", "8da8w", "int4")
EMBEDDING_SCHEMES = ("none", "emb4", "emb8")
GROUPED = {"8da4w", "int4", "emb4"}  # schemes that take a group size
LINEAR_GROUP_SIZES = (32, 64, 128)
EMBEDDING_GROUP_SIZES = (16, 32, 64, 128)  # onnxruntime's GatherBlockQuantized takes powers of two >= 16
DEFAULT_GROUP_SIZE = 32
ROLES = ("target", "drafter")


class RecipeError(MtpEdgeError, ValueError):
    """A --quantize string that does not parse."""


@dataclass(frozen=True)
class Scheme:
    """How one model is quantized: its linears, its embedding tables, and per-module linear overrides."""

    linear: str = "none"
    group_size: int = DEFAULT_GROUP_SIZE
    embedding: str = "none"
    embedding_group_size: int = DEFAULT_GROUP_SIZE
    overrides: tuple[tuple[str, str, int], ...] = field(default_factory=tuple)  # (module prefix, linear, group)

    @property
    def is_none(self) -> bool:
        return self.linear == "none" and self.embedding == "none" and all(o[1] == "none" for o in self.overrides)

    def linear_for(self, fqn: str) -> tuple[str, int]:
        """The linear scheme and group size of module `fqn` (the longest matching override wins)."""
        best = None
        for prefix, linear, group in self.overrides:
            if (fqn == prefix or fqn.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, linear, group)
        return (best[1], best[2]) if best else (self.linear, self.group_size)

    def text(self) -> str:
        parts = []
        if self.linear != "none":
            parts.append(_with_group(self.linear, self.group_size))
        if self.embedding != "none":
            parts.append(_with_group(self.embedding, self.embedding_group_size))
        return "+".join(parts) or "none"


@dataclass(frozen=True)
class PairRecipe:
    target: Scheme = Scheme()
    drafter: Scheme = Scheme()

    @property
    def is_none(self) -> bool:
        return self.target.is_none and self.drafter.is_none

    def text(self) -> str:
        """The canonical --quantize string for this recipe."""
        if self.is_none:
            return "none"
        items = []
        for role in ROLES:
            scheme = getattr(self, role)
            items.append(f"{role}={scheme.text()}")
            items += [f"{role}.{prefix}={_with_group(linear, group)}" for prefix, linear, group in scheme.overrides]
        return ",".join(items)

    def as_dict(self) -> dict:
        return {"recipe": self.text(), **{role: asdict(getattr(self, role)) for role in ROLES}}


def _with_group(name: str, group: int) -> str:
    return f"{name}:{group}" if name in GROUPED and group != DEFAULT_GROUP_SIZE else name


# The default per format: the fastest speculative decoding measured within the 2% budget on tokens
# per target call (README "Quantization"; 2-core x86 machine, 480 MiB L3).
# onnx: by the same size limit as the pte. Small targets: none. On the QAT-trained shipped pair
# (`mtp-edge bench recipes`): none 330.6 tok/s vs 249.9 (8da4w+emb4) and 154.4 (8da8w+emb8):
# onnxruntime's MatMulNBits with fp32 activations is slower than sgemm while the weights stay in
# cache. Above the limit 8da4w+emb4: on a 2-layer E2B-width slice (483M weights per decode step,
# `bench methods --backend onnx`, one run each, session 9) decode 100.1 vs 123.6 ms, verify(5)
# 158.2 vs 169.1 ms, the runtime's peak RSS 0.81 vs 4.13 GiB, the export's 1.21 vs 3.04 GiB; and a
# full E2B target in fp32 (18.5 GB) does not fit the memory the pair must run in on a phone.
# pte: by the weights one target decode step reads (models.sizes.target_step_reads), because which
# recipe is faster turns with the model's size. The shipped pair (9.3M weights per decode step)
# speculates faster at 8da8w+emb8 (301.0 vs 272.8 tok/s; tokens per call -0.3% vs -0.1%): its
# weights stay in cache and the int8 GEMMs compute faster. E2B-width slices (random weights, `bench
# e2b-slice` / `e2b-scaling`) are faster at 8da4w+emb4: with 105M weights per step (2 layers, vocabulary
# 16,384) decode 6.1 vs 7.2 ms, verify(5) 11.3 vs 12.7 ms (draft 3.2 vs 3.0); with 483M (2 layers, full
# vocabulary) decode 17.2 vs 25.3 ms, verify 29.9 vs 40.5 ms; at 4 layers decode 24.6 vs 33.9 ms,
# extrapolated to E2B's 35 layers 140 vs 166 ms: half the bytes stream from memory. The limit lies
# between the measured sizes (near their geometric middle); it was not measured closer.
# The drafter's embedding table stays fp32 here: it is only its clustered head, whose candidate rows
# (512 per step) an emb8 table dequantizes through ExecuTorch's scalar embedding_byte kernel, 43% of a
# one-call 4-token draft (py-spy); fp32 rows are a plain gather. Shipped pair, same run, median of 400
# interleaved calls: draft step 0.373 -> 0.249 ms, a 4-token draft_chain 1.258 -> 0.723 ms; +1.5 MB.
PTE_SMALL_RECIPE = "target=8da8w+emb8,drafter=8da8w"
PTE_SMALL_MAX_STEP_PARAMETERS = 32_000_000
SMALL_RECIPES = {"pte": PTE_SMALL_RECIPE, "onnx": "none"}  # at or below the size limit
DEFAULT_RECIPES = {"pte": "target=8da4w+emb4,drafter=8da4w+emb4", "onnx": "target=8da4w+emb4,drafter=8da4w+emb4"}  # above it


def default_recipe(fmt: str, step_parameters: int | None = None) -> str:
    """The default --quantize text of format `fmt` for a target whose decode step reads
    `step_parameters` weights (None: unknown, taken as large)."""
    if step_parameters is not None and step_parameters <= PTE_SMALL_MAX_STEP_PARAMETERS:
        return SMALL_RECIPES[fmt]
    return DEFAULT_RECIPES[fmt]


def decode_step_parameters(target_dir) -> int:
    """How many weights one decode step of the target checkpoint in target_dir reads (from its config)."""
    from mtp_edge.models.config import target_config_from_folder
    from mtp_edge.models.sizes import build_target, target_step_reads

    return target_step_reads(build_target(target_config_from_folder(target_dir)))["parameters"]


def _parse_item(item: str, allowed: tuple[str, ...], what: str) -> tuple[str, int]:
    name, _, group = item.partition(":")
    if name not in allowed:
        raise RecipeError(f"unknown {what} scheme {name!r}; expected one of {', '.join(allowed)}.")
    if not group:
        return name, DEFAULT_GROUP_SIZE
    if name not in GROUPED:
        raise RecipeError(f"{name} takes no group size (it quantizes per channel / per row); drop ':{group}'.")
    allowed_groups = EMBEDDING_GROUP_SIZES if name == "emb4" else LINEAR_GROUP_SIZES
    if not group.isdigit() or int(group) not in allowed_groups:
        raise RecipeError(f"group size {group} of {name} is not supported; use one of {', '.join(map(str, allowed_groups))}.")
    return name, int(group)


def _parse_scheme(text: str) -> Scheme:
    linear, embedding = ("none", DEFAULT_GROUP_SIZE), ("none", DEFAULT_GROUP_SIZE)
    for item in filter(None, text.split("+")):
        if item == "none":
            continue
        if item.split(":")[0] in EMBEDDING_SCHEMES:
            embedding = _parse_item(item, EMBEDDING_SCHEMES, "embedding")
        else:
            linear = _parse_item(item, LINEAR_SCHEMES, "linear")
    return Scheme(linear[0], linear[1], embedding[0], embedding[1])


def parse_recipe(text: str | None, fmt: str = "pte", step_parameters: int | None = None) -> PairRecipe:
    """--quantize text -> PairRecipe. None (no flag) is the default recipe of format `fmt` (for a target
    whose decode step reads `step_parameters` weights, see default_recipe); "none" is fp32."""
    if text is None:
        text = default_recipe(fmt, step_parameters)
    text = text.strip()
    if text == "none":
        return PairRecipe()
    schemes = {role: Scheme() for role in ROLES}
    overrides: dict[str, list] = {role: [] for role in ROLES}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--quantize item {item!r} is not KEY=SCHEME; e.g. target=8da4w+emb4,drafter=8da8w (or none).")
        role, _, module = key.partition(".")
        if role not in ROLES:
            raise RecipeError(f"--quantize key {key!r}: start it with target or drafter (e.g. drafter.pre_projection=8da8w).")
        if module:
            linear, group = _parse_item(value, LINEAR_SCHEMES, "linear")
            overrides[role].append((module, linear, group))
        else:
            schemes[role] = _parse_scheme(value)
    return PairRecipe(**{
        role: Scheme(s.linear, s.group_size, s.embedding, s.embedding_group_size, tuple(overrides[role]))
        for role, s in schemes.items()
    })
