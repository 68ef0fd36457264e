"""Chat data stages: every record format converts, the artifact is cached, bad records name their position.

The session fixture `chat_tokenizer_dir` (tests/conftest.py) is, a real tokenizer artifact (SentencePiece BPE with
the chat tokens) trained by the tokenizer stage on gensim's enwiki sample; the
model and trainer tests import the fixture from here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kiln.chat import RecordError, detect_format, render_chat, to_messages, to_preference
from kiln.errors import KilnError
from storage.store import ArtifactRef, ArtifactStore
from tasks.download import DownloadConfig, SourceSpec, download
from tasks.sft_data import DPODataConfig, SFTDataConfig, prepare_dpo, prepare_sft
from trainer.sft_data import read_split

REPO = Path(__file__).resolve().parents[2]
DEMO_SFT, DEMO_DPO = REPO / "configs/data/demo_sft.jsonl", REPO / "configs/data/demo_dpo.jsonl"


def raw_artifact(store: ArtifactStore, *paths: Path) -> ArtifactRef:
    """A real download artifact holding `paths`."""
    return download(DownloadConfig(sources=[SourceSpec(name=p.name, url=str(p)) for p in paths]), store)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- converters
def test_every_format_converts_to_messages():
    alpaca = {"instruction": "Add.", "input": "2 and 3", "output": "5"}
    assert to_messages(alpaca) == [{"role": "user", "content": "Add.\n\n2 and 3"},
                                   {"role": "assistant", "content": "5"}]
    assert to_messages({"instruction": "Hi", "input": "", "output": "Hello"}, "belle")[0]["content"] == "Hi"
    firefly = {"kind": "Translation", "input": "cat in French?", "target": "chat"}
    assert detect_format(firefly) == "firefly"
    assert to_messages(firefly)[1] == {"role": "assistant", "content": "chat"}
    share = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}]}
    assert [m["role"] for m in to_messages(share)] == ["system", "user", "assistant"]  # trailing user dropped
    assert to_messages({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                       system_prompt="S")[0] == {"role": "system", "content": "S"}


def test_chatml_rendering():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"}]
    assert render_chat(messages) == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
                                     "<|im_start|>assistant\nA<|im_end|>\n")
    assert render_chat(messages[:2], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("record, reason", [
    ({"instruction": "x", "input": "", "output": ""}, "no non-empty assistant reply"),
    ({"instruction": "x", "output": 3}, "'output' must be a string"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "'from' must be one of"),
    ({"text": "plain"}, "unknown record format"),
    ({"messages": [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "b"}]},
     "chat-template token"),
])
def test_bad_records_say_why(record, reason):
    with pytest.raises(RecordError, match=reason):
        to_messages(record)


def test_preference_records():
    prompt, chosen, rejected = to_preference({"prompt": "Q?", "chosen": "good", "rejected": "bad"}, "S")
    assert prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    assert (chosen, rejected) == ("good", "bad")
    listed = {"prompt": [{"role": "user", "content": "Q?"}],
              "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}]}
    assert to_preference(listed)[1:] == ("yes", "no")
    with pytest.raises(RecordError, match="missing field 'rejected'"):
        to_preference({"prompt": "Q", "chosen": "a"})


# ---------------------------------------------------------------- stages
def test_prepare_sft_writes_a_cached_chat_artifact(tmp_path, store):
    firefly = tmp_path / "firefly.json"
    firefly.write_text(json.dumps([{"kind": "QA", "input": f"question {i}", "target": f"answer {i}"}
                                   for i in range(40)]))
    belle = tmp_path / "belle.json.gz"  # BELLE ships JSON lines under a .json name
    with gzip.open(belle, "wt") as fh:
        fh.write("\n".join(json.dumps({"instruction": f"say {i}", "input": "", "output": str(i)}) for i in range(5)))
    raw = raw_artifact(store, DEMO_SFT, firefly, belle)
    cfg = SFTDataConfig(val_fraction=0.2)
    ref = prepare_sft(raw, cfg, store)
    counts = store.manifest(ref)["counts"]
    assert counts["records"] == 30 + 40 + 5 and counts["train"] + counts["val"] == 75
    assert counts["format_sharegpt"] == 4 and counts["format_firefly"] == 40 and counts["format_alpaca"] == 31
    assert 0 < counts["val"] < 30
    table = pq.read_table(sorted((ref.path / "train").glob("*.parquet"))[0])
    assert table.column_names == ["id", "source", "format", "messages", "n_turns"]
    train = read_split(ref.path, "train")
    rows = train + read_split(ref.path, "val")
    multi = next(r for r in rows if r["format"] == "sharegpt" and r["messages"][0]["role"] == "system")
    assert multi["n_turns"] == 2 and multi["messages"][-1] == {"role": "assistant", "content": "7 times 2 is 14."}
    assert {r["source"] for r in train} == {"demo_sft", "firefly", "belle"}
    assert prepare_sft(raw, cfg, store) == ref  # cached: same key, nothing rebuilt
    assert store.manifest(ref)["build_id"] == store.manifest(prepare_sft(raw, cfg, store))["build_id"]


def test_malformed_records_name_file_and_position(tmp_path, store):
    lines = write_jsonl(tmp_path / "chat.jsonl", [
        {"instruction": "a", "input": "", "output": "b"},
        "",
        {"instruction": "c", "input": "", "output": ""},
        "{not json",
    ])
    raw = raw_artifact(store, lines)
    with pytest.raises(KilnError, match=r"chat\.jsonl: line 3: no non-empty assistant reply"):
        prepare_sft(raw, SFTDataConfig(), store)
    array = tmp_path / "arr.json"
    array.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}]))
    with pytest.raises(KilnError, match=r"arr\.json: record 2: field 'output' must be a string"):
        prepare_sft(raw_artifact(store, array), SFTDataConfig(), store)
    skipped = prepare_sft(raw, SFTDataConfig(on_error="skip", val_fraction=0.0), store)
    manifest = store.manifest(skipped)
    assert manifest["counts"]["skipped_malformed"] == 2 and manifest["counts"]["train"] == 1
    assert any("line 4: invalid JSON" in e for e in manifest["skipped_examples"])


def test_prepare_dpo(store):
    ref = prepare_dpo(raw_artifact(store, DEMO_DPO), DPODataConfig(val_fraction=0.0, system_prompt="Be right."), store)
    rows = read_split(ref.path, "train")
    assert len(rows) == 20
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be right."},
                                 {"role": "user", "content": "What is the capital of Italy?"}]
    assert rows[0]["chosen"] == "The capital of Italy is Rome."


def test_demo_files_are_valid():
    for line in DEMO_SFT.read_text().splitlines():
        to_messages(json.loads(line))
    for line in DEMO_DPO.read_text().splitlines():
        to_preference(json.loads(line))
