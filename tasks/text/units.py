"""The clean stage's inputs and their split into independent units of work.

An input is one file: from the download artifact's ``files/`` or from `CleanConfig.inputs`
(any fsspec path, URL or glob, expanded by `sources.expand_inputs`). Its format comes from
its suffix (`sources.detect_format`). A local multistream MediaWiki dump (``X.xml.bz2`` with
``X-index.txt.bz2`` beside it, the Wikimedia layout) splits into groups of its 100-page bz2
streams, one unit per group; any other file is one unit, because single-stream bz2, zstd and
gzip can only be read from their start.

Units are listed in input order, then byte order. That order (not the order units finish
in) is what dedup and the final shards follow, so the output depends neither on the
grouping nor on the number of workers.
"""

from __future__ import annotations

import bz2
import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec.core

from kiln.errors import KilnError
from tasks.text.mediawiki import stream_ranges
from tasks.text.sources import check_compression, detect_format, expand_inputs

INDEX_SUFFIXES = ("-index.txt.bz2", "-index.txt")
# Wikimedia splits big dumps in parts, each with its own index:
#   enwiki-20240601-pages-articles-multistream1.xml-p1p41242.bz2
#   enwiki-20240601-pages-articles-multistream-index1.txt-p1p41242.bz2
_SPLIT_INDEX = re.compile(r"^(?P<head>.*-multistream)-index(?P<part>\d*)\.txt(?P<pages>-p\d+p\d+)?\.bz2$")
# Wikimedia names dumps after the wiki's database name: "zhwiki-20240601-...", "zh_yuewiki-latest-...".
_WIKI_NAME = re.compile(r"^([a-z][a-z0-9_]*?)wiki-")


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it."""

    index: int
    """Position in input order; final shards are named ``part-<index>-<k>``."""
    path: str
    """Local path or fsspec URL."""
    fmt: str
    """``mediawiki``, ``wudao``, ``pile`` or ``jsonl``."""
    source: str
    """The documents' ``source`` field: ``wiki-<lang>``, ``wudao``, ``pile`` or a JSON-lines file's stem."""
    label: str
    """Names the file in its documents' ids (``<source>/<label>/<key>``), unique among the run's inputs
    (`input_labels`)."""
    language: str
    """Wiki language code (from the dump name, else the configured one); empty for other formats."""
    size: int
    """Bytes on disk (compressed): decides serial vs. Dask for small inputs."""
    index_path: str = ""
    """Multistream index beside a dump, if any."""

    @property
    def name(self) -> str:
        return basename(self.path)


@dataclass(frozen=True)
class Unit:
    """A piece of phase 1: a whole input file, or some bz2 streams of a multistream dump."""

    name: str
    input: InputFile
    ranges: tuple[tuple[int, int], ...] = ()
    """Byte ranges ``[start, end)`` of the dump's bz2 streams; empty means the whole file."""


def discover_inputs(local: Sequence[Path], patterns: Sequence[str], language: str) -> list[InputFile]:
    """Every input file, in order: `local` (sorted) first, then each pattern's matches (sorted)."""
    paths = [str(p) for p in sorted(local)] + [p for pattern in patterns for p in expand_inputs(pattern)]
    twice = sorted(p for p, n in Counter(paths).items() if n > 1)
    if twice:
        raise KilnError(f"{twice[0]}: input listed twice (in the download artifact and clean.inputs?)")
    indexes = {_dump_of_index(p): p for p in paths if is_index(p)}
    dumps = [p for p in paths if not is_index(p)]
    known = set(dumps)
    for dump, index in indexes.items():
        if dump not in known:
            raise KilnError(f"{index}: multistream index without its dump {basename(dump)} beside it")
    for path in paths:  # a mislabeled file is named now, not later as malformed XML or corrupt data
        check_compression(path)
    files = []
    for i, (path, label) in enumerate(zip(dumps, input_labels(dumps), strict=True)):
        fmt = detect_format(path)
        lang = wiki_language(path, language) if fmt == "mediawiki" else ""
        source = source_name(path, fmt, lang)
        files.append(InputFile(i, path, fmt, source, label, lang, _size(path), indexes.get(path, "")))
    return files


def input_labels(paths: Sequence[str]) -> list[str]:
    """Per path, the file's stem behind as few of its folders as tell it from every other path.

    ``/data/pile/00.jsonl.zst`` alone is ``00``; beside ``/data/more/00.jsonl.zst`` the two are
    ``pile/00`` and ``more/00``. Labels are trailing path parts, not whole paths, so ids do not
    change with where the store or the corpus is mounted. A path no trailing parts tell apart
    (alike part for part but for the suffix or URL scheme: ``a.jsonl`` and ``a.jsonl.gz``; or the
    whole of it ends another path) falls back to the whole path, unique because `discover_inputs`
    refuses a path listed twice.
    """
    parts = [tuple(_path_parts(p)) for p in paths]
    labels: list[str | None] = [None] * len(paths)
    for k in range(1, max(map(len, parts), default=0) + 1):
        seen = Counter(p[-k:] for p in parts)
        for i, mine in enumerate(parts):
            if labels[i] is None and k <= len(mine) and seen[mine[-k:]] == 1:
                labels[i] = "/".join(mine[-k:])
        if all(labels):
            break
    # A whole path starts with "/" or holds "://": no label made of trailing parts looks like it.
    return [label or path for label, path in zip(labels, paths, strict=True)]


def _path_parts(path: str) -> list[str]:
    """The folders and the file's stem of a path or URL (scheme, query and empty parts dropped)."""
    rest = path.split("://", 1)[-1].split("?", 1)[0]
    parts = [p for p in rest.split("/") if p]
    return [*parts[:-1], stem(parts[-1])] if parts else []


