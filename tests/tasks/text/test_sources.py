"""Streaming readers: WuDao JSON arrays, The Pile .jsonl.zst, generic JSON lines, input expansion.

Files are written in the sources' exact schemas inside each test; bad inputs must raise a
`KilnError` naming the file and position, or with on_error="skip" be counted.
"""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import zstandard

from kiln.errors import KilnError
from tasks.text import sources
from tasks.text.sources import (
    detect_format,
    expand_inputs,
    iter_jsonl,
    iter_pile,
    iter_source,
    iter_wudao,
)

HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出"
    "就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
)


def wudao_records(n: int, seed: int = 0, max_chars: int = 1200) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"id": 1000 + i, "dataType": rng.choice(["百科", "新闻", "博客"]), "title": f"标题{i}",
         "content": "".join(rng.choices(HANZI, k=rng.randint(20, max_chars)))}
        for i in range(n)
    ]


def write_wudao(path: Path, records: list, indent: int | None = None) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=indent), encoding="utf-8")
    return path


def pile_lines(n: int) -> list[dict]:
    sets = ["Pile-CC", "Github", "ArXiv", "Wikipedia (en)"]
    return [{"text": f"document {i} of the pile\nsecond line", "meta": {"pile_set_name": sets[i % 4]}}
            for i in range(n)]


