"""The checkpoint's tokenizer.json through `tokenizers`, with incremental decoding for streaming."""

from __future__ import annotations

from pathlib import Path

from .errors import GenerationError


class TextCodec:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TextCodec | None":
        path = Path(folder) / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


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
