"""`kiln plan`: keys, presence and the reasons for a rebuild, without Prefect or any stage running.

The plan after a real run of the whole DAG (all present, then a tokenizer change
reaching exactly its downstream stages) is checked in tests/flows/test_pipeline.py,
which runs the DAG once anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from storage.store import open_store
from tasks.clean import clean
from tasks.download import download
from tasks.pipeline_config import load_pipeline_config
from tests.conftest import REPO_ROOT
from tests.tasks.test_clean import pile_record, prose, write_pile

DEMO = str(REPO_ROOT / "configs" / "demo.toml")


def parse_plan(text: str) -> dict[str, str]:
    """Stage → mark (= present, + first build, ~ rebuild) from `kiln plan`'s output."""
    return {line.split()[1]: line[0] for line in text.splitlines() if line[:2] in ("= ", "+ ", "~ ")}


def plan(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["--root", str(store), "plan", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _restore_kiln_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", os.environ.get("KILN_HOME", ""))  # `--root` sets it for the process


def test_plan_on_an_empty_store_builds_everything_without_importing_prefect(tmp_path: Path) -> None:
    code = ("import sys; from cli.main import main; rc = main(sys.argv[1:]); "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--root", str(tmp_path / "store"), "plan", DEMO],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    marks = parse_plan(proc.stdout)
    assert len(marks) == 14 and set(marks.values()) == {"+"}
    assert proc.stdout.count("no artifact of this stage yet") == 14
    assert proc.stdout.rstrip().endswith("14 of 14 stages would rebuild")
    assert not (tmp_path / "store").exists()  # a plan writes nothing


def test_plan_finds_a_built_stage_and_says_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    ref = download(load_pipeline_config(DEMO).download, open_store(store))  # the stage function, no Prefect

    out = plan(store, capsys, DEMO, "--until", "clean")
    assert parse_plan(out) == {"download": "=", "clean": "+"}
    assert f"download/{ref.key}" in out and out.rstrip().endswith("1 of 2 stages would rebuild")
    assert parse_plan(plan(store, capsys, DEMO, "--until", "clean", "-s", "download.attempts=9")) == {
        "download": "=", "clean": "+"}  # a runtime-only setting is not part of the key

    copy = shutil.copy(open_store(store).get("download", ref.key).path / "files" / "enwiki-sample.xml.bz2",
                       tmp_path / "copy.xml.bz2")
    moved = f'download.sources=[{{name="enwiki-sample.xml.bz2", url="{copy}"}}]'
    out = plan(store, capsys, DEMO, "--until", "download", "-s", moved)
    assert parse_plan(out) == {"download": "~"}
    assert f"differs from download/{ref.key}" in out
    assert '~ download.sources[0].url: "pkg://gensim/test/test_data/' in out and f'-> "{copy}"' in out
    assert "fingerprint" not in out  # same bytes, same fingerprint: only the url differs

    Path(copy).write_bytes(b"other bytes")  # the key follows the local file's content, as in a run
    out = plan(store, capsys, DEMO, "--until", "download", "-s", moved)
    assert "~ download.sources[0].fingerprint: " in out


@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_until_is_one_line_before_prefect_starts(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "KILN_HOME": str(tmp_path / "store"), "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "cli.main", command, DEMO, "--until", "tokenizr"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("kiln: error: unknown stage 'tokenizr'")
    assert "stages: all, download, clean, tokenizer, pretokenize" in proc.stderr
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "store").exists()  # no server, no flow run


def test_a_config_of_inputs_read_in_place_needs_no_download_sources(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """No ``[download]`` section: the download stage is an empty artifact, clean reads `clean.inputs`,
    and the clean key follows the input files (a changed file shows in the plan)."""
    (tmp_path / "pile").mkdir()
    pile = write_pile(tmp_path / "pile" / "00.jsonl.zst", [pile_record(prose(i)) for i in range(3)])
    config = tmp_path / "in_place.toml"
    config.write_text(f'[clean]\ninputs = ["{tmp_path / "pile" / "*.jsonl.zst"}"]\nnear_dedup = false\n')
    store = tmp_path / "store"
    assert parse_plan(plan(store, capsys, str(config), "--until", "clean")) == {"download": "+", "clean": "+"}

    cfg = load_pipeline_config(config)
    ref = clean(download(cfg.download, open_store(store)), cfg.clean, open_store(store))  # the stage functions
    assert open_store(store).manifest(ref)["counts"]["documents"] == 3
    assert parse_plan(plan(store, capsys, str(config), "--until", "clean")) == {"download": "=", "clean": "="}

    write_pile(pile, [pile_record(prose(i)) for i in range(4)])
    out = plan(store, capsys, str(config), "--until", "clean")
    assert parse_plan(out) == {"download": "=", "clean": "~"} and "~ clean.input_fingerprints: " in out


@pytest.mark.parametrize(("text", "says"), [
    ("[clean]\nmin_chars = 10\n", r"no pretraining data: add \[\[download\.sources\]\] \(name, url\) to fetch "
                                    r'files, or clean\.inputs = \["/path/\*\.jsonl\.zst"\] under \[clean\]'),
    ("[download]\nsources = []\n", "no pretraining data"),
    ('[clean]\ninputs = ["/x/*.jsonl"]\n[sft_download]\nsources = []\n',
     r"\[sft_download\] has no sources: add \[\[sft_download\.sources\]\] with name and url, or remove the section"),
])
def test_a_config_without_data_is_one_line_naming_it(text: str, says: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "nothing.toml"
    config.write_text(text)
    assert main(["--root", str(tmp_path / "store"), "plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kiln: error: {config}: ")
    assert re.search(says, err), err
