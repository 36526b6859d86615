"""Chat templates: a bundle carries its target checkpoint's chat template (tokenizer_config.json's
"chat_template" or chat_template.jinja, copied and hashed at export), the Python runtime renders it with
transformers' own renderer (runtime/tokenizer.py ChatTemplate) and the native runner with google/minja
(android_demo/native/chat_template.cpp, vendored under third_party/minja).

Checked: Python's rendering is transformers' apply_chat_template(tokenize=False, add_generation_prompt=True)
string, and its ids apply_chat_template(tokenize=True)'s; the native rendering (mtp_edge_text, no model) is
Python's, text and ids, for Gemma's template and one written to exercise Jinja's whitespace rules, over
message lists with non-ASCII text; a template's raise_exception is a one-line error on both sides; the
runner's --chat, "chat": true and "messages" on a tiny bundle given a tokenizer and a template give
Python's prompt ids, and a bundle without a template refuses --chat (runner and `mtp-edge generate`) with a
one-line message; export copies the template files and hashes them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_edge.export.bundle import ExportSettings
from mtp_edge.runtime.native import build
from mtp_edge.runtime.tokenizer import ChatTemplate, TextCodec, chat_messages

from test_native_text import K, CHUNK, MAX_SEQ, gemma_style_tokenizer, runner, text_tool  # noqa: F401 (fixtures)

MTP_EDGE = str(Path(sys.executable).with_name("mtp-edge"))

# Gemma 3's chat template (google/gemma-3-*-it tokenizer_config.json), as published.
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# The same turns without whitespace control: trim_blocks / lstrip_blocks (transformers' Jinja settings)
# decide the output, a comment, an expression indented on its line, a namespace, a string method and
# filters (trim; replace, which the native side adds to minja, with and without a count, and with an
# empty pattern), the last newline of the template (dropped), and a role the template refuses. (minja has
# the filters and methods chat templates use, not all of Jinja's: a template that needs a missing one
# fails natively with one line.)
LOOSE_TEMPLATE = """{# a Gemma-like template written loosely #}
{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message.role not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message.role) }}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}
    {{ message.content.replace('\\r', '') | replace('  ', ' ') | replace('o', '0', 1) | trim }}<end_of_turn>
    {{- message.role | replace('', '.', 3) | replace('', '|') -}}
{% endfor %}
{% if add_generation_prompt %}
<start_of_turn>model
{% endif %}
"""

CHATS = [
    [{"role": "user", "content": "Hello wörld 😀 中文"}],
    [{"role": "system", "content": "Answer briefly. Ünïcödé ok."}, {"role": "user", "content": "  Café au lait?  "}],
    [{"role": "user", "content": "The quick brown fox"}, {"role": "assistant", "content": "jumps over\nthe lazy dog."},
     {"role": "user", "content": "def main():\n    return 42\n"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": [{"type": "text", "text": " crème brûlée "}, {"type": "image"}]}],
]


def write_checkpoint_files(folder: Path, template: str | None, *, as_jinja: bool = False) -> Path:
    """A tokenizer folder as transformers saves one: tokenizer.json, tokenizer_config.json (special tokens,
    one of them as a serialized AddedToken) and the template in the config or in chat_template.jinja."""
    folder.mkdir(parents=True, exist_ok=True)
    gemma_style_tokenizer(folder / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
              "eos_token": {"__type": "AddedToken", "content": "<eos>", "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": True},
              "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 1024}
    if template is not None and not as_jinja:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if template is not None and as_jinja:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def pad_vocabulary(tokenizer: Path, size: int) -> None:
    """Fills the vocabulary up to the model's size with <unusedN> tokens (as Gemma's has), so that
    whatever the tiny model generates decodes."""
    doc = json.loads(tokenizer.read_text())
    vocab = doc["model"]["vocab"]
    for i in range(len(vocab), size):
        vocab[f"<unused{i}>"] = i
    tokenizer.write_text(json.dumps(doc, ensure_ascii=False))


def transformers_tokenizer(folder: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def native_chat(text_tool: Path | list[str], folder: Path, chats: list[list[dict]], env: dict | None = None) -> list[dict]:
    """mtp_edge_text's renderings ({"text", "ids"}) of `chats` (`text_tool`: the tool, or the argv that runs it)."""
    argv = [str(text_tool)] if isinstance(text_tool, Path) else text_tool
    lines = "".join(json.dumps({"chat": c}) + "\n" for c in chats)
    done = subprocess.run([*argv, str(folder / "tokenizer.json")], input=lines.encode(), capture_output=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]


