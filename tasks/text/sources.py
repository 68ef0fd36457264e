"""Streaming readers for raw text corpora: WuDao JSON, The Pile ``.jsonl.zst``, generic JSON lines.

Each reader is a generator of document dicts with the keys of `storage.documents`
(``id, source, title, text, url, meta``; `meta` a dict) and never holds more than a
read buffer plus one record in memory, so a stage can run it on a Dask worker over
files of many GB. Paths go through fsspec: local paths, ``file://``, ``s3://``...

Errors follow one rule. A problem with one record (malformed JSON line, record without
text) raises a `KilnError` naming file and position, or with ``on_error="skip"`` is
skipped and counted in ``stats`` (never a silent loss). A broken file (truncated or
corrupt compressed stream, WuDao array never closed) always raises: the download is
incomplete and should be fetched again.

Ids are ``<source>/<label>/<key>``: `label` names the file (its stem by default; the clean
stage passes `units.input_labels`, unique among all inputs of a run), `key` is the record's
own id (WuDao ``id``, JSON lines `id_key`) with ``%`` and ``/`` percent-encoded, else its
position (WuDao record index, 1-based line number). Neither a source nor a key holds a
``/``, so documents of two files with different labels never share an id.

Usage::

    for path in expand_inputs("s3://bucket/wudao/*.json"):
        for doc in iter_source(path, on_error="skip", stats=counts): ...
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import IO, Any, Literal, cast

import fsspec
import fsspec.core
import zstandard

from kiln.errors import KilnError

OnError = Literal["raise", "skip"]
Doc = dict[str, Any]

READ_CHUNK_CHARS = 1 << 20
"""Characters per read in the WuDao array parser (tests shrink it to force records across reads)."""
_ZSTD_READ_BYTES = 1 << 17  # compressed bytes per read: ~1 MB of text out, bounded memory
_ZSTD_MAX_WINDOW = 1 << 31  # accept files compressed with `zstd --long` (window up to 2 GiB)
_TEXT_BUFFER_BYTES = 1 << 20  # measured: 64 KB buffers cost ~15 % of Pile read speed
_INCOMPLETE_SLACK = 32  # a JSON error this close to the buffer end may just be a token cut by the read

# Longest suffix first; compression suffixes are handled by `_open_decompressed`.
FORMATS: tuple[tuple[str, str], ...] = (
    (".jsonl.zst", "pile"),
    (".jsonl.gz", "jsonl"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".json.gz", "wudao"),
    (".json.zst", "wudao"),
    (".json", "wudao"),
    (".xml.bz2", "mediawiki"),
    (".xml.gz", "mediawiki"),
    (".xml", "mediawiki"),
    (".bz2", "mediawiki"),  # gensim's and some mirrors' dumps are named *.bz2 without .xml
)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The reader a file needs from its suffix: ``wudao``, ``pile``, ``jsonl`` or ``mediawiki``."""
    name = _basename(path).lower()
    for suffix, fmt in FORMATS:
        if name.endswith(suffix):
            return fmt
    known = ", ".join(s for s, _ in FORMATS)
    raise KilnError(f"{path}: unknown input format; name the file with one of the suffixes {known}")


def expand_inputs(pattern: str | os.PathLike[str]) -> list[str]:
    """Files named by a path, directory (recursive) or glob, local or any fsspec URL; sorted.

    Names starting with ``.`` or ``_`` are left out (temp files, ``_SUCCESS`` markers).
    """
    fs, root = fsspec.core.url_to_fs(os.fspath(pattern))
    if any(c in root for c in "*?["):
        infos = fs.glob(root, detail=True)
    elif fs.isdir(root):
        infos = fs.find(root, detail=True)
    elif fs.exists(root):
        infos = {root: fs.info(root)}
    else:
        infos = {}
    local = "file" in _protocols(fs)
    files = sorted(
        p if local else fs.unstrip_protocol(p)
        for p, info in infos.items()
        if info.get("type") == "file" and not _basename(p).startswith((".", "_"))
    )
    if not files:
        raise KilnError(f"{pattern}: no input files match; check the path, directory or glob")
    return files


