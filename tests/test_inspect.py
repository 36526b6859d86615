"""`mtp-edge inspect`: sizes measured on meta-device modules, checked against transformers' own models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from mtp_edge.models.config import preset, preset_hf_configs
from mtp_edge.models.sizes import DRAFTER_GROUPS, TARGET_GROUPS, group_counts, model_sizes
from mtp_edge.runtime.commands.cli import main

MTP_EDGE = Path(sys.executable).parent / "mtp-edge"

# Published totals (shared/design/gemma4-mtp-facts.md: 4.629B E2B target, ~77.7M E2B assistant).
EXPECTED = {
    "e2b": (4_628_569_344, 77_731_328),
    "e4b": (7_463_013_376, 78_517_760),
}


def _hf_named_params(model: torch.nn.Module):
    """transformers' parameter names with the `model.` prefix dropped: the names our modules use."""
    return [(name.removeprefix("model."), p) for name, p in model.named_parameters()]


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def sized(request):
    name = request.param
    hf_target, hf_drafter = preset_hf_configs(name)
    with torch.device("meta"):
        ref_target = transformers.Gemma4ForCausalLM(hf_target)
        ref_drafter = transformers.Gemma4AssistantForCausalLM(hf_drafter)
    pair = preset(name)
    return name, model_sizes(pair.target, pair.drafter), ref_target, ref_drafter


def test_totals_match_transformers(sized):
    name, report, ref_target, ref_drafter = sized
    target_total, drafter_total = EXPECTED[name]
    assert sum(p.numel() for p in ref_target.parameters()) == target_total
    assert sum(p.numel() for p in ref_drafter.parameters()) == drafter_total
    assert report["target"]["parameters"] == target_total
    assert report["drafter"]["parameters"] == drafter_total


def test_groups_match_transformers_and_sum_to_total(sized):
    _, report, ref_target, ref_drafter = sized
    for section, ref, rules in (("target", ref_target, TARGET_GROUPS), ("drafter", ref_drafter, DRAFTER_GROUPS)):
        groups = report[section]["groups"]
        assert {k: v["parameters"] for k, v in groups.items()} == group_counts(_hf_named_params(ref), rules)
        assert sum(v["parameters"] for v in groups.values()) == report[section]["parameters"]
        for entry in groups.values():
            n = entry["parameters"]
            assert entry["bytes"] == {"fp32": 4 * n, "bf16": 2 * n, "int8": n, "int4": (n + 1) // 2}


def test_kv_cache_and_step_reads(sized):
    name, report, _, _ = sized
    t, d = report["target"], report["drafter"]
    # E2B: 15 cache layers, 12 sliding (1 KV head x 256) + 3 full (1 x 512); E4B: 24 = 20 + 4, 2 KV heads.
    kv_heads, sliding, full = (1, 12, 3) if name == "e2b" else (2, 20, 4)
    per_token = 2 * kv_heads * (sliding * 256 + full * 512)
    assert t["kv_cache"]["bytes_per_1k_tokens"] == {"fp32": per_token * 1024 * 4, "bf16": per_token * 1024 * 2}
    step = t["decode_step"]
    groups = t["groups"]
    assert step["reads"]["lm_head"]["parameters"] == groups["token_embedding"]["parameters"]
    layers = 35 if name == "e2b" else 42
    assert step["reads"]["embedding_rows"]["parameters"] == t["config"]["hidden_size"] + layers * 256
    tables = groups["token_embedding"]["parameters"] + groups["ple_table"]["parameters"]
    assert step["reads"]["weights"]["parameters"] == t["parameters"] - tables
    # Clustered head: 32 centroids x 128 tokens = 4096 LM-head rows of 256, never the whole 262144.
    assert d["draft_step"]["reads"]["lm_head"]["parameters"] == 4096 * 256
    assert d["draft_step"]["parameters"] < d["parameters"] / 5


def test_cli_json_preset():
    run = subprocess.run([str(MTP_EDGE), "inspect", "e2b", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)  # exactly one document: json.loads rejects trailing output
    assert report["target"]["parameters"] == EXPECTED["e2b"][0]
    assert set(report["target"]["groups"]) == {
        "token_embedding", "ple_table", "ple_projections", "attention", "mlp", "norms_other"
    }
    assert set(report["drafter"]["groups"]) == {"lm_head", "centroid_head", "projections", "layers", "norms_other"}
    assert set(report["target"]["decode_step"]["bytes"]) >= {"fp32", "int8", "int4"}


def test_cli_table_preset(capsys):
    assert main(["inspect", "e4b"]) == 0
    out = capsys.readouterr().out
    assert "7.463B" in out and "PLE table" in out and "centroid head" in out and "KV cache" in out


def _save_tiny(tmp_path: Path) -> tuple[Path, Path]:
    hf_target, hf_drafter = preset_hf_configs("tiny")
    hf_target.save_pretrained(tmp_path / "target")  # config.json only: inspect must not need weights
    hf_drafter.save_pretrained(tmp_path / "drafter")
    return tmp_path / "target", tmp_path / "drafter"


def _inspect_json(capsys, *argv) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_checkpoint_folders(tmp_path, capsys):
    target_dir, drafter_dir = _save_tiny(tmp_path)
    expected = model_sizes(preset("tiny").target, preset("tiny").drafter)

    only_target = _inspect_json(capsys, target_dir)
    assert "drafter" not in only_target
    assert only_target["target"] == expected["target"]

    only_drafter = _inspect_json(capsys, drafter_dir)
    assert "target" not in only_drafter
    assert only_drafter["drafter"] == expected["drafter"]

    for argv in ((target_dir, "--drafter", drafter_dir), (tmp_path,)):  # --drafter, and a target/ + drafter/ folder
        pair = _inspect_json(capsys, *argv)
        assert pair["target"] == expected["target"] and pair["drafter"] == expected["drafter"]

    assert main(["inspect", str(tmp_path)]) == 0  # the table, for a folder
    assert "Target:" in capsys.readouterr().out


def test_cli_error_exit_code():
    run = subprocess.run([str(MTP_EDGE), "inspect", "/nonexistent"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtp-edge inspect: error: ") and "/nonexistent" in lines[0]
    assert "no such file or folder" in lines[0]


def test_cli_error_messages(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _, drafter_dir = _save_tiny(tmp_path / "pair")
    cases = (
        (["inspect", str(tmp_path)], "unknown model_type 'llama'"),
        (["inspect", str(drafter_dir), "--drafter", str(drafter_dir)], "is a drafter"),
    )
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mtp-edge: error: ") and message in err
    with pytest.raises(SystemExit) as e:  # checked while parsing, before any config is read
        main(["inspect", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("mtp-edge inspect: error: ")
    assert "no such file or folder; give a preset (e2b, e4b, tiny) or a checkpoint folder" in err
