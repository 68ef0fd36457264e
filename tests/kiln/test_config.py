"""The config loader: nested dataclasses, dotted overrides, errors naming the key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from kiln.config import canonical_json, load_config, runtime_field
from kiln.errors import KilnError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass(frozen=True)
class Top:
    name: str
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    optim: Optim = field(default_factory=Optim)
    tags: dict[str, float] = field(default_factory=dict)
    workers: int = runtime_field(2)
    maybe: int | None = None


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_nested_load_with_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, 'name = "x"\nsteps = 3\n[optim]\nlr = 1\nbetas = [0.8, 0.9]\n[tags]\nwiki = 0.5\n')
    cfg = load_config(Top, p, ["optim.lr=3e-4", "kind=b", "maybe=7"])
    assert cfg == Top(name="x", steps=3, kind="b", optim=Optim(lr=3e-4, betas=(0.8, 0.9)), tags={"wiki": 0.5},
                      maybe=7)
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ('name = "x"\nstep = 3\n', [], "unknown key 'step'"),
        ('name = "x"\n[optim]\nlrr = 1.0\n', [], "unknown key 'optim.lrr'"),
        ('name = "x"\nsteps = "ten"\n', [], "'steps' must be int"),
        ('name = "x"\n', ["kind=c"], "'kind' must be one of"),
        ('name = "x"\n', ["steps=true"], "'steps' must be int"),
        ('name = "x"\n', ["optim.betas=0.9"], "'optim.betas' must be a list"),
        ("steps = 1\n", [], "name"),
        ('name = "x"\nsteps = \n', [], "not valid"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(KilnError, match=message) as info:
        load_config(Top, p, overrides)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="config file not found"):
        load_config(Top, tmp_path / "nope.toml")


def test_runtime_fields_do_not_change_canonical_json() -> None:
    assert canonical_json(Top(name="x", workers=1)) == canonical_json(Top(name="x", workers=8))
    assert canonical_json(Top(name="x", steps=1)) != canonical_json(Top(name="x", steps=2))


# ---------------------------------------------------------------- control characters in paths


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the kiln CLI; it must exit 2 with exactly one stderr line, a `kiln: error:` line, which is returned."""
    from cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    return err


DEMO = "configs/demo.toml"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--root", "/tmp/st\0re", "plan", DEMO], r"--root contains a NUL character \('/tmp/st\\x00re'\)"),
        (["plan", DEMO, "-s", 'store.root="st\\u0000ore"'], r"demo\.toml: 'store\.root' contains a NUL character"),
        (["plan", DEMO, "-s", 'clean.inputs=["ok.json", "b\\u0000d.json"]'], r"'clean\.inputs\[1\]' contains a NUL"),
        (["plan", DEMO, "-s", 'download.sources=[{name="a.bz2", url="/x/a\\u0000.bz2"}]'],
         r"'download\.sources\[0\]\.url' contains a NUL"),
        (["plan", DEMO, "-s", 'download.sources=[{name="a\\n.bz2", url="/x/a.bz2"}]'],
         r"'download\.sources\[0\]\.name' contains control character U\+000A \('a\\n\.bz2'\); remove it"),
        (["plan", DEMO, "-s", 'tokenizer.existing="/m/\\u0007.model"'], r"'tokenizer\.existing' contains control"),
    ],
)
def test_a_control_character_in_a_path_is_one_error_line(capsys, argv: list[str], message: str) -> None:
    assert re.search(message, cli_error(capsys, argv))


def test_text_settings_may_hold_newlines_but_no_nul() -> None:
    from tasks.pipeline_config import PipelineConfig

    data = {"download": {"sources": [{"name": "a.xml", "url": "/a.xml"}]}, "generate": {"prompt": "Q:\nA:"}}
    assert load_config(PipelineConfig, data=data).generate.prompt == "Q:\nA:"
    data["generate"]["prompt"] = "Q:\0"
    with pytest.raises(KilnError, match=r"config: 'generate\.prompt' contains a NUL character"):
        load_config(PipelineConfig, data=data)