def open_path(url_or_path: str | os.PathLike[str], mode: str = "rb") -> Any:
    """An fsspec `OpenFile` (use it as a context manager) for a local path or any fsspec URL."""
    return fsspec.open(os.fspath(url_or_path), mode)


def iter_source(path: str | os.PathLike[str], fmt: str | None = None, **kwargs: Any) -> Iterator[Doc]:
    """Documents of one file with the reader its format (or suffix) names."""
    readers: dict[str, Callable[..., Iterator[Doc]]] = {"wudao": iter_wudao, "pile": iter_pile, "jsonl": iter_jsonl}
    fmt = fmt or detect_format(path)
    if fmt not in readers:
        raise KilnError(f"{path}: format {fmt!r} has no streaming reader here; MediaWiki dumps go to the clean stage")
    return readers[fmt](path, **kwargs)


# ---------------------------------------------------------------- WuDao


def iter_wudao(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    on_error: OnError = "raise",
    stats: Counter[str] | None = None,
) -> Iterator[Doc]:
    """WuDao records (a JSON array, or JSON lines, of ``{id, dataType, title, content}``) as documents.

    The array is parsed incrementally (`json.JSONDecoder.raw_decode` over a sliding
    buffer), so memory stays at one read chunk plus one record whatever the file size.
    With ``on_error="skip"`` a malformed record is skipped alone: parsing resumes at the
    next record (see `_JsonScanner.resync`) and each skip counts one in
    ``stats["skipped_bad_json"]``. A truncated file or one that is not UTF-8 always raises.
    """
    _check_on_error(on_error)
    stats = stats if stats is not None else Counter()
    name = _basename(path)
    label = label or _stem(name)
    with _open_decompressed(path) as raw:
        scanner = _JsonScanner(raw, str(path))
        try:
            for index, rec in scanner.records(skip=on_error == "skip"):
                if rec is _SKIPPED:
                    stats["skipped_bad_json"] += 1
                    continue
                doc = _wudao_doc(rec, name, label, index)
                if doc is not None:
                    yield doc
                elif on_error == "skip":
                    stats["skipped_bad_record"] += 1
                else:
                    raise KilnError(
                        f"{path}: record {index} has no string 'content'; fix or remove the file,"
                        " or set on_error='skip'"
                    )
        except _STREAM_ERRORS as exc:
            raise KilnError(f"{path}: {_stream_problem(exc)}; re-download the file") from None
        except _BadJson as exc:
            if exc.truncated:  # a broken download, not a bad record: never skipped
                raise KilnError(f"{path}: {exc}; the file is truncated, re-download it") from None
            if exc.fatal:
                raise KilnError(f"{path}: {exc}; re-encode the file as UTF-8 or re-download it") from None
            raise KilnError(f"{path}: {exc}; fix or remove the file, or set on_error='skip'") from None


def _wudao_doc(rec: Any, name: str, label: str, index: int) -> Doc | None:
    if not isinstance(rec, dict) or not isinstance(rec.get("content"), str):
        return None
    rid = rec.get("id")
    data_type = rec.get("dataType") or ""
    return {
        # WuDao's ids are per file, not unique across the corpus's files: the label qualifies them.
        # A record without one gets its position.
        "id": doc_id("wudao", label, rid if rid is not None else index),
        "source": "wudao",
        "title": str(rec.get("title") or ""),
        "text": rec["content"],
        "url": str(rec.get("url") or ""),
        "meta": {"dataType": str(data_type), "file": name},
    }


class _BadJson(Exception):
    """Malformed or truncated JSON in a WuDao file; the message gives byte offset and record index.

    `truncated`: the file ends early (a broken download). `fatal`: reading cannot go on (not
    UTF-8). Neither is ever skipped. The byte offset is worked out only when the message is
    printed (it reads the file again up to there): a skipped record must not cost that.
    """

    def __init__(self, path: str, chars: int, before: str, after: str = "", *, truncated: bool = False,
                 fatal: bool = False) -> None:
        super().__init__(path, chars, before, after)
        self.path, self.chars, self.before, self.after = path, chars, before, after
        self.truncated = truncated
        self.fatal = fatal or truncated

    def __str__(self) -> str:
        """``<before><byte offset of character `chars`><after>``."""
        return f"{self.before}{_byte_offset(self.path, self.chars)}{self.after}"


