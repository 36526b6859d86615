"""The checkpoint's tokenizer.json through `tokenizers`, with incremental decoding for streaming, and
its chat template (chat_template.jinja or tokenizer_config.json's "chat_template") rendered as
transformers' apply_chat_template renders it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import GenerationError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# The named special tokens transformers passes to a chat template (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TextCodec:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TextCodec | None":
        path = Path(folder) / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text`; add_special_tokens=False leaves out the post-processor's BOS (a chat
        template writes its own, and transformers encodes a rendered chat without them)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


class ChatTemplate:
    """A folder's chat template (a checkpoint's, or the copy a bundle carries), rendered with
    transformers' own renderer, as tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True) renders it: the same Jinja environment (trim_blocks, lstrip_blocks,
    raise_exception, tojson, strftime_now) and context (messages, tools=None, documents=None,
    add_generation_prompt and the named special tokens of tokenizer_config.json).

    Where transformers finds it: chat_template.jinja first, else tokenizer_config.json's
    "chat_template" (a string, or a list of named templates, of which "default" is taken)."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ChatTemplate | None":
        folder = Path(folder)
        config = {}
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            try:
                config = json.loads((folder / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise GenerationError(f"{folder / TOKENIZER_CONFIG_FILE}: not valid JSON ({e}).") from None
            if not isinstance(config, dict):
                raise GenerationError(f"{folder / TOKENIZER_CONFIG_FILE}: not a tokenizer config (expected a JSON object).")
        if (folder / CHAT_TEMPLATE_FILE).is_file():
            source = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        else:
            source = _default_template(config.get("chat_template"), folder / TOKENIZER_CONFIG_FILE)
            if source is None:
                return None
        special = {}
        for name in SPECIAL_TOKEN_NAMES:
            value = config.get(name)
            if isinstance(value, dict):  # a serialized AddedToken
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        return cls(source, special)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The chat as text, ready to encode with add_special_tokens=False; a template's
        raise_exception (e.g. a role it does not know) becomes a GenerationError."""
        import jinja2
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.source,
                                                add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.TemplateError as e:
            raise GenerationError(f"chat template: {e}") from None
        return rendered[0]


def _default_template(value, where: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise GenerationError(f"{where}: chat_template is neither a template nor a list holding one named 'default'.")


def chat_messages(prompt: str) -> list[dict]:
    """A prompt as one user turn."""
    return [{"role": "user", "content": prompt}]


class TextStream:
    """Turns a token stream into text pieces; holds back bytes until they decode to whole characters."""

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.ids: list[int] = []
        self.printed = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.printed = text[self.printed:], len(text)
        return piece


def parse_prompt_ids(spec: str) -> list[int]:
    try:
        return [int(x) for x in spec.replace(" ", "").split(",") if x]
    except ValueError:
        raise GenerationError(f"--prompt-ids must be comma-separated integers, got {spec!r}.") from None
