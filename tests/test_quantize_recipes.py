"""The --quantize syntax: named recipes per model, group sizes, per-module overrides, clear errors."""

from __future__ import annotations

import pytest

from mtp_edge.quantize.recipes import DEFAULT_RECIPES, PairRecipe, RecipeError, Scheme, parse_recipe


def test_none_and_default():
    assert parse_recipe("none") == PairRecipe() and parse_recipe("none").is_none
    for fmt, text in DEFAULT_RECIPES.items():
        default = parse_recipe(None, fmt)
        assert default == parse_recipe(text) and parse_recipe(default.text()) == default
    assert not parse_recipe(None, "pte").is_none


def test_the_defaults_follow_the_targets_size():
    """The shipped pair (9.3M weights per decode step) gets the 8-bit .pte recipe and fp32 ONNX, E2B the
    4-bit one in both formats (the sizes computed from the configs, as write_bundle does when
    --quantize is not given)."""
    from mtp_edge.models.config import preset
    from mtp_edge.models.sizes import target_sizes
    from mtp_edge.quantize.recipes import PTE_SMALL_RECIPE, decode_step_parameters
    from mtp_edge.models.shipped import default_pair_dir

    shipped = decode_step_parameters(default_pair_dir() / "target")
    e2b = target_sizes(preset("e2b").target)["decode_step"]["parameters"]
    assert parse_recipe(None, "pte", shipped) == parse_recipe(PTE_SMALL_RECIPE)
    assert parse_recipe(None, "pte", e2b) == parse_recipe(None, "pte") == parse_recipe(DEFAULT_RECIPES["pte"])
    assert parse_recipe(None, "onnx", shipped).is_none
    assert parse_recipe(None, "onnx", e2b) == parse_recipe(DEFAULT_RECIPES["onnx"]) == parse_recipe(DEFAULT_RECIPES["pte"])


def test_schemes_groups_and_round_trip():
    recipe = parse_recipe("target=8da4w:64+emb4,drafter=8da8w+emb8")
    assert recipe.target == Scheme("8da4w", 64, "emb4", 32)
    assert recipe.drafter == Scheme("8da8w", 32, "emb8", 32)
    assert recipe.text() == "target=8da4w:64+emb4,drafter=8da8w+emb8"
    assert parse_recipe(recipe.text()) == recipe
    assert parse_recipe("target=int4:128,drafter=none").drafter.is_none


def test_a_model_not_named_stays_fp32():
    recipe = parse_recipe("target=8da8w")
    assert recipe.target.linear == "8da8w" and recipe.drafter.is_none


def test_per_module_overrides():
    recipe = parse_recipe("drafter=8da4w+emb4,drafter.pre_projection=8da8w,drafter.layers.0.mlp=none")
    scheme = recipe.drafter
    assert scheme.linear_for("pre_projection") == ("8da8w", 32)
    assert scheme.linear_for("layers.0.mlp.up_proj") == ("none", 32)
    assert scheme.linear_for("layers.0.self_attn.q_proj") == ("8da4w", 32)
    assert scheme.linear_for("pre_projection_extra") == ("8da4w", 32)  # a prefix matches whole path parts only
    assert parse_recipe(recipe.text()) == recipe


@pytest.mark.parametrize("text, message", [
    ("target=8da3w", r"unknown linear scheme '8da3w'; expected one of none, 8da4w, 8da8w, int4"),
    ("target=8da4w:48", r"group size 48 of 8da4w is not supported; use one of 32, 64, 128"),
    ("target=8da8w:64", r"8da8w takes no group size"),
    ("target=emb4:x", r"group size x of emb4 is not supported; use one of 16, 32, 64, 128"),
    ("encoder=8da4w", r"start it with target or drafter"),
    ("8da4w", r"is not KEY=SCHEME"),
    ("drafter.pre_projection=emb4", r"unknown linear scheme 'emb4'"),
])
def test_bad_recipes_are_named(text, message):
    with pytest.raises(RecipeError, match=message) as e:
        parse_recipe(text)
    assert "\n" not in str(e.value)
