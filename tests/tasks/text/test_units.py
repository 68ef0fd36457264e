"""Input labels: the part of a document id that names its file, unique among one run's inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kiln.errors import KilnError
from tasks.text.units import discover_inputs, input_labels


def test_a_lone_file_is_its_stem_and_equal_names_take_their_folders() -> None:
    assert input_labels(["/data/pile/00.jsonl.zst"]) == ["00"]
    assert input_labels(["/data/pile/a/00.jsonl.zst", "/data/pile/b/00.jsonl.zst", "/data/pile/b/01.jsonl.zst"]) == [
        "a/00", "b/00", "01"]
    # The folders right above differ only further up: as many folders as it takes, per file.
    assert input_labels(["/x/train/00.json", "/y/train/00.json", "/y/val/00.json"]) == [
        "x/train/00", "y/train/00", "val/00"]


def test_urls_and_the_download_artifact_name_no_scheme_and_no_more_of_the_path_than_needed() -> None:
    assert input_labels(["s3://bucket/wudao/part-1.json", "/store/download/k/files/part-1.json.gz"]) == [
        "wudao/part-1", "files/part-1"]


def test_paths_alike_part_for_part_fall_back_to_the_whole_path() -> None:
    paths = ["/d/a.jsonl", "/d/a.jsonl.gz", "s3://b/d/x.jsonl", "gs://b/d/x.jsonl", "/d/y.jsonl"]
    assert input_labels(paths) == [*paths[:4], "y"]


def test_labels_are_unique_over_a_tree_of_clashing_names() -> None:
    names = ["a", "b", "00"]
    paths = ["/" + "/".join(p) + ".jsonl.zst" for n in (1, 2, 3) for p in itertools.product(names, repeat=n)]
    labels = input_labels(paths)
    assert len(set(labels)) == len(paths) == 39
    assert labels[paths.index("/a/b/00.jsonl.zst")] == "a/b/00"
    assert labels[paths.index("/b/00.jsonl.zst")] == "/b/00.jsonl.zst"  # all of it ends /a/b/00.jsonl.zst


def test_discover_inputs_gives_each_file_its_label(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "part.json").write_text("[]")
    files = discover_inputs([], [str(tmp_path / "a"), str(tmp_path / "b")], "en")
    assert [(f.index, f.label, f.source) for f in files] == [(0, "a/part", "wudao"), (1, "b/part", "wudao")]
    with pytest.raises(KilnError, match="input listed twice"):
        discover_inputs([], [str(tmp_path / "a"), str(tmp_path / "a" / "part.json")], "en")


def test_wikimedia_dump_parts_pair_with_their_indexes(tmp_path: Path, enwiki_sample: Path) -> None:
    """enwiki ships in parts: ``…-multistream1.xml-p1p41242.bz2`` with ``…-multistream-index1.txt-p1p41242.bz2``."""
    import bz2

    from tasks.text.multistream import write_multistream
    from tasks.text.units import plan_units

    xml = bz2.decompress(enwiki_sample.read_bytes())
    names = []
    for part, pages in ((1, "p1p41242"), (2, "p41243p151573")):
        index = write_multistream(xml, tmp_path / "tmp.xml.bz2", pages_per_stream=50)
        dump = tmp_path / f"enwiki-20240601-pages-articles-multistream{part}.xml-{pages}.bz2"
        (tmp_path / "tmp.xml.bz2").rename(dump)
        index.rename(tmp_path / f"enwiki-20240601-pages-articles-multistream-index{part}.txt-{pages}.bz2")
        names.append(dump.name)
    inputs = discover_inputs(sorted(tmp_path.iterdir()), [], "en")
    assert [Path(f.path).name for f in inputs] == names
    assert all(f.fmt == "mediawiki" and f.language == "en" and "-index" in f.index_path for f in inputs)
    assert len(plan_units(inputs, streams_per_unit=2)) == 2 * 3  # 206 pages: 5 streams of 50 → 3 units per part
