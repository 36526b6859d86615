"""`mtp-edge tune` on the shipped pair's demo bundle, and how tuning.json is read (or refused)."""

from __future__ import annotations

import json

import pytest

from mtp_edge.export.bundle import copy_bundle
from mtp_edge.export.cache import cached_bundle
from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.commands.demo import DEMO_EXPORT
from mtp_edge.runtime.commands.tune import tune_bundle
from mtp_edge.runtime.draft_policy import best_plan, CostTable
from mtp_edge.runtime.speculative import generate
from mtp_edge.runtime.tuning import TUNING_FILE, TuningError, machine_id, read_tuned_acceptance, read_tuning

pytestmark = pytest.mark.xdist_group("shipped-demo")  # the demo test's bundle, exported once per run


@pytest.fixture(scope="module")
def tuned(demo_cache, tmp_path_factory):
    """A copy of the demo bundle (shared bundles are read-only), tuned with few repeats."""
    bundle = tmp_path_factory.mktemp("tune") / "bundle"
    copy_bundle(cached_bundle(default_pair_dir(), root=demo_cache, settings=DEMO_EXPORT), bundle)
    prompts = [p["ids"] for p in heldout_prompts()[:2]]
    png = bundle.parent / "tune.png"
    report = tune_bundle(bundle, prompts=prompts, max_new_tokens=12, repeats=3, plot=png, progress=False)
    return bundle, report


def test_tune_writes_a_cost_for_every_method_and_length(tuned):
    bundle, report = tuned
    data = json.loads((bundle / TUNING_FILE).read_text())
    assert data["machine"] == machine_id()
    assert set(data["backends"]) == {"pte", "onnx"} == set(report["backends"])
    for name, entry in data["backends"].items():
        costs = CostTable.from_json(entry["costs"])
        assert costs.decode > 0 and costs.draft_step > 0
        assert sorted(costs.verify) == [2, 3, 4, 5]  # every verify length 2..K+1 of a K=4 bundle
        assert read_tuning(bundle, name) == costs
        # A generation on this bundle starts its acceptance estimate from tune's, as pseudo-rounds.
        assert read_tuned_acceptance(bundle, name) == entry["acceptance"] == report["backends"][name]["acceptance"]


def test_tune_predicts_every_k_and_chooses_the_best_predicted(tuned):
    _, report = tuned
    for result in report["backends"].values():
        rows = result["rows"]
        assert set(rows) == {"0", "1", "2", "3", "4", "auto"}
        predicted = {int(k): row["predicted_tok_s"] for k, row in rows.items() if k != "auto"}
        best = max(predicted.values())
        assert rows["auto"]["chosen_k"] == min(k for k, v in predicted.items() if v == best)
        assert rows["auto"]["chosen_k"] == best_plan(CostTable.from_json(result["costs"]), result["acceptance"], 4).k
        assert all(row["measured_tok_s"] > 0 for row in rows.values())
        assert len(result["acceptance"]) == 4 and all(0 <= a <= 1 for a in result["acceptance"])


def test_tune_plot_is_a_png_of_the_stated_size(tuned):
    from PIL import Image

    _, report = tuned
    plot = report["plot"]
    with Image.open(plot["file"]) as image:
        image.verify()
    with Image.open(plot["file"]) as image:
        assert image.format == "PNG" and image.size == (plot["width"], plot["height"])


def test_tune_acceptance_flag_predicts_without_measuring(tuned):
    bundle, _ = tuned
    report = tune_bundle(bundle, backends=["onnx"], prompts=[heldout_prompts()[0]["ids"]], repeats=2,
                         acceptance=[0.8, 0.6], progress=False)
    result = report["backends"]["onnx"]
    assert result["acceptance_source"] == "given" and result["acceptance"] == [0.8, 0.6, 0.6, 0.6]
    assert all("measured_tok_s" not in row for row in result["rows"].values())


def test_a_malformed_or_foreign_tuning_file_is_refused_and_never_changes_greedy_output(tuned, tmp_path, capsys):
    bundle, _ = tuned
    copy = tmp_path / "bundle"
    copy_bundle(bundle, copy)
    prompt = heldout_prompts()[0]["ids"]
    backend = open_bundle(copy, "pte")
    plain = generate(backend, prompt, k=0, max_new_tokens=16)
    for content in ("{not json", json.dumps({"version": 1, "machine": {"cpu": "elsewhere"}, "bundle": "x", "backends": {}})):
        (copy / TUNING_FILE).write_text(content)
        with pytest.raises(TuningError) as info:
            read_tuning(copy, "pte")
        assert f"mtp-edge tune {copy}" in str(info.value)
        got = generate(open_bundle(copy, "pte"), prompt, k="auto", max_new_tokens=16)
        assert got.tokens == plain.tokens and got.stats.policy["cost_source"] == "measured"
        assert TUNING_FILE in capsys.readouterr().err
