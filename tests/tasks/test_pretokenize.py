"""Pretokenize stage on real Wikipedia text: exact round trips, worker-independent bytes, resume, val split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import tasks.pretokenize as stage
from kiln.errors import KilnError
from model.tokenizer import Tokenizer
from storage.documents import doc_shards
from storage.store import ArtifactRef, open_store, sha256_file
from storage.token_shards import TokenShard, TokenShardWriter, list_shards
from tasks.pretokenize import META_FILE, PretokenizeConfig, choose_engine, combine_units, is_val, pretokenize
from tasks.tokenizer import TokenizerConfig, train_tokenizer
from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact

N_SHARDS = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactRef, ArtifactRef]:
    """Real docs (articles cut to 8k chars, two sources, 3 shards) and a 2000-piece tokenizer trained on them."""
    store = open_store(tmp_path_factory.mktemp("pretok-inputs"))
    docs = make_docs_artifact(store, load_enwiki_docs(max_chars=8000), n_shards=N_SHARDS, sources=("wiki", "news"))
    return docs, train_tokenizer(docs, TokenizerConfig(vocab_size=2000), store)


def file_hashes(ref: ArtifactRef) -> dict[str, str]:
    """sha256 of every file of an artifact but its top-level manifest.json (which holds timings).

    Hashed here rather than read from the store manifest, which leaves out every file named
    manifest.json, the token shards' own included.
    """
    return {
        str(p.relative_to(ref.path)): sha256_file(p)
        for p in sorted(ref.path.rglob("*"))
        if p.is_file() and p not in (ref.path / "manifest.json", ref.path / ".verified.json")
    }


def source_docs(docs: ArtifactRef) -> list[list[dict[str, Any]]]:
    """The input documents, per shard, in file order."""
    return [pq.read_table(p).to_pylist() for p in doc_shards(docs.path)]


def test_every_document_decodes_back_to_its_text(inputs, tmp_path: Path) -> None:
    docs, tok_ref = inputs
    store = open_store(tmp_path)
    ref = pretokenize(docs, tok_ref, PretokenizeConfig(engine="serial", val_fraction=0.2), store)
    tok = Tokenizer.load(tok_ref.path)
    n_tokens = 0
    for i, shard_docs in enumerate(source_docs(docs)):
        for split in ("train", "val"):
            shard = TokenShard.open(ref.path / split / f"{i:05d}")
            expected = [d for d in shard_docs if is_val(d["id"], 0.2) == (split == "val")]
            assert shard.tokens.dtype == np.dtype("<u2")
            assert shard.manifest["source_shard"] == f"part-0000-{i:05d}.parquet"
            assert len(shard.index) == len(expected) + 1 and shard.index[-1] == shard.manifest["n_tokens"]
            for j, doc in enumerate(expected):
                ids = shard.document(j)
                assert ids[-1] == tok.eos_id
                assert tok.decode(ids[:-1].tolist()) == doc["text"]
            n_tokens += int(shard.index[-1])
    counts = store.manifest(ref)["counts"]
    assert counts["documents"] == sum(len(d) for d in source_docs(docs)) and counts["shards"] == N_SHARDS
    assert counts["tokens_train"] + counts["tokens_val"] == n_tokens == sum(counts["tokens_per_source"].values())
    assert set(counts["tokens_per_source"]) == {"wiki", "news"}
    assert [p.name for p in list_shards(ref.path / "train")] == ["00000", "00001", "00002"]


def test_totals_stay_exact_past_2_32_tokens() -> None:
    """The stage's totals over thousands of shards are exact ints: past 2**32, where 32-bit sums wrap,
    and past 2**53, where a float sum (numpy mixing uint64 with int64) drops the odd tokens."""
    unit = {"documents": 7, "empty_documents": 1, "documents_train": 6, "documents_val": 1,
            "tokens_train": 2**43 + 1, "tokens_val": 2**31 + 3,
            "tokens_per_source": {"news": 2**32 + 5, "wiki": 2**43 + 2**31 - 2**32 - 1}}
    per_shard = [json.loads(json.dumps(unit)) for _ in range(3001)]  # as read back from the unit markers
    totals = combine_units(per_shard)
    assert totals["tokens_train"] == 3001 * (2**43 + 1) > 2**53 and totals["tokens_val"] == 3001 * (2**31 + 3)
    assert totals["tokens_per_source"] == {"news": 3001 * (2**32 + 5), "wiki": 3001 * (2**43 + 2**31 - 2**32 - 1)}
    assert sum(totals["tokens_per_source"].values()) == totals["tokens_train"] + totals["tokens_val"]
    assert totals["documents"] == 7 * 3001 and totals["shards"] == 3001
    assert all(type(v) is int for k, v in totals.items() if k != "tokens_per_source")
    assert json.loads(json.dumps(totals)) == totals  # the artifact manifest and pretokenize_meta.json keep them


def test_add_bos_starts_every_document(inputs, tmp_path: Path) -> None:
    docs, tok_ref = inputs
    ref = pretokenize(docs, tok_ref, PretokenizeConfig(engine="serial", add_bos=True), open_store(tmp_path))
    shard = TokenShard.open(ref.path / "train" / "00000")
    assert all(shard.document(j)[0] == 1 and shard.document(j)[-1] == 2 for j in range(len(shard)))
    assert shard.manifest["bos_id"] == 1


def test_token_dtype_follows_vocab_size(tmp_path: Path) -> None:
    for vocab, dtype in ((65535, "<u2"), (70000, "<u4")):
        writer = TokenShardWriter(tmp_path / str(vocab), vocab_size=vocab, eos_id=2)
        writer.add([vocab - 1, 5, 0])
        writer.close()
        shard = TokenShard.open(tmp_path / str(vocab))
        assert shard.tokens.dtype == np.dtype(dtype)
        assert shard.document(0).tolist() == [vocab - 1, 5, 0, 2]
    with pytest.raises(KilnError, match="out of range"):
        TokenShardWriter(tmp_path / "bad", vocab_size=100, eos_id=2).add([100])


def test_output_bytes_do_not_depend_on_workers_or_engine(inputs, tmp_path: Path) -> None:
    docs, tok_ref = inputs
    runs = {}
    for engine, workers in (("serial", 1), ("dask", 2), ("processes", 2)):
        store = open_store(tmp_path / engine)
        ref = pretokenize(docs, tok_ref, PretokenizeConfig(engine=engine, workers=workers), store)
        assert store.manifest(ref)["run"]["engine"] == engine
        runs[engine] = (ref.key, file_hashes(ref))
    assert runs["serial"] == runs["dask"] == runs["processes"]
    assert len(runs["serial"][1]) == 2 * N_SHARDS * 3 + 1  # 3 files per token shard + pretokenize_meta.json
    assert META_FILE in runs["serial"][1]


def test_killed_run_resumes_with_only_missing_shards(inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs, tok_ref = inputs
    cfg = PretokenizeConfig(engine="serial")
    reference = open_store(tmp_path / "ref")
    expected = file_hashes(pretokenize(docs, tok_ref, cfg, reference))

    real = stage.tokenize_shard
    computed: list[int] = []

    def crash_on_shard_1(job: stage.ShardJob) -> dict[str, Any]:
        computed.append(job.index)
        if job.index == 1:
            real(job)  # the shard is fully written but the process dies before it is marked done
            raise RuntimeError("killed")
        return real(job)

    monkeypatch.setattr(stage, "tokenize_shard", crash_on_shard_1)
    store = open_store(tmp_path / "crash")
    with pytest.raises(RuntimeError, match="killed"):
        pretokenize(docs, tok_ref, cfg, store)
    assert computed == [0, 1]
    computed.clear()
    monkeypatch.setattr(stage, "tokenize_shard", lambda job: computed.append(job.index) or real(job))
    ref = pretokenize(docs, tok_ref, cfg, store)
    assert computed == [1, 2]
    assert store.manifest(ref)["run"]["units_computed"] == 2
    assert file_hashes(ref) == expected


def test_val_split_is_stable_and_near_fraction(inputs, tmp_path: Path) -> None:
    ids = [f"enwiki-{i}" for i in range(20_000)]
    held_out = [i for i in ids if is_val(i, 0.01)]
    assert 0.008 < len(held_out) / len(ids) < 0.012
    assert held_out == [i for i in ids if is_val(i, 0.01)]  # same answer every call / process
    assert set(held_out) <= {i for i in ids if is_val(i, 0.05)}  # growing the fraction only adds documents
    assert not any(is_val(i, 0.0) for i in ids)
    docs, tok_ref = inputs
    store = open_store(tmp_path)
    counts = store.manifest(pretokenize(docs, tok_ref, PretokenizeConfig(engine="serial", val_fraction=0.3), store))[
        "counts"
    ]
    assert 0.15 < counts["documents_val"] / counts["documents"] < 0.45


def test_engine_choice_and_config_checks(tmp_path: Path) -> None:
    small = tmp_path / "small.parquet"
    small.write_bytes(b"x" * 1000)
    auto = PretokenizeConfig()
    assert choose_engine(auto, [small]) == "serial"
    assert choose_engine(auto, [small, small]) == "serial"  # tiny input: no process start-up
    assert choose_engine(dataclasses.replace(auto, serial_max_mb=1), [small] * 2) == "serial"
    big = tmp_path / "big.parquet"
    with open(big, "wb") as fh:
        fh.truncate(2 * 2**20)
    assert choose_engine(dataclasses.replace(auto, serial_max_mb=1), [big, big]) == "dask"
    assert choose_engine(dataclasses.replace(auto, serial_max_mb=1, workers=1), [big, big]) == "serial"
    assert choose_engine(PretokenizeConfig(engine="processes"), [small]) == "processes"
    with pytest.raises(KilnError, match="pretokenize.val_fraction"):
        PretokenizeConfig(val_fraction=1.0)
    with pytest.raises(KilnError, match="pretokenize.workers"):
        PretokenizeConfig(workers=0)


def test_prefect_wrappers_key_like_the_store(inputs, tmp_path: Path) -> None:
    """The tasks must look up the artifact key the stage functions build, from the same inputs."""
    from tasks.pretokenize import pretokenize_task
    from tasks.tokenizer import tokenizer_task

    docs, tok_ref = inputs
    cfg = PretokenizeConfig(engine="serial")
    ref = pretokenize_task.fn(docs, tok_ref, cfg, str(tmp_path))
    assert ref == pretokenize(docs, tok_ref, cfg, open_store(tmp_path))
    params = {"docs": docs, "tokenizer": tok_ref, "cfg": cfg, "store_root": str(tmp_path)}
    assert pretokenize_task.stage.find(params) == ref  # what the task finds before running (Cached)
    tok_cfg = TokenizerConfig(vocab_size=2000)
    tok_params = {"docs": docs, "cfg": tok_cfg, "store_root": str(tok_ref.path.parents[1])}
    assert tokenizer_task.stage.find(tok_params) == tok_ref