def _error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("template,as_jinja", [(GEMMA_TEMPLATE, False), (LOOSE_TEMPLATE, True)], ids=["gemma", "loose-jinja-file"])
def test_python_rendering_is_transformers(tmp_path, template, as_jinja):
    folder = write_checkpoint_files(tmp_path / "tok", template, as_jinja=as_jinja)
    ours = ChatTemplate.from_folder(folder)
    reference = transformers_tokenizer(folder)
    codec = TextCodec(folder / "tokenizer.json")
    chats = CHATS if template is GEMMA_TEMPLATE else CHATS[:4]
    for chat in chats:
        text = ours.render(chat)
        assert text == reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), chat
        ids = reference.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert codec.encode(text, add_special_tokens=False) == list(ids), chat
    assert ours.render(CHATS[0]).startswith("<bos>") and ours.render(CHATS[0]).endswith("model\n")
    assert ours.render(CHATS[0], add_generation_prompt=False) == reference.apply_chat_template(
        CHATS[0], tokenize=False, add_generation_prompt=False)


def test_chat_template_jinja_wins_over_the_config(tmp_path):
    """transformers' order: chat_template.jinja first, tokenizer_config.json's "chat_template" else;
    a folder with neither has no template."""
    folder = write_checkpoint_files(tmp_path / "tok", GEMMA_TEMPLATE)
    (folder / "chat_template.jinja").write_text(LOOSE_TEMPLATE)
    assert ChatTemplate.from_folder(folder).source == LOOSE_TEMPLATE
    assert transformers_tokenizer(folder).chat_template == LOOSE_TEMPLATE
    bare = write_checkpoint_files(tmp_path / "bare", None)
    assert ChatTemplate.from_folder(bare) is None
    named = write_checkpoint_files(tmp_path / "named", None)
    config = json.loads((named / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": GEMMA_TEMPLATE}]
    (named / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTemplate.from_folder(named).source == GEMMA_TEMPLATE


@pytest.mark.native
@pytest.mark.parametrize("template,as_jinja", [(GEMMA_TEMPLATE, False), (LOOSE_TEMPLATE, True)], ids=["gemma", "loose-jinja-file"])
def test_native_rendering_matches_python(text_tool, tmp_path, template, as_jinja):
    folder = write_checkpoint_files(tmp_path / "tok", template, as_jinja=as_jinja)
    ours = ChatTemplate.from_folder(folder)
    codec = TextCodec(folder / "tokenizer.json")
    chats = CHATS if template is GEMMA_TEMPLATE else CHATS[:4]
    for chat, got in zip(chats, native_chat(text_tool, folder, chats), strict=True):
        want = ours.render(chat)
        assert got["text"] == want, chat
        assert got["ids"] == codec.encode(want, add_special_tokens=False), chat
    names = [codec.tokenizer.id_to_token(i) for i in native_chat(text_tool, folder, CHATS[:1])[0]["ids"]]
    assert names[0] == "<bos>" and names.count("<bos>") == 1  # the template's BOS only: the tokenizer's is not added
    assert "<start_of_turn>" in names and "<0xF0>" in names  # a turn marker; the emoji by byte fallback


@pytest.mark.native
@pytest.mark.xdist_group("tiny-arm64")  # the aarch64 build test_native_arm64 makes
def test_arm64_rendering_matches_python(tmp_path):
    """The chat template built for aarch64 (mtp_edge_text under qemu) renders and encodes as Python does."""
    exe = build.build_runner(progress=False, arch="arm64").with_name("mtp_edge_text")
    argv, env, _ = build.runner_command(exe, "arm64")
    folder = write_checkpoint_files(tmp_path / "tok", GEMMA_TEMPLATE)
    ours = ChatTemplate.from_folder(folder)
    codec = TextCodec(folder / "tokenizer.json")
    for chat, got in zip(CHATS, native_chat(argv, folder, CHATS, env=env), strict=True):
        assert got["text"] == ours.render(chat) and got["ids"] == codec.encode(got["text"], add_special_tokens=False), chat


@pytest.mark.native
def test_template_errors_are_one_line_on_both_sides(text_tool, tmp_path):
    folder = write_checkpoint_files(tmp_path / "tok", GEMMA_TEMPLATE)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    from mtp_edge.runtime.errors import GenerationError

    with pytest.raises(GenerationError, match="Conversation roles must alternate") as e:
        ChatTemplate.from_folder(folder).render(bad)
    done = subprocess.run([str(text_tool), str(folder / "tokenizer.json")], input=(json.dumps({"chat": bad}) + "\n").encode(),
                          capture_output=True, timeout=60)
    message = _error(done)
    assert "chat template: Conversation roles must alternate user/assistant/user/assistant/..." in message
    assert str(e.value).startswith("chat template: Conversation roles must alternate")
    loose = write_checkpoint_files(tmp_path / "loose", LOOSE_TEMPLATE, as_jinja=True)
    done = subprocess.run([str(text_tool), str(loose / "tokenizer.json")],
                          input=(json.dumps({"chat": [{"role": "tool", "content": "x"}]}) + "\n").encode(),
                          capture_output=True, timeout=60)
    assert "chat template: Unknown role: tool" in _error(done)
    broken = write_checkpoint_files(tmp_path / "broken", "{% for m in messages %}{{ m.content }", as_jinja=True)
    done = subprocess.run([str(text_tool), str(broken / "tokenizer.json")], input=(json.dumps({"chat": CHATS[0]}) + "\n").encode(),
                          capture_output=True, timeout=60)
    assert "the chat template does not parse" in _error(done)


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dirs, shared_export) -> Path:
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable",
                                                   quantize="none"))


