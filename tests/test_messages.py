"""What an error message or a help text tells the user to type exists.

Every `KilnError` (and other exception) message and every argparse help string in the
library is read from the source; the ``--options`` it names must be options of the
``kiln`` CLI or of a trainer's CLI, the ``kiln <command>`` it names must be a command,
and the dotted config keys it suggests setting (``pretrain.optim.lr=3e-4``, ``set
run.out_dir=…``) must be keys of the pipeline or trainer configs (from the top, or from
a section, as a message raised inside that section names them).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("cli", "flows", "tasks", "trainer", "model", "storage", "kiln")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"\bkiln ([a-z]+)")
# A dotted key the text tells the user to set: "key=value", "key = value", "set key", "raise key".
NAME = r"[a-z_][a-z0-9_]*"  # a config field name: digits after the first letter (run.fp8_head)
KEY = re.compile(rf"\b({NAME}(?:\.{NAME})+)\s*=(?!=)|\b(?:set|raise|lower)\s+({NAME}(?:\.{NAME})+)")
HOLE = "\x00"  # where an f-string's {value} was: never part of an option or a key


def _text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    return HOLE


def user_texts() -> Iterator[tuple[str, str]]:
    """(where, text) for every exception message and argparse help string in the library."""
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                func = ast.unparse(node.func)
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                if func.endswith("Error") and node.args:
                    yield where, _text(node.args[0])
                elif func == "_check" and len(node.args) == 3:  # trainer.config: KilnError(f"{key} {message}")
                    yield where, f"{_text(node.args[1])} {_text(node.args[2])}"
                elif func.endswith("add_argument"):
                    yield from ((where, _text(k.value)) for k in node.keywords if k.arg == "help")


def parser_options(parser) -> set[str]:
    """Every option string of an argparse parser and its subcommands."""
    import argparse

    options: set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= parser_options(sub)
    return options


def kiln_commands() -> set[str]:
    import argparse

    from cli.main import build_parser

    parser = build_parser()
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def trainer_options(capsys: pytest.CaptureFixture[str]) -> set[str]:
    from trainer.config import TrainConfig
    from trainer.loop import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"], TrainConfig, "python -m trainer.pretrain", "")
    return set(OPTION.findall(capsys.readouterr().out))


def config_keys() -> tuple[set[str], set[str]]:
    """(dotted keys from the roots, dotted keys from any section) of the pipeline and trainer configs."""
    from model.config import ModelConfig
    from tasks.pipeline_config import PipelineConfig
    from trainer.config import ModelSection, TrainConfig
    from trainer.dpo import DPOConfig
    from trainer.sft import SFTConfig

    absolute: set[str] = set()
    relative: set[str] = set()

    def walk(cls: type, prefix: str, sections: list[str]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            absolute.add(key)
            relative.update(key[len(s):] for s in sections)
            kinds = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)]
            if cls is ModelSection and f.name == "overrides":  # a dict of ModelConfig fields
                kinds = [ModelConfig]
            for kind in kinds:
                walk(kind, f"{key}.", [*sections, f"{key}."])

    for root in (PipelineConfig, TrainConfig, SFTConfig, DPOConfig):
        walk(root, "", [""])
    return absolute, relative


def test_the_scan_reads_messages_and_help() -> None:
    texts = dict(user_texts())
    assert any("unknown stage" in t and "--until" in t for t in texts.values())  # a KilnError
    assert any("override a config value" in t for t in texts.values())  # an argparse help string


def test_every_option_a_message_names_exists(capsys) -> None:
    from cli.main import build_parser

    known = parser_options(build_parser()) | trainer_options(capsys)
    named = {(where, option) for where, text in user_texts() for option in OPTION.findall(text)}
    assert {option for _, option in named} >= {"--until", "--tokenizer"}  # the scan sees them
    assert sorted(f"{where}: {option}" for where, option in named if option not in known) == []


def test_every_kiln_command_a_message_names_exists() -> None:
    commands = kiln_commands()
    wrong = [f"{where}: kiln {name}" for where, text in user_texts() for name in COMMAND.findall(text)
             if name not in commands]
    assert wrong == []


def test_every_config_key_a_message_suggests_exists() -> None:
    absolute, relative = config_keys()
    assert {"pretrain.optim.lr", "sft.run.val_every"} <= absolute and "run.out_dir" in relative
    suggested = [(where, a or b) for where, text in user_texts() for a, b in KEY.findall(text)]
    assert len(suggested) > 5  # the scan finds them (run.out_dir=, tokenizer.chat_tokens = …, raise data.seq_len)
    wrong = [f"{where}: {key}" for where, key in suggested if key not in absolute | relative]
    assert wrong == []