_SKIPPED = object()  # what `_JsonScanner.records` yields in place of a malformed record it skipped
_WS = " \t\n\r"
_VALUE_START = frozenset('{["-0123456789tfn')


class _JsonScanner:
    """Top-level JSON values of a text stream: the items of one array, or whitespace-separated values.

    Keeps a buffer of about `READ_CHUNK_CHARS` characters; `base` counts the characters
    before ``buf[0]``. Byte offsets are worked out only for an error message (by decoding the
    file again up to there): encoding every consumed prefix to count bytes cost ~12 % of the
    parse on Chinese text.
    """

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self.text = io.TextIOWrapper(raw, encoding="utf-8-sig")  # tolerate a BOM (Windows-made files)
        self.name = name
        self.buf, self.pos, self.base, self.eof = "", 0, 0, False
        self.decode = json.JSONDecoder().raw_decode

    def records(self, skip: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, value)`` per top-level value; with `skip`, damage yields ``(index, _SKIPPED)`` once and
        parsing goes on at the next record (`resync`); a truncated or non-UTF-8 file still raises."""
        first = self._peek()
        if first == "":
            return  # an empty file has no records
        is_array = first == "["
        if is_array:
            self.pos += 1
        index = 0
        while True:
            ch = self._peek()
            if is_array and ch == "]" and index == 0:
                break
            if not is_array and ch == "":
                return
            try:
                value = self._value(index)
            except _BadJson as exc:
                if not skip or exc.fatal:
                    raise
                # pos is still at the record's start: search from just after it (a string that lost its
                # closing quote makes the parse fail past the next record's start, not before it)
                self.pos += 1
                yield index, _SKIPPED
                index += 1
                if not self.resync(index, is_array):
                    return
                continue
            yield index, value
            index += 1
            if is_array:
                ch = self._peek()
                if ch == "]":
                    break
                if ch == "":
                    raise self._error(self.pos, index, "the JSON array is never closed", truncated=True)
                if ch != ",":
                    if not skip:
                        raise self._error(self.pos, index, "expected ',' or ']' after a record")
                    yield index, _SKIPPED  # the text up to the next record (not a record: index stays)
                    if not self.resync(index, is_array, after_separator=True):
                        return
                    continue
                self.pos += 1
        self.pos += 1  # past "]"
        if self._peek() != "":
            raise self._error(self.pos, index, "data after the end of the JSON array")

    def resync(self, index: int, is_array: bool, after_separator: bool = False) -> bool:
        """Move pos to the start of the next record after damage at ``buf[pos]``; False if none follows.

        In an array the next record is the first ``{`` after a ``,`` (any ``{`` when
        `after_separator`: pos is then at a bad separator, not inside a record) that parses as
        a JSON object followed by ``,`` and the start of a value, or by the closing ``]`` at
        the end of the file; in JSON lines, the first ``{`` that starts a line and parses as
        an object. WuDao records are flat objects, so a false start inside the damaged record
        can only be a nested object: rejected by what follows it, or parsed and dropped as one
        more bad record, after which parsing still reaches the real next record. It streams:
        text before pos is dropped as the search reads on. An array without its closing ``]``
        is truncated and raises.
        """
        boundary = "," if is_array else "\n"
        prev = ""  # the last character before pos, whitespace skipped
        skipped = " \t\n\r" if is_array else " \t\r"
        while True:
            buf, n, i = self.buf, len(self.buf), self.pos
            while i < n and not (buf[i] == "{" and (prev == boundary or after_separator)):
                if buf[i] not in skipped:
                    prev = buf[i]
                i += 1
            self.pos = i
            if i == n:
                if not self.eof:
                    self._fill(grow=False)
                    continue
                if not is_array or prev == "]":  # the damaged record was the last one
                    return False
                raise self._error(self.pos, index, "the JSON array is never closed", truncated=True)
            if self._is_record_start(is_array):
                return True
            prev = "{"
            self.pos += 1

    def _is_record_start(self, is_array: bool) -> bool:
        """Whether ``buf[pos:]`` starts with a JSON object followed (in an array) by ``, <value>`` or by
        ``]`` and the end of the file."""
        while True:
            try:
                value, end = self.decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                if not self.eof and (exc.msg.startswith("Unterminated string")
                                     or exc.pos >= len(self.buf) - _INCOMPLETE_SLACK):
                    self._fill(grow=True)
                    continue
                return False
        if not isinstance(value, dict):
            return False
        if not is_array:
            return True
        ch, at = self._char_after(end - self.pos)
        if ch == ",":
            return self._char_after(at + 1)[0] in _VALUE_START
        return ch == "]" and self._char_after(at + 1)[0] == ""

    def _char_after(self, rel: int) -> tuple[str, int]:
        """The first non-whitespace character at or after ``buf[pos + rel]`` ('' at end of file) and its offset
        from pos; reads more as needed and keeps ``buf[pos:]``."""
        while True:
            buf, n, i = self.buf, len(self.buf), self.pos + rel
            while i < n and buf[i] in _WS:
                i += 1
            if i < n or self.eof:
                return (buf[i] if i < n else ""), i - self.pos
            rel = i - self.pos
            self._fill(grow=True)

    def _value(self, index: int) -> Any:
        while True:
            try:
                value, end = self.decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                unterminated = exc.msg.startswith("Unterminated string")
                if not self.eof and (unterminated or exc.pos >= len(self.buf) - _INCOMPLETE_SLACK):
                    self._fill(grow=True)  # the record may continue past the buffer: read more, parse again
                    continue
                if self.eof and (unterminated or exc.pos >= len(self.buf.rstrip())):
                    raise self._error(exc.pos, index, "the file ends inside a record", truncated=True) from None
                raise self._error(exc.pos, index, exc.msg) from None
            if end == len(self.buf) and not self.eof:
                self._fill(grow=True)  # a bare number may continue in the next read
                continue
            self.pos = end
            return value

    def _peek(self) -> str:
        """The next non-whitespace character ('' at end of file), reading more as needed."""
        while True:
            buf, n = self.buf, len(self.buf)
            pos = self.pos
            while pos < n and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < n:
                return buf[pos]
            if self.eof:
                return ""
            self._fill(grow=False)

    def _fill(self, grow: bool) -> None:
        """Drop the consumed prefix and append a read; `grow` doubles it so a huge record costs linear time."""
        self.base += self.pos
        rest = self.buf[self.pos :]
        want = max(READ_CHUNK_CHARS, len(rest)) if grow else READ_CHUNK_CHARS
        try:
            more = self.text.read(want)
        except UnicodeDecodeError:
            raise _BadJson(self.name, self.base + len(rest), "not UTF-8 text after byte ", fatal=True) from None
        self.buf, self.pos, self.eof = rest + more, 0, more == ""

    def _error(self, pos: int, index: int, msg: str, truncated: bool = False) -> _BadJson:
        kind = "truncated" if truncated else "malformed"
        return _BadJson(self.name, self.base + pos, f"{kind} JSON at byte ", f" (record {index}): {msg}",
                        truncated=truncated)


def _byte_offset(path: str, n_chars: int) -> int:
    """Byte offset in the (decompressed) file of its character `n_chars`, by decoding it again."""
    with _open_decompressed(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        pending = text.read(1)
        offset = 0
        if pending == "\ufeff":  # the BOM that utf-8-sig hid from the parser
            pending, offset = "", 3
        while n_chars > 0:
            chunk = (pending or text.read(min(n_chars, READ_CHUNK_CHARS)))[:n_chars]
            pending = ""
            if not chunk:
                break
            offset += len(chunk.encode("utf-8", errors="replace"))
            n_chars -= len(chunk)
    return offset


# ---------------------------------------------------------------- JSON lines (The Pile, user data)


def iter_pile(
    path: str | os.PathLike[str],
    *,
    sets: Collection[str] | None = None,
    label: str | None = None,
    on_error: OnError = "raise",
    stats: Counter[str] | None = None,
) -> Iterator[Doc]:
    """The Pile's ``{"text", "meta": {"pile_set_name"}}`` lines as documents, optionally only some sets.

    The Pile has no ids: a document's is its file's `label` and line, ``pile/00/17``.
    Documents of other sets are counted in ``stats["filtered_pile_set"]``.
    """
    stats = stats if stats is not None else Counter()
    wanted = frozenset(sets) if sets is not None else None
    name = _basename(path)
    label = label or _stem(name)
    for lineno, rec in _iter_json_lines(path, on_error, stats):
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str):
            _bad_record(path, lineno, "text", on_error, stats)
            continue
        meta = rec.get("meta")
        set_name = str(meta.get("pile_set_name") or "") if isinstance(meta, dict) else ""
        if wanted is not None and set_name not in wanted:
            stats["filtered_pile_set"] += 1
            continue
        yield {
            "id": doc_id("pile", label, lineno),
            "source": "pile",
            "title": "",
            "text": text,
            "url": "",
            "meta": {"pile_set_name": set_name, "file": name},
        }


def iter_jsonl(
    path: str | os.PathLike[str],
    text_key: str = "text",
    *,
    id_key: str | None = "id",
    title_key: str | None = "title",
    url_key: str | None = "url",
    source: str | None = None,
    label: str | None = None,
    on_error: OnError = "raise",
    stats: Counter[str] | None = None,
) -> Iterator[Doc]:
    """Generic JSON lines (plain, ``.zst`` or ``.gz``): `text_key` is the text, other fields go to meta.

    `source` and `label` default to the file stem; ids are ``<source>/<label>/<id field>``,
    or the line number when the record has no `id_key`.
    """
    stats = stats if stats is not None else Counter()
    name = _basename(path)
    source = source or _stem(name)
    label = label or _stem(name)
    taken = {text_key, id_key, title_key, url_key}
    for lineno, rec in _iter_json_lines(path, on_error, stats):
        text = rec.get(text_key) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            _bad_record(path, lineno, text_key, on_error, stats)
            continue
        rid = rec.get(id_key) if id_key else None
        meta = {k: v for k, v in rec.items() if k not in taken}
        meta["file"] = name
        yield {
            "id": doc_id(source, label, rid if rid is not None else lineno),
            "source": source,
            "title": str(rec.get(title_key) or "") if title_key else "",
            "text": text,
            "url": str(rec.get(url_key) or "") if url_key else "",
            "meta": meta,
        }


def doc_id(source: str, label: str, key: Any) -> str:
    """``<source>/<label>/<key>`` with ``%`` and ``/`` of the key percent-encoded, so that the last
    ``/`` always ends the label: ids of files with different labels cannot meet."""
    return f"{source}/{label}/{str(key).replace('%', '%25').replace('/', '%2F')}"


def _iter_json_lines(path: str | os.PathLike[str], on_error: OnError, stats: Counter[str]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) per non-blank line; bad lines raise or are counted."""
    _check_on_error(on_error)
    lineno = 0
    with _open_decompressed(path) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        try:
            for lineno, line in enumerate(lines, 1):  # lineno names the line in errors
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not line.strip():  # blank lines are not records (checked here: strip copies the line)
                        continue
                    if on_error == "raise":
                        raise KilnError(
                            f"{path}:{lineno}: malformed JSON line ({exc.msg}, column {exc.colno});"
                            " fix or remove the line, or set on_error='skip'"
                        ) from None
                    stats["skipped_bad_json"] += 1
                    continue
                yield lineno, value
        except _STREAM_ERRORS as exc:
            raise KilnError(f"{path}: line {lineno + 1}: {_stream_problem(exc)}; re-download the file") from None
        except UnicodeDecodeError:
            raise KilnError(f"{path}: line {lineno + 1}: not UTF-8 text; re-download or re-encode the file") from None