def add_artifacts(bundle: Path, files: dict[str, Path]) -> None:
    """Copies files into a bundle and lists them in its manifest (role -> file), hashed, as export does."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for role, path in files.items():
        shutil.copy(path, bundle / path.name)
        data = (bundle / path.name).read_bytes()
        manifest["artifacts"][role] = {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if "tokenizer" in files:
        manifest["tokenizer"] = "tokenizer.json"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.mark.native
@pytest.mark.xdist_group("tiny-portable")  # test_native_runner's tiny bundle, on the worker that exports it
def test_runner_chat_prompts_are_pythons(runner, tiny_bundle, tmp_path):
    folder = write_checkpoint_files(tmp_path / "tok", GEMMA_TEMPLATE)
    pad_vocabulary(folder / "tokenizer.json", 512)  # the tiny model's
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    add_artifacts(bundle, {"tokenizer": folder / "tokenizer.json", "tokenizer_config": folder / "tokenizer_config.json"})
    ours = ChatTemplate.from_folder(bundle)
    codec = TextCodec(bundle / "tokenizer.json")
    prompt = "The quick brown fox"  # ids within the tiny model's 512
    want_text = ours.render(chat_messages(prompt))
    want_ids = codec.encode(want_text, add_special_tokens=False)
    flags = ["--prompt", prompt, "--chat", "--max-new-tokens", "4", "--k", "2"]
    got = json.loads(subprocess.run([str(runner), str(bundle), *flags, "--json"], capture_output=True, timeout=120,
                                    check=True).stdout)
    assert got["prompt_text"] == want_text and got["prompt_tokens"] == want_ids
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there."}]  # fits 40 positions
    requests = [{"prompt": prompt, "chat": True, "max_new_tokens": 4, "k": 2}, {"messages": chat, "max_new_tokens": 4},
                {"prompt": prompt, "max_new_tokens": 4}]
    done = subprocess.run([str(runner), str(bundle)], input="".join(json.dumps(r) + "\n" for r in requests).encode(),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert results[0]["prompt_tokens"] == want_ids and results[0]["tokens"] == got["tokens"]
    assert results[1]["prompt_text"] == ours.render(chat)
    assert results[1]["prompt_tokens"] == codec.encode(ours.render(chat), add_special_tokens=False)
    assert "prompt_text" not in results[2] and results[2]["prompt_tokens"] == codec.encode(prompt)
    # The Python CLI on the same bundle: the same prompt ids.
    cli = subprocess.run([MTP_EDGE, "generate", "--bundle", str(bundle),
                          "--backend", "pte", *flags[:3], "--max-new-tokens", "4", "--k", "2", "--json"],
                         capture_output=True, timeout=300)
    assert cli.returncode == 0, cli.stderr.decode(errors="replace")
    doc = json.loads(cli.stdout)
    assert doc["prompt_ids"] == want_ids and doc["tokens"] == got["tokens"]
    # Bad chat requests: one line each.
    for request, message in [({"messages": chat, "prompt": "x"}, 'give "prompt" or "messages", not both'),
                             ({"prompt": [2, 3], "chat": True}, '"chat": true takes a text prompt'),
                             ({"messages": "hi"}, "messages must be an array, got a string"),
                             ({"messages": [{"role": "user", "content": "a"}] * 2}, "Conversation roles must alternate")]:
        done = subprocess.run([str(runner), str(bundle)], input=(json.dumps(request) + "\n").encode(), capture_output=True,
                              timeout=120)
        assert message in _error(done), request
    # A template file changed after export is refused.
    (bundle / "tokenizer_config.json").write_text((bundle / "tokenizer_config.json").read_text().replace("<bos>", "<eos>"))
    done = subprocess.run([str(runner), str(bundle), *flags], capture_output=True, timeout=120)
    assert "tokenizer_config.json was modified after export" in _error(done)


@pytest.mark.native
@pytest.mark.xdist_group("tiny-portable")
def test_a_bundle_without_a_template_refuses_chat(runner, tiny_bundle, tmp_path):
    folder = write_checkpoint_files(tmp_path / "tok", None)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    add_artifacts(bundle, {"tokenizer": folder / "tokenizer.json"})
    flags = ["--prompt", "Hello", "--chat", "--max-new-tokens", "4"]
    message = _error(subprocess.run([str(runner), str(bundle), *flags], capture_output=True, timeout=120))
    assert "no chat template" in message and "without --chat" in message
    done = subprocess.run([str(runner), str(bundle)], input=b'{"prompt": "Hello", "chat": true}\n', capture_output=True,
                          timeout=120)
    assert "request line 1: " in _error(done) and "no chat template" in _error(done)
    # A tokenizer_config.json without a "chat_template" is no template either.
    add_artifacts(bundle, {"tokenizer_config": folder / "tokenizer_config.json"})
    assert "no chat template" in _error(subprocess.run([str(runner), str(bundle), *flags], capture_output=True, timeout=120))
    cli = subprocess.run([MTP_EDGE, "generate", "--bundle", str(bundle),
                          "--backend", "pte", *flags], capture_output=True, timeout=300)
    assert cli.returncode != 0
    lines = cli.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "no chat template" in lines[0] and "--chat" in lines[0], lines


@pytest.mark.slow  # an ONNX export of the tiny pair
def test_export_copies_the_chat_template(tiny_dirs, tmp_path):
    """write_bundle copies tokenizer_config.json and chat_template.jinja from the target's folder, hashed,
    and the bundle's template is the checkpoint's."""
    from mtp_edge.export.bundle import read_manifest, write_bundle

    target = tmp_path / "target"
    shutil.copytree(tiny_dirs[0], target)
    write_checkpoint_files(target, GEMMA_TEMPLATE)
    (target / "chat_template.jinja").write_text(LOOSE_TEMPLATE)
    settings = ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, formats="onnx", quantize="none")
    manifest = write_bundle(target, tiny_dirs[1], tmp_path / "bundle", settings)
    for role, name in [("tokenizer_config", "tokenizer_config.json"), ("chat_template", "chat_template.jinja")]:
        entry = manifest.artifact(role)
        assert entry.file == name
        assert entry.sha256 == hashlib.sha256((target / name).read_bytes()).hexdigest()
    read_manifest(tmp_path / "bundle")  # every hash checks
    assert ChatTemplate.from_folder(tmp_path / "bundle").source == LOOSE_TEMPLATE
