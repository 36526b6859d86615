"""Argument parsing shared by every mtp-edge entry point: errors are one line, paths are checked while parsing.

`mtp-edge` (runtime/commands/cli.py, with its nested `bench NAME`) and `optimum-cli export mtp-edge`
(runtime/optimum/cli.py) build their parsers with these. argparse only: nothing here may import torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `PROG: error: MESSAGE`, and exit code 2 (argparse's own
    message; its usage line is left out: `PROG -h` prints it). Subparsers inherit the class
    (add_subparsers' parser_class defaults to the parent's type), so the nested ones need nothing."""

    def error(self, message: str):
        one_line_error(self, message)


def one_line_error(parser: argparse.ArgumentParser, message: str):
    parser.exit(2, f"{parser.prog}: error: {' '.join(str(message).splitlines())}\n")


def make_one_line(parser: argparse.ArgumentParser) -> None:
    """OneLineParser's errors for a parser someone else created (optimum-cli hands us its subparser)."""
    parser.error = lambda message: one_line_error(parser, message)


class ExistingPath:
    """type= for an argument naming a folder or file that must already exist (not for outputs, which are
    created). The check runs while parsing, before anything is loaded; the value stays the string given."""

    def __init__(self, kind: str, give: str):
        assert kind in ("folder", "file"), kind
        self.kind, self.give = kind, give
        self.__name__ = kind  # argparse names a type by it in its own messages

    def __call__(self, text: str) -> str:
        check_path(text, self.kind, self.give)
        return text

    def __repr__(self) -> str:
        return f"ExistingPath({self.kind!r})"


def check_path(text: str, kind: str, give: str) -> None:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder; give {give}.")
    if kind == "folder" and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder; give {give}.")
    if kind == "file" and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file; give {give}.")


TARGET_DIR = ExistingPath("folder", "a target checkpoint folder (a Hugging Face folder with config.json)")
DRAFTER_DIR = ExistingPath("folder", "a drafter checkpoint folder (a Hugging Face folder with config.json)")
BUNDLE_DIR = ExistingPath("folder", "a bundle folder written by `mtp-edge export`")
TEXT_FILE = ExistingPath("file", "a text file")
CORPUS_FILE = ExistingPath("file", "a text corpus file to train on")
PROMPTS_FILE = ExistingPath("file", "a text file with one prompt per line")


def model_spec(text: str) -> str:
    """type= for `mtp-edge inspect MODEL`: a preset name or an existing checkpoint folder."""
    from mtp_edge.models.config import PRESETS  # reads no weights; config.py imports json and dataclasses only

    if text not in PRESETS:
        check_path(text, "folder", f"a preset ({', '.join(PRESETS)}) or a checkpoint folder")
    return text


model_spec.__name__ = "model"


class WholeNumber:
    """type= for a count: a whole number >= minimum, checked while parsing."""

    def __init__(self, minimum: int):
        self.minimum = minimum
        self.__name__ = "whole number"

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < self.minimum:
            raise argparse.ArgumentTypeError(f"takes a whole number >= {self.minimum}, got {text!r}.")
        return value

    def __repr__(self) -> str:
        return f"WholeNumber({self.minimum})"


def whole_numbers(text: str) -> tuple[int, ...]:
    """type= for a list of counts: comma-separated whole numbers >= 1 (e.g. prompt lengths 512,2048)."""
    try:
        values = tuple(int(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"takes whole numbers >= 1, comma-separated (e.g. 512,2048), got {text!r}.")
    return values


whole_numbers.__name__ = "list of whole numbers"