def plan_units(inputs: Sequence[InputFile], streams_per_unit: int) -> list[Unit]:
    """Units in input order; local multistream dumps split every `streams_per_unit` bz2 streams."""
    units: list[Unit] = []
    for f in inputs:
        ranges: list[tuple[int, int]] = []
        if f.index_path and is_local(f.path) and is_local(f.index_path):
            offsets = ((o, 0, "") for o in stream_offsets(local_path(f.index_path)))
            ranges = stream_ranges(offsets, f.size)
        if not ranges:  # not splittable (or an empty index): the whole file is one unit
            units.append(Unit(f"{f.index:04d}-00000", f))
        for k, lo in enumerate(range(0, len(ranges), streams_per_unit)):
            units.append(Unit(f"{f.index:04d}-{k:05d}", f, tuple(ranges[lo : lo + streams_per_unit])))
    return units


def stream_offsets(index_path: str) -> list[int]:
    """Distinct stream offsets of a multistream index, in order, without keeping its titles.

    `mediawiki.read_multistream_index` keeps every ``(offset, id, title)``: ~3 GB of Python
    objects for enwiki's 23 M lines. Units need only the ~230 k stream starts.
    """
    opener: Any = bz2.open if index_path.endswith(".bz2") else open
    offsets: list[int] = []
    lineno = 0
    try:
        with opener(index_path, "rt", encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, 1):
                head = line.split(":", 1)[0]
                if not line.strip():
                    continue
                if not head.isdigit() or line.count(":") < 2:
                    raise KilnError(f"{index_path}:{lineno}: expected 'offset:page_id:title', got {line[:80]!r}")
                offset = int(head)
                if not offsets or offset != offsets[-1]:
                    offsets.append(offset)
    except (EOFError, OSError) as err:
        msg = f"index is truncated or corrupt after line {lineno} ({err}); re-download it"
        raise KilnError(f"{index_path}: {msg}") from err
    if offsets != sorted(offsets):
        raise KilnError(f"{index_path}: offsets are not increasing; is this a multistream index?")
    return offsets


def unit_to_dict(unit: Unit) -> dict[str, Any]:
    """JSON form, stored in the build so a resumed run reuses the same split."""
    return {"name": unit.name, "input": dataclasses.asdict(unit.input), "ranges": [list(r) for r in unit.ranges]}


def unit_from_dict(data: dict[str, Any]) -> Unit:
    ranges = tuple((int(a), int(b)) for a, b in data["ranges"])
    return Unit(data["name"], InputFile(**data["input"]), ranges)


def wiki_language(path: str, default: str) -> str:
    """Language of a dump from its Wikimedia name (``zh_yuewiki-…`` → ``zh-yue``), else `default`."""
    m = _WIKI_NAME.match(basename(path))
    return m.group(1).replace("_", "-") if m else default


def source_name(path: str, fmt: str, language: str) -> str:
    """The ``source`` field documents of this file get (the report groups by it)."""
    if fmt == "mediawiki":
        return f"wiki-{language}"
    if fmt in ("wudao", "pile"):
        return fmt
    return stem(basename(path))


def stem(name: str) -> str:
    """File name without data and compression suffixes (as `sources.iter_jsonl` names its source)."""
    for suffix in (".zst", ".gz", ".bz2"):
        name = name.removesuffix(suffix)
    for suffix in (".jsonl", ".ndjson", ".json", ".xml"):
        name = name.removesuffix(suffix)
    return name


def basename(path: str | os.PathLike[str]) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def fingerprint(path: str) -> str:
    """What identifies a file's content cheaply: size plus mtime, ETag or checksum (whatever the store has)."""
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    version = next((str(info[k]) for k in ("mtime", "LastModified", "ETag", "etag", "md5Hash", "checksum")
                    if info.get(k) is not None), "")
    return f"{info.get('size', '')}:{version}"


def input_fingerprints(patterns: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(path, fingerprint)`` of every file the patterns name; a missing one yields ``(pattern, "missing")``."""
    for pattern in patterns:
        try:
            paths = expand_inputs(pattern)
        except KilnError:
            yield pattern, "missing"  # the stage itself reports it, naming the pattern
            continue
        for path in paths:
            yield path, fingerprint(path)


def is_index(path: str) -> bool:
    """Whether `path` names a multistream index (``X-index.txt.bz2``, or a Wikimedia part's index)."""
    name = basename(path)
    return name.endswith(INDEX_SUFFIXES) or bool(_SPLIT_INDEX.match(name))


def _dump_of_index(index_path: str) -> str:
    """The dump an index belongs to, beside it: ``X.xml.bz2`` for ``X-index.txt.bz2``; for a Wikimedia part
    ``…-multistream-index3.txt-p1p9.bz2`` it is ``…-multistream3.xml-p1p9.bz2``."""
    folder, name = index_path[: len(index_path) - len(basename(index_path))], basename(index_path)
    m = _SPLIT_INDEX.match(name)
    if m and (m["part"] or m["pages"]):
        return f"{folder}{m['head']}{m['part']}.xml{m['pages'] or ''}.bz2"
    for suffix in INDEX_SUFFIXES:
        if index_path.endswith(suffix):
            return index_path[: -len(suffix)] + ".xml.bz2"
    return index_path


def is_local(path: str) -> bool:
    """Whether `path` is on the local filesystem (a plain path or ``file://``)."""
    return "file" in _protocols(fsspec.core.url_to_fs(path)[0])


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _size(path: str) -> int:
    fs, p = fsspec.core.url_to_fs(path)
    return int(fs.info(p).get("size") or 0)


def local_path(path: str) -> str:
    """The OS path behind a local path or ``file://`` URL (the multistream reader wants one)."""
    return fsspec.core.url_to_fs(path)[1] if is_local(path) else path