def _bad_record(path: str | os.PathLike[str], lineno: int, key: str, on_error: OnError, stats: Counter[str]) -> None:
    if on_error == "raise":
        raise KilnError(
            f"{path}:{lineno}: record has no string {key!r}; fix or remove the line, or set on_error='skip'"
        )
    stats["skipped_bad_record"] += 1


# ---------------------------------------------------------------- opening and decompression

# What a compressed file's name promises about its first bytes. zstd files may also open with a
# skippable frame (magic 0x184D2A50-5F, little-endian), as pzstd writes them.
_MAGIC: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".bz2": ("bzip2", (b"BZh",)),
    ".gz": ("gzip", (b"\x1f\x8b",)),
    ".zst": ("zstd", (b"\x28\xb5\x2f\xfd", *(bytes([b, 0x2A, 0x4D, 0x18]) for b in range(0x50, 0x60)))),
}


def check_compression(path: str | os.PathLike[str]) -> None:
    """Raise a `KilnError` if a ``.bz2``, ``.gz`` or ``.zst`` file does not start like one (an empty file passes).

    Without it a mislabeled file fails later as malformed XML or corrupt data, which sends the
    user looking in the wrong place.
    """
    name = _basename(path).lower()
    for suffix, (fmt, magics) in _MAGIC.items():
        if name.endswith(suffix):
            try:
                with open_path(path, "rb") as f:
                    head = f.read(8)
            except FileNotFoundError:
                raise KilnError(f"{path}: file not found; check the input path") from None
            if head and not head.startswith(magics):
                raise KilnError(f"{path}: not a {fmt} file (starts with {head!r}); re-download it or rename it")
            return