def write_zst(path: Path, lines: list[str]) -> bytes:
    # zstd's CLI writes content checksums; so do we, to see corruption caught like in real files.
    data = zstandard.ZstdCompressor(write_checksum=True).compress("".join(lines).encode("utf-8"))
    path.write_bytes(data)
    return data


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 KB reads: records span read boundaries, as they do in multi-GB files with 1 MB reads."""
    monkeypatch.setattr(sources, "READ_CHUNK_CHARS", 1024)


# ---------------------------------------------------------------- WuDao


def test_wudao_multi_mb_file_streams_across_chunk_boundaries(tmp_path: Path, small_chunks: None) -> None:
    records = wudao_records(2500)
    records[7]["content"] = "长" * 50_000  # one record 50x the read size: the buffer must grow
    path = write_wudao(tmp_path / "part-001.json", records)
    assert path.stat().st_size > 3_000_000
    docs = list(iter_wudao(path))
    assert [d["text"] for d in docs] == [r["content"] for r in records]
    assert docs[3] == {
        "id": "wudao/part-001/1003", "source": "wudao", "title": "标题3", "text": records[3]["content"], "url": "",
        "meta": {"dataType": records[3]["dataType"], "file": "part-001.json"},
    }


def test_wudao_memory_stays_at_one_chunk_plus_one_record(tmp_path: Path, small_chunks: None) -> None:
    path = write_wudao(tmp_path / "big.json", wudao_records(2500, max_chars=1000))
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_wudao(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 2500
    # Loading the file would hold ~3 MB of bytes plus ~4 MB of str; streaming holds a few KB.
    assert peak < 300_000, peak


def test_wudao_reads_json_lines_pretty_arrays_bom_and_empty_files(tmp_path: Path, small_chunks: None) -> None:
    records = wudao_records(30)
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    pretty = write_wudao(tmp_path / "pretty.json", records, indent=2)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False).encode("utf-8"))
    for path in (lines, pretty, bom):
        assert [d["id"] for d in iter_wudao(path)] == [f"wudao/{path.stem}/{r['id']}" for r in records], path.name
    assert list(iter_wudao(write_wudao(tmp_path / "empty.json", []))) == []
    (tmp_path / "blank.json").write_text("  \n")
    assert list(iter_wudao(tmp_path / "blank.json")) == []


def test_wudao_malformed_separator_names_file_byte_and_record(tmp_path: Path, small_chunks: None) -> None:
    records = wudao_records(40)
    text = json.dumps(records, ensure_ascii=False)
    cut = text.index(', {"id": 1031')  # the separator before record 31, well past the first reads
    path = tmp_path / "bad.json"
    path.write_text(text[:cut] + ";" + text[cut + 1 :], encoding="utf-8")
    byte = len(text[:cut].encode("utf-8"))
    with pytest.raises(KilnError, match=rf"bad\.json: malformed JSON at byte {byte} \(record 31\).*on_error='skip'"):
        list(iter_wudao(path))


def test_wudao_malformed_record_and_skip_mode(tmp_path: Path, small_chunks: None) -> None:
    records = wudao_records(40)
    text = json.dumps(records, ensure_ascii=False)
    start = text.index('{"id": 1020')
    path = tmp_path / "broken.json"
    path.write_text(text[:start] + text[start:].replace('"title":', '"title"', 1), encoding="utf-8")
    with pytest.raises(KilnError, match=r"broken\.json: malformed JSON at byte \d+ \(record 20\)"):
        list(iter_wudao(path))
    stats: Counter[str] = Counter()
    docs = list(iter_wudao(path, on_error="skip", stats=stats))
    # Only the damaged record is lost: parsing resumes at the next one.
    assert [d["id"] for d in docs] == [f"wudao/broken/{r['id']}" for r in records if r["id"] != 1020]
    assert stats == Counter({"skipped_bad_json": 1})


def _damage(record: dict, how: str) -> str:
    """One WuDao record as JSON text, broken in a way real files get broken."""
    text = json.dumps(record, ensure_ascii=False)
    if how == "lost quote":  # a string loses its closing quote: the parse fails past the next record's start
        return text.replace('", "content"', ', "content"', 1)
    if how == "bad escape":
        return text.replace('"content": "', '"content": "\\q', 1)
    if how == "control char":  # a raw newline inside a string is not JSON
        return text.replace('"content": "', '"content": "line\nbreak', 1)
    if how == "cut short":  # a record cut off in the middle, the next one following
        return text[: len(text) // 2]
    if how == "nested braces":  # the damaged record's text holds '{...}, {...}' like a record boundary
        return text.replace('"content": "', '"content": "x}, {\\"a\\": 1}, {"id": 5, ', 1)
    assert how == "missing comma"
    return text.replace(', "title"', ' "title"', 1)


DAMAGE = ["lost quote", "bad escape", "control char", "cut short", "nested braces", "missing comma"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("k", [0, 17, 39])  # first, middle (past several 1 KB reads) and last record
def test_wudao_skip_loses_only_the_malformed_record(tmp_path: Path, small_chunks: None, how: str, k: int) -> None:
    records = wudao_records(40)
    parts = [json.dumps(r, ensure_ascii=False) for r in records]
    parts[k] = _damage(records[k], how)
    path = tmp_path / "damaged.json"
    path.write_text("[" + ", ".join(parts) + "]", encoding="utf-8")
    if how == "cut short" and k == 39:  # the last record cut short is a truncated file, never skipped
        with pytest.raises(KilnError, match=r"damaged\.json: truncated JSON .*re-download"):
            list(iter_wudao(path, on_error="skip"))
        return
    with pytest.raises(KilnError, match=r"damaged\.json: malformed JSON at byte \d+ \(record \d+\).*on_error='skip'"):
        list(iter_wudao(path))
    stats: Counter[str] = Counter()
    docs = list(iter_wudao(path, on_error="skip", stats=stats))
    assert [d["id"] for d in docs] == [f"wudao/damaged/{r['id']}" for i, r in enumerate(records) if i != k]
    assert [d["text"] for d in docs] == [r["content"] for i, r in enumerate(records) if i != k]
    assert stats == Counter({"skipped_bad_json": 1})


def test_wudao_skip_in_json_lines_and_after_a_bad_separator(tmp_path: Path, small_chunks: None) -> None:
    records = wudao_records(30)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines[4] = _damage(records[4], "lost quote")
    lines[20] = _damage(records[20], "bad escape")
    path = tmp_path / "lines.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats: Counter[str] = Counter()
    docs = list(iter_wudao(path, on_error="skip", stats=stats))
    assert [d["id"] for d in docs] == [f"wudao/lines/{r['id']}" for i, r in enumerate(records) if i not in (4, 20)]
    assert stats == Counter({"skipped_bad_json": 2})
    text = json.dumps(records, ensure_ascii=False)
    cut = text.index(', {"id": 1011')
    (tmp_path / "sep.json").write_text(text[:cut] + " ;" + text[cut + 1 :], encoding="utf-8")
    stats = Counter()
    docs = list(iter_wudao(tmp_path / "sep.json", on_error="skip", stats=stats))
    assert [d["id"] for d in docs] == [f"wudao/sep/{r['id']}" for r in records]  # the stray ';' is all that is lost
    assert stats == Counter({"skipped_bad_json": 1})


def test_wudao_record_without_content(tmp_path: Path) -> None:
    records = wudao_records(5)
    del records[2]["content"]
    path = write_wudao(tmp_path / "nocontent.json", records)
    with pytest.raises(KilnError, match=r"nocontent\.json: record 2 has no string 'content'.*on_error='skip'"):
        list(iter_wudao(path))
    stats: Counter[str] = Counter()
    assert len(list(iter_wudao(path, on_error="skip", stats=stats))) == 4
    assert stats == Counter({"skipped_bad_record": 1})


@pytest.mark.parametrize("tail", ["", ",", ', {"id": 9, "dataType": "百科", "con'])
def test_wudao_unclosed_array_is_truncated_even_in_skip_mode(tmp_path: Path, small_chunks: None, tail: str) -> None:
    text = json.dumps(wudao_records(10), ensure_ascii=False)[:-1] + tail  # drop the closing "]"
    path = tmp_path / "cut.json"
    path.write_text(text, encoding="utf-8")
    for on_error in ("raise", "skip"):
        with pytest.raises(KilnError, match=r"cut\.json: truncated JSON at byte \d+ \(record 10\).*re-download"):
            list(iter_wudao(path, on_error=on_error))  # type: ignore[arg-type]


def test_wudao_data_after_array_and_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(wudao_records(2)) + " []", encoding="utf-8")
    with pytest.raises(KilnError, match=r"extra\.json: .*data after the end of the JSON array"):
        list(iter_wudao(path))
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'[{"id": 1, "content": "caf\xe9"}]')
    with pytest.raises(KilnError, match=r"latin1\.json: not UTF-8 text"):
        list(iter_wudao(bad))


@pytest.mark.parametrize("suffix", [".json.gz", ".json.zst"])
def test_wudao_compressed_and_cut_short(tmp_path: Path, suffix: str) -> None:
    data = json.dumps(wudao_records(400), ensure_ascii=False).encode("utf-8")
    packed = gzip.compress(data) if suffix == ".json.gz" else zstandard.ZstdCompressor().compress(data)
    path = tmp_path / f"part{suffix}"
    path.write_bytes(packed)
    assert len(list(iter_wudao(path))) == 400
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(KilnError, match=rf"part\{suffix}: .*(truncated|corrupt).*re-download"):
        list(iter_wudao(path, on_error="skip"))


def test_wudao_through_fsspec_url() -> None:
    url = f"memory://kiln-test-{uuid.uuid4().hex}/wudao/part.json"
    with fsspec.open(url, "w", encoding="utf-8") as f:
        json.dump(wudao_records(3), f, ensure_ascii=False)
    assert [d["id"] for d in iter_wudao(url)] == ["wudao/part/1000", "wudao/part/1001", "wudao/part/1002"]


# ---------------------------------------------------------------- The Pile and JSON lines


def test_pile_zst_stream_with_set_filter(tmp_path: Path) -> None:
    lines = pile_lines(200)
    write_zst(tmp_path / "07.jsonl.zst", [json.dumps(r) + "\n" for r in lines])
    docs = list(iter_pile(tmp_path / "07.jsonl.zst"))
    assert [d["text"] for d in docs] == [r["text"] for r in lines]
    assert docs[5] == {"id": "pile/07/6", "source": "pile", "title": "", "text": lines[5]["text"], "url": "",
                       "meta": {"pile_set_name": "Github", "file": "07.jsonl.zst"}}
    stats: Counter[str] = Counter()
    kept = list(iter_pile(tmp_path / "07.jsonl.zst", sets={"ArXiv", "Github"}, stats=stats))
    assert len(kept) == 100 and {d["meta"]["pile_set_name"] for d in kept} == {"ArXiv", "Github"}
    assert stats == Counter({"filtered_pile_set": 100})


def test_pile_plain_jsonl_and_multi_frame_zst(tmp_path: Path) -> None:
    lines = [json.dumps(r) + "\n" for r in pile_lines(10)]
    (tmp_path / "val.jsonl").write_text("".join(lines) + "\n\n")  # trailing blank lines are not records
    assert len(list(iter_pile(tmp_path / "val.jsonl"))) == 10
    cctx = zstandard.ZstdCompressor()
    frames = cctx.compress("".join(lines[:4]).encode()) + cctx.compress("".join(lines[4:]).encode())
    (tmp_path / "cat.jsonl.zst").write_bytes(frames)  # `cat a.zst b.zst` is a valid zstd file
    assert len(list(iter_pile(tmp_path / "cat.jsonl.zst"))) == 10


def test_pile_truncated_zst_raises_with_line(tmp_path: Path) -> None:
    rng = random.Random(1)
    lines = [json.dumps({"text": " ".join(rng.choices(["alpha", "beta", "gamma", "delta"], k=300)),
                         "meta": {"pile_set_name": "Pile-CC"}}) + "\n" for _ in range(2000)]
    data = write_zst(tmp_path / "00.jsonl.zst", lines)
    (tmp_path / "00.jsonl.zst").write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(KilnError, match=r"00\.jsonl\.zst: line (\d+): .*truncated.*re-download") as info:
        for doc in iter_pile(tmp_path / "00.jsonl.zst", on_error="skip"):
            seen.append(doc)
    line = int(str(info.value).split("line ")[1].split(":")[0])
    assert 0 < len(seen) < 2000 and line == len(seen) + 1  # everything before the cut was read


def test_pile_corrupt_zst_raises(tmp_path: Path) -> None:
    data = bytearray(write_zst(tmp_path / "01.jsonl.zst", [json.dumps(r) + "\n" for r in pile_lines(3000)]))
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0x5A
    (tmp_path / "01.jsonl.zst").write_bytes(bytes(data))
    with pytest.raises(KilnError, match=r"01\.jsonl\.zst: line \d+: corrupt zstd data.*re-download"):
        list(iter_pile(tmp_path / "01.jsonl.zst"))


def test_pile_bad_lines_raise_or_are_counted(tmp_path: Path) -> None:
    lines = [json.dumps(r) + "\n" for r in pile_lines(6)]
    lines[2] = '{"text": "unfinished\n'
    lines[4] = json.dumps({"meta": {"pile_set_name": "Github"}}) + "\n"
    write_zst(tmp_path / "02.jsonl.zst", lines)
    with pytest.raises(KilnError, match=r"02\.jsonl\.zst:3: malformed JSON line.*on_error='skip'"):
        list(iter_pile(tmp_path / "02.jsonl.zst"))
    (tmp_path / "03.jsonl").write_text(lines[0] + lines[4])
    with pytest.raises(KilnError, match=r"03\.jsonl:2: record has no string 'text'"):
        list(iter_pile(tmp_path / "03.jsonl"))
    stats: Counter[str] = Counter()
    docs = list(iter_pile(tmp_path / "02.jsonl.zst", on_error="skip", stats=stats))
    assert [d["id"] for d in docs] == ["pile/02/1", "pile/02/2", "pile/02/4", "pile/02/6"]
    assert stats == Counter({"skipped_bad_json": 1, "skipped_bad_record": 1})


def test_jsonl_generic_gz_with_custom_keys(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"uid": "a1", "body": "hello", "lang": "en"}) + "\n")
        f.write(json.dumps({"body": "second"}) + "\n")
    docs = list(iter_jsonl(path, text_key="body", id_key="uid"))
    assert docs == [
        {"id": "notes/notes/a1", "source": "notes", "title": "", "text": "hello", "url": "",
         "meta": {"lang": "en", "file": "notes.jsonl.gz"}},
        {"id": "notes/notes/2", "source": "notes", "title": "", "text": "second", "url": "",
         "meta": {"file": "notes.jsonl.gz"}},
    ]
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(KilnError, match=r"notes\.jsonl\.gz: line \d+: corrupt or truncated gzip.*re-download"):
        list(iter_jsonl(path, text_key="body"))


def test_a_record_id_with_a_slash_cannot_pose_as_another_files_id(tmp_path: Path) -> None:
    """Label ``a`` with record id ``b/1`` and label ``a/b`` with line 1 would both be ``x/a/b/1``."""
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": "b/1", "text": "t"}) + "\n" + json.dumps({"id": "50%", "text": "u"}) + "\n"
                    + json.dumps({"text": "v"}) + "\n")
    assert [d["id"] for d in iter_jsonl(path, source="x", label="a")] == ["x/a/b%2F1", "x/a/50%25", "x/a/3"]
    assert [d["id"] for d in iter_jsonl(path, source="x", label="a/b", id_key=None)] == ["x/a/b/1", "x/a/b/2",
                                                                                       "x/a/b/3"]


# ---------------------------------------------------------------- formats and inputs


@pytest.mark.parametrize(("name", "fmt"), [
    ("part-001.json", "wudao"), ("00.jsonl.zst", "pile"), ("user.jsonl", "jsonl"), ("user.jsonl.gz", "jsonl"),
    ("enwiki-pages-articles.xml.bz2", "mediawiki"), ("dump.xml", "mediawiki"),
    ("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", "mediawiki"),
    ("s3://bucket/dir/Part.JSON", "wudao"),
])
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


def test_unknown_suffix_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=r"notes\.txt: unknown input format"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(KilnError, match=r"notes\.parquet: unknown input format"):
        iter_source(tmp_path / "notes.parquet")
    with pytest.raises(KilnError, match=r"dump\.xml\.bz2: .*clean stage"):
        iter_source("dump.xml.bz2")


def test_iter_source_dispatches_by_suffix(tmp_path: Path) -> None:
    write_wudao(tmp_path / "a.json", wudao_records(2))
    write_zst(tmp_path / "b.jsonl.zst", [json.dumps(r) + "\n" for r in pile_lines(3)])
    assert [d["source"] for d in iter_source(tmp_path / "a.json")] == ["wudao"] * 2
    assert [d["source"] for d in iter_source(tmp_path / "b.jsonl.zst", sets=["Github"])] == ["pile"]


def test_expand_inputs_directory_glob_file_and_nothing(tmp_path: Path) -> None:
    for rel in ("b/2.json", "a/1.json", "a/0.jsonl.zst", "a/.tmp-1.json", "_SUCCESS", "c.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("[]")
    assert expand_inputs(tmp_path) == [str(tmp_path / p) for p in ("a/0.jsonl.zst", "a/1.json", "b/2.json", "c.json")]
    assert expand_inputs(f"{tmp_path}/*/*.json") == [str(tmp_path / "a/1.json"), str(tmp_path / "b/2.json")]
    assert expand_inputs(tmp_path / "c.json") == [str(tmp_path / "c.json")]
    with pytest.raises(KilnError, match=r"nothing-\*\.json: no input files match"):
        expand_inputs(f"{tmp_path}/nothing-*.json")
    with pytest.raises(KilnError, match=r"missing\.json: no input files match"):
        expand_inputs(tmp_path / "missing.json")


def test_expand_inputs_object_storage_url() -> None:
    root = f"memory://kiln-test-{uuid.uuid4().hex}"
    for name in ("x/2.json", "x/1.json", "y/3.jsonl"):
        with fsspec.open(f"{root}/{name}", "w") as f:
            f.write("[]")
    files = expand_inputs(f"{root}/x/*.json")
    assert [f.rsplit("/", 1)[1] for f in files] == ["1.json", "2.json"]
    assert all(f.startswith("memory://") for f in files)
    assert list(iter_wudao(files[0])) == []
