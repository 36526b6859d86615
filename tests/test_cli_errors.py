"""Errors of the command line: a bad flag value, of any (sub)command, is one line and exit code 2; a path
that does not exist says so, naming the flag, the path and what to give instead.

The parser tree is walked, so a flag added later is covered without a new test: every option or positional
with a type= or choices gets a value that cannot be valid, every other argument it needs a valid one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_edge.runtime.commands.arguments import ExistingPath, WholeNumber, model_spec, whole_numbers
from mtp_edge.runtime.commands.cli import PROG, build_parser, draft_length, main

BIN = Path(sys.executable).parent
MISSING = "{tmp}/nonexistent"
OUTPUTS = {"out", "work", "out_dir", "plot"}  # paths the commands write: they need not exist


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand words, parser) for the parser and every nested subparser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _bad_values(action: argparse.Action) -> list[str]:
    if isinstance(action, argparse._SubParsersAction):
        return ["no-such-command"]
    values = ["no-such-choice"] if action.choices is not None else []
    kind = action.type
    if kind is None:
        pass
    elif kind in (int, float):
        values.append("not-a-number")
    elif isinstance(kind, WholeNumber):
        values += ["not-a-number", str(kind.minimum - 1)]
    elif isinstance(kind, ExistingPath) or kind is model_spec:
        values.append(MISSING)
    elif kind is draft_length:
        values += ["often", "-1", "1.5"]
    elif kind is whole_numbers:
        values += ["often", "512,0", ""]
    else:
        raise AssertionError(f"{action.option_strings or action.dest}: type {kind!r} is new here; give _bad_values "
                             "and _valid_value a value of it")
    return values


def _valid_value(action: argparse.Action, tmp: Path) -> str:
    kind = action.type
    if action.choices is not None:
        return next(iter(action.choices))
    if isinstance(kind, ExistingPath):
        return str(tmp / ("folder" if kind.kind == "folder" else "file.txt"))
    if kind is model_spec:
        return "tiny"
    if isinstance(kind, WholeNumber):
        return str(max(kind.minimum, 1))
    return {int: "1", float: "0.5", draft_length: "auto", whole_numbers: "512"}.get(kind, str(tmp / "out"))


def _name(action: argparse.Action) -> str:
    """How argparse names the argument in its messages."""
    return "/".join(action.option_strings) or action.metavar or action.dest


def _argv(path, parser, tmp: Path, target=None, bad: str | None = None) -> list[str]:
    """The subcommand words, a valid value for every argument the parser requires, and `bad` for target."""
    if isinstance(target, argparse._SubParsersAction):
        return [*path, bad]
    chosen = set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            members = group._group_actions
            chosen.add(id(target if target in members else members[0]))
    options, positionals = [], []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not (action is target or not action.option_strings or action.required or id(action) in chosen):
            continue
        value = bad if action is target else _valid_value(action, tmp)
        if action.option_strings:
            options += [action.option_strings[0], value]
        else:
            positionals.append(value)
    return [*path, *positionals, *options]  # positionals first: an option with nargs="+" would swallow them


def _cases(path_types_only: bool = False) -> list:
    return list(_iter_cases(path_types_only))


def _iter_cases(path_types_only: bool):
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or (action.type is None and action.choices is None):
                continue
            for bad in _bad_values(action):
                if path_types_only and bad != MISSING:
                    continue
                yield pytest.param(path, _name(action), bad, id=" ".join([*path, f"{_name(action)}={bad}"]))


def _find(path, name):
    parser = dict(_parsers(build_parser()))[path]
    return parser, next(a for a in parser._actions if _name(a) == name)


@pytest.fixture
def tmp(tmp_path) -> Path:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("hello\n")
    return tmp_path


def _one_line_error(capsys, argv: list[str]) -> str:
    """main(argv) exits with code 2, printing one line on stderr and nothing on stdout; returns the line."""
    with pytest.raises(SystemExit) as parsed:  # first the parse alone: no command may run if a value were accepted
        build_parser().parse_args(argv)
    assert parsed.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip() and err == lines[0] + "\n", err
    return lines[0]


def test_the_walk_reaches_every_subcommand():
    paths = {path for path, _ in _parsers(build_parser())}
    assert {("generate",), ("inspect",), ("bench",), ("bench", "methods"), ("bench", "export-measured"), ("export",),
            ("train-drafter",), ("eval",), ("tune",), ("validate",), ("demo",)} <= paths


@pytest.mark.parametrize("path", [path for path, _ in _parsers(build_parser())], ids=lambda p: " ".join(p) or PROG)
def test_valid_arguments_parse(path, tmp):
    """The values the other tests fill in are valid: the error those tests see is the bad value's."""
    parser = dict(_parsers(build_parser()))[path]
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return  # a parser of subcommands: its leaves are checked
    build_parser().parse_args(_argv(path, parser, tmp))


