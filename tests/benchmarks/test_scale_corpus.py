"""The scale corpus at a tiny size: Kiln reads every format, the truth's Jaccards hold, output is deterministic."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.scale_corpus import REPO, generate
from kiln.errors import KilnError
from tasks.text.dedup import MinHasher
from tasks.text.pipeline import UnitSettings, read_unit
from tasks.text.sources import iter_source
from tasks.text.units import discover_inputs, plan_units

GB = 0.003
SEED = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("scale") / "gen"
    return out, generate(out, GB, workers=2, seed=SEED)


def _data_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and p.parent != out)


def _read_all(out: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every document as Kiln's clean stage reads it, keyed (fmt, file, position) as the truth names them."""
    docs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in sorted((out / "wudao").iterdir()):
        for i, doc in enumerate(iter_source(path)):
            docs[("wudao", f"wudao/{path.name}", i)] = doc
    for path in sorted((out / "pile").iterdir()):
        for i, doc in enumerate(iter_source(path), 1):
            docs[("pile", f"pile/{path.name}", i)] = doc
    inputs = discover_inputs(sorted((out / "wiki").iterdir()), (), "en")
    assert inputs and all(f.index_path for f in inputs), "every dump must pair with its multistream index"
    for unit in plan_units(inputs, 1):
        assert unit.ranges, "the multistream dumps must split into bz2 streams"
        for doc in read_unit(unit, UnitSettings(), Counter()):
            docs[("wiki", f"wiki/{unit.input.name}", int(doc["meta"]["page_id"]))] = doc
    return docs


def _key(doc: dict[str, Any]) -> tuple[str, str, int]:
    pos = {"wudao": "index", "pile": "line", "wiki": "page_id"}[doc["fmt"]]
    return doc["fmt"], doc["file"], doc[pos]


def test_same_files_whatever_the_worker_count(corpus: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = corpus
    generate(tmp_path / "one", GB, workers=1, seed=SEED)
    names = [p.relative_to(out) for p in _data_files(out)]
    assert names == [p.relative_to(tmp_path / "one") for p in _data_files(tmp_path / "one")]
    for name in [*names, Path("truth.json")]:
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_kiln_reads_every_format_and_sizes_match(corpus: tuple[Path, dict[str, Any]]) -> None:
    out, summary = corpus
    docs = _read_all(out)
    fmts = Counter(k[0] for k in docs)
    assert set(fmts) == {"wudao", "pile", "wiki"}
    assert sum(fmts.values()) == summary["docs"]  # redirects and talk pages are left out by Kiln, as intended
    assert abs(summary["text_bytes"] / (GB * 1e9) - 1) < 0.05
    shares = [sum(len(d["text"].encode()) for k, d in docs.items() if k[0] == f) for f in ("wudao", "pile")]
    assert all(abs(s / (GB * 1e9 / 3) - 1) < 0.1 for s in shares), shares
    assert {d["source"] for d in docs.values()} >= {"wiki-en", "wiki-bg", "wudao", "pile"}
    ids = [d["id"] for d in docs.values()]
    assert len(ids) == len(set(ids)), "WuDao ids and wiki page ids must be unique"
    assert len({d["meta"]["pile_set_name"] for k, d in docs.items() if k[0] == "pile"}) >= 3


def test_truth_jaccards_are_what_the_files_hold(corpus: tuple[Path, dict[str, Any]]) -> None:
    out, _ = corpus
    docs = _read_all(out)
    truth = json.loads((out / "truth.json").read_text())
    hasher = MinHasher()

    def shingles(doc: dict[str, Any]) -> np.ndarray:
        return np.unique(hasher.shingle_hashes(docs[_key(doc)]["text"]))

    def jaccard(a: np.ndarray, b: np.ndarray) -> float:
        inter = len(np.intersect1d(a, b))
        return inter / (len(a) + len(b) - inter)

    kinds = Counter(g["kind"] for g in truth["groups"])
    assert set(kinds) == {"exact", "near", "control", "cluster", "chain"}, kinds
    cross = 0
    for group in truth["groups"]:
        orig = shingles(group["original"])
        for copy in group["copies"]:
            doc = copy["doc"]
            cross += doc["fmt"] != group["original"]["fmt"]
            if group["kind"] == "exact":
                assert docs[_key(doc)]["text"] == docs[_key(group["original"])]["text"]
                continue
            parent = orig if "parent" not in copy else shingles(group["copies"][copy["parent"]]["doc"])
            measured = jaccard(parent, shingles(doc))
            assert measured == pytest.approx(copy["jaccard"], abs=1e-4)
            assert measured == pytest.approx(copy["target"], abs=0.02)
            if "jaccard_to_original" in copy:
                assert jaccard(orig, shingles(doc)) == pytest.approx(copy["jaccard_to_original"], abs=1e-4)
    assert cross > 0, "some copies must sit in another format than their original"


def test_documents_that_are_not_planted_barely_overlap(corpus: tuple[Path, dict[str, Any]]) -> None:
    out, _ = corpus
    docs = _read_all(out)
    truth = json.loads((out / "truth.json").read_text())
    planted = {_key(g["original"]) for g in truth["groups"]}
    planted |= {_key(c["doc"]) for g in truth["groups"] for c in g["copies"]}
    free = [k for k in docs if k not in planted]
    sample = [free[i] for i in np.random.default_rng(0).choice(len(free), 60, replace=False)]
    hasher = MinHasher()
    sets = [set(hasher.shingle_hashes(docs[k]["text"]).tolist()) for k in sample]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2))
    assert worst < 0.3, worst


def test_refuses_a_folder_inside_the_repository() -> None:
    with pytest.raises(KilnError, match="inside the repository"):
        generate(REPO / "scale-out", GB, workers=1, seed=SEED)
