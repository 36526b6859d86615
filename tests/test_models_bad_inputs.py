"""Acceptance check 4 of the foundations: bad checkpoints give one clear line, never a torch trace."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from mtp_edge.models import CheckpointError, load_drafter, load_pair, load_target


@pytest.fixture
def copy_dirs(tiny_dirs, tmp_path):
    target, drafter = tmp_path / "target", tmp_path / "drafter"
    shutil.copytree(tiny_dirs[0], target)
    shutil.copytree(tiny_dirs[1], drafter)
    return target, drafter


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    return message


def _edit_config(folder, edit):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_missing_config(copy_dirs):
    (copy_dirs[0] / "config.json").unlink()
    assert "missing config.json" in _error(load_target, copy_dirs[0], 16)


def test_unknown_model_type(copy_dirs):
    _edit_config(copy_dirs[0], lambda c: c.update(model_type="llama"))
    message = _error(load_target, copy_dirs[0], 16)
    assert "unknown model_type 'llama'" in message and "gemma4_text" in message


def test_missing_tensor(copy_dirs):
    path = copy_dirs[0] / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    message = _error(load_target, copy_dirs[0], 16)
    assert "missing tensor" in message and "layers.1.mlp.up_proj.weight [128, 64]" in message


def test_wrongly_shaped_tensor(copy_dirs):
    path = copy_dirs[0] / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:32].contiguous()
    save_file(tensors, path)
    message = _error(load_target, copy_dirs[0], 16)
    assert "'model.layers.0.self_attn.q_proj.weight'" in message and "[32, 64]" in message and "expected [64, 64]" in message


def test_drafter_for_another_backbone(copy_dirs):
    _edit_config(copy_dirs[1], lambda c: c.update(backbone_hidden_size=96))
    message = _error(load_pair, *copy_dirs, max_seq_len=16)
    assert "backbone_hidden_size 96" in message and "hidden_size 64" in message


def test_drafter_for_another_vocabulary(copy_dirs):
    _edit_config(copy_dirs[1], lambda c: c["text_config"].update(vocab_size=1024))
    message = _error(load_pair, *copy_dirs, max_seq_len=16)
    assert "vocab_size 1024" in message and "vocab_size 512" in message


def test_truncated_safetensors(copy_dirs):
    path = copy_dirs[1] / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(load_drafter, copy_dirs[1])
    assert "model.safetensors" in message and "truncated or corrupt" in message


def test_truncated_header(copy_dirs):
    path = copy_dirs[0] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    assert "truncated or corrupt" in _error(load_target, copy_dirs[0], 16)