@pytest.mark.parametrize("path, name, bad", _cases())
def test_a_bad_value_is_one_line_naming_the_flag(path, name, bad, tmp, capsys):
    parser, action = _find(path, name)
    bad = bad.format(tmp=tmp)
    line = _one_line_error(capsys, _argv(path, parser, tmp, action, bad))
    assert line.startswith(f"{' '.join([PROG, *path])}: error: argument {name}: "), line
    assert bad in line, line  # the value given, quoted


@pytest.mark.parametrize("path, name, bad", _cases(path_types_only=True))
def test_a_missing_path_says_so(path, name, bad, tmp, capsys):
    parser, action = _find(path, name)
    missing = bad.format(tmp=tmp)
    line = _one_line_error(capsys, _argv(path, parser, tmp, action, missing))
    assert f"argument {name}: {missing}: no such file or folder; give " in line, line


def test_a_file_where_a_folder_belongs_says_so(tmp, capsys):
    line = _one_line_error(capsys, ["generate", "--bundle", str(tmp / "file.txt"), "--prompt-ids", "1"])
    assert line == (f"mtp-edge generate: error: argument --bundle: {tmp / 'file.txt'}: a file, not a folder; "
                    "give a bundle folder written by `mtp-edge export`.")


def test_every_input_path_is_checked():
    """Each argument that names a folder or file to read has a type that checks it exists (outputs excepted)."""
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            metavar = str(action.metavar or "")
            if ("DIR" in metavar or "FILE" in metavar or metavar == "MODEL") and action.dest not in OUTPUTS:
                assert isinstance(action.type, ExistingPath) or action.type is model_spec, (path, _name(action))


def test_the_issue_example_through_the_console_script():
    done = subprocess.run([str(BIN / "mtp-edge"), "generate", "--model", "/nonexistent", "--prompt", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("mtp-edge generate: error: argument --model: /nonexistent: no such file or folder; "
                           "give a target checkpoint folder (a Hugging Face folder with config.json).\n")


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}/nonexistent", "--drafter", "{tmp}", "{tmp}/out"],
     "argument --model: {tmp}/nonexistent: no such file or folder; give a target checkpoint folder"),
    (["--model", "{tmp}", "--drafter", "{tmp}", "--k", "x", "{tmp}/out"], "argument --k: invalid int value: 'x'"),
])
def test_optimum_cli_errors_are_one_line(args, message, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run([str(BIN / "optimum-cli"), "export", "mtp-edge", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"optimum-cli export mtp-edge: error: {message.format(tmp=tmp_path)}"), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chains", ["5", "1", "2,x", "0,2"])
def test_export_refuses_draft_chains_out_of_range_before_any_work(chains, tmp_path, capsys):
    """--draft-chains takes all, none or lengths 2..k: any other is one line, and no folder is written."""
    pair = Path(__file__).resolve().parents[1] / "models" / "default_pair"
    out = tmp_path / "out"
    code = main(["export", "--model", str(pair / "target"), "--drafter", str(pair / "drafter"), "--out", str(out),
                 "--k", "4", "--draft-chains", chains])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"draft_chains={chains!r}" in err and "lengths from 2 to k=4" in err and "--draft-chains 2,4" in err
    assert not out.exists()


@pytest.mark.parametrize("chains, lengths", [("all", (2, 3, 4)), ("none", ()), ("4,2", (2, 4)), (" 3 ", (3,))])
def test_export_draft_chains_name_the_one_call_lengths(chains, lengths):
    from mtp_edge.export.settings import ExportSettings

    settings = ExportSettings.from_args(build_parser().parse_args(
        ["export", "--model", ".", "--drafter", ".", "--out", "x", "--draft-chains", chains]))
    assert settings.draft_chain_lengths == lengths
    assert ExportSettings.from_json(settings.to_json()) == settings  # what the bundle cache keys on