class _CorruptStream(Exception):
    """The compressed stream is truncated or damaged."""


# What a damaged .zst or .gz raises while it is read (gzip: EOFError when cut short).
_STREAM_ERRORS = (_CorruptStream, EOFError, gzip.BadGzipFile, zlib.error)


@contextmanager
def _open_decompressed(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed on the fly by suffix (.zst, .gz); errors become `_CorruptStream`."""
    name = _basename(path).lower()
    try:
        f = open_path(path, "rb").open()
    except FileNotFoundError:
        raise KilnError(f"{path}: file not found; check the input path") from None
    with f:
        if name.endswith(".zst"):
            yield io.BufferedReader(_ZstdRaw(f), buffer_size=_TEXT_BUFFER_BYTES)
        elif name.endswith(".gz"):
            yield cast(IO[bytes], gzip.GzipFile(fileobj=f, mode="rb"))  # its errors: see _STREAM_ERRORS
        else:
            yield f


class _ZstdRaw(io.RawIOBase):
    """Raw stream over zstd frames that notices truncation.

    `ZstdDecompressor.stream_reader` ends quietly when the input stops mid-frame, which
    would turn a partial download into silently missing documents; decompressing frame
    by frame with `decompressobj` lets us check that the last frame ended.
    """

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            chunk = self._src.read(_ZSTD_READ_BYTES)
            if not chunk:
                if self._in_frame:
                    raise _CorruptStream("compressed stream ends mid-frame (truncated download)")
                return 0
            self._out = memoryview(self._decompress(chunk))
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._obj.eof:  # a new frame starts (multi-frame files, `cat a.zst b.zst`)
                self._obj = self._dctx.decompressobj()
            try:
                out.append(self._obj.decompress(data))
            except zstandard.ZstdError as exc:
                raise _CorruptStream(f"corrupt zstd data ({exc})") from None
            self._in_frame = not self._obj.eof
            data = self._obj.unused_data if self._obj.eof else b""
        return b"".join(out)


def _stream_problem(exc: Exception) -> str:
    """What a decompression error means, for a `KilnError` message."""
    if isinstance(exc, _CorruptStream):
        return str(exc)
    return f"corrupt or truncated gzip data ({exc})"


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise KilnError(f"on_error={on_error!r}: use 'raise' or 'skip'")


def _basename(path: str | os.PathLike[str]) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def _stem(name: str) -> str:
    """File name without its data and compression suffixes: ``00.jsonl.zst`` -> ``00``."""
    for suffix in (".zst", ".gz", ".bz2"):
        name = name.removesuffix(suffix)
    for suffix in (".jsonl", ".ndjson", ".json", ".xml"):
        name = name.removesuffix(suffix)
    return name


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
