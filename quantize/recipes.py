"""Named quantization recipes for a target + drafter pair, and the `--quantize` syntax.

    (no flag)                                            the default recipe of each format (DEFAULT_RECIPES)
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


# The default per format (`python -m mtp_edge.runtime.bench recipes` on the QAT-trained shipped pair,
# speculative tok/s, 2 cores; README "Quantization of the QAT pair"). onnx: none 330.6 tok/s vs 249.9
# (8da4w+emb4) and 154.4 (8da8w+emb8): onnxruntime's MatMulNBits with fp32 activations is slower than
# sgemm at this size. pte: 8da4w+emb4 (272.8 tok/s, 98.6% top-1, tokens per call -0.1%) although
# 8da8w+emb8 measured faster on this 10M-parameter pair (301.0): the default also governs E2B exports,
# whose bandwidth-bound decode reads half the bytes at 4 bits, and the shipped pair is QAT-trained for it.
DEFAULT_RECIPES = {"pte": "target=8da4w+emb4,drafter=8da4w+emb4", "onnx": "none"}


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


def parse_recipe(text: str | None, fmt: str = "pte") -> PairRecipe:
    """--quantize text -> PairRecipe. None (no flag) is the default recipe of format `fmt`; "none" is fp32."""
    if text is None:
        text = DEFAULT_RECIPES[fmt]
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
