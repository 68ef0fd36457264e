"""Download stage against a real HTTP server on 127.0.0.1: range resume, retries, checksums."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.config import load_config
from kiln.errors import KilnError, TransientError, is_transient
from storage.store import ArtifactStore
from tasks.download import (
    DownloadConfig,
    SourceSpec,
    download,
    download_task,
    sources_toml,
    wikipedia_dump_url,
    wikipedia_sources,
)

CONFTEST_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class FlakyRangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload with Range support; the first `drop_first` responses stop halfway."""

    payload = b""
    drop_first = 0
    unavailable_first = 0
    requests: list[str | None] = []
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        cls = type(self)
        cls.paths.append(self.path)
        if self.path != "/dump.bz2":
            self.send_error(404)
            return
        if cls.unavailable_first > 0:
            cls.unavailable_first -= 1
            self.send_error(503)
            return
        rng = self.headers.get("Range")
        cls.requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = cls.payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(cls.payload) - 1}/{len(cls.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drop_first > 0:
            cls.drop_first -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()  # cut the transfer: the client must resume
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(enwiki_sample: Path) -> Iterator[tuple[str, type[FlakyRangeHandler]]]:
    handler = type("Handler", (FlakyRangeHandler,), {"payload": enwiki_sample.read_bytes(), "requests": [],
                                                "paths": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


def test_http_download_resumes_with_range_and_verifies(server, store: ArtifactStore, enwiki_sample: Path) -> None:
    url, handler = server
    handler.drop_first = 2
    sha = hashlib.sha256(handler.payload).hexdigest()
    cfg = DownloadConfig(sources=[SourceSpec(name="dump.xml.bz2", url=f"{url}/dump.bz2", sha256=sha)])
    ref = download(cfg, store)
    got = (ref.path / "files/dump.xml.bz2").read_bytes()
    assert got == enwiki_sample.read_bytes()
    assert handler.requests[0] is None and handler.requests[1].startswith("bytes=") and len(handler.requests) == 3
    assert store.manifest(ref)["counts"] == {"files": 1, "bytes": len(got)}


def test_checksum_mismatch_fails_without_artifact(server, store: ArtifactStore) -> None:
    url, _ = server
    cfg = DownloadConfig(sources=[SourceSpec(name="d.bz2", url=f"{url}/dump.bz2", md5="0" * 32)])
    with pytest.raises(KilnError, match="md5 mismatch"):
        download(cfg, store)
    assert not list(store.root.glob("download/[!.]*"))


def test_http_404_is_a_clear_error(server, store: ArtifactStore) -> None:
    url, _ = server
    with pytest.raises(KilnError, match="HTTP 404"):
        download(DownloadConfig(sources=[SourceSpec(name="x.bz2", url=f"{url}/missing")]), store)


def test_missing_local_file_names_it(store: ArtifactStore, tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml.bz2"
    with pytest.raises(KilnError, match=f"{missing}: source file .* not found"):
        download(DownloadConfig(sources=[SourceSpec(name="a.xml.bz2", url=str(missing))]), store)
    assert not list(store.root.glob("download/[!.]*"))


def test_pkg_url_and_local_fingerprint(store: ArtifactStore, tmp_path: Path) -> None:
    cfg = DownloadConfig(sources=[SourceSpec(name="en.xml.bz2", url=f"pkg://gensim/test/test_data/{CONFTEST_SAMPLE}")])
    ref = download(cfg, store)
    assert (ref.path / "files/en.xml.bz2").stat().st_size > 1_000_000
    local = tmp_path / "local.xml"
    local.write_text("<mediawiki/>")
    cfg2 = DownloadConfig(sources=[SourceSpec(name="l.xml", url=f"file://{local}")])
    first = download(cfg2, store)
    local.write_text("<mediawiki>changed</mediawiki>")
    second = download(cfg2, store)
    assert first.key != second.key and (second.path / "files/l.xml").read_text().endswith("changed</mediawiki>")


def test_no_sources_is_an_empty_artifact(store: ArtifactStore) -> None:
    """A corpus read in place (clean.inputs) fetches nothing: the stage costs a manifest, then a cache hit."""
    ref = download(DownloadConfig(), store)
    manifest = store.manifest(ref)
    assert manifest["counts"] == {"files": 0, "bytes": 0} and manifest["files"] == {}
    assert download(DownloadConfig(sources=[]), store) == ref


def test_config_errors_are_clear() -> None:
    with pytest.raises(KilnError, match="plain file name"):
        SourceSpec(name="a/b", url="x")


# ---------------------------------------------------------------- which failures the Prefect task retries


@pytest.fixture
def prefect_run(prefect_api: str) -> Iterator[Any]:
    """Run the download task through Prefect (the session's test server); returns the final state and run count.

    The retry delay is 0 here; the stage's retries and retry condition are its own."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    def run(cfg: DownloadConfig, store: ArtifactStore) -> tuple[Any, int]:
        task = download_task.with_options(retry_delay_seconds=0)
        state = task(cfg, str(store.root), return_state=True)
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while True:  # the server records task runs from events: it may lag a moment behind the run
                try:
                    recorded = client.read_task_run(state.state_details.task_run_id)
                    if recorded.state_type == state.type:
                        return state, recorded.run_count
                except ObjectNotFound:
                    pass
                assert time.monotonic() < deadline, "the task run never reached the server"
                time.sleep(0.2)

    with temporary_settings(updates={PREFECT_API_URL: prefect_api, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        yield run


def test_deterministic_failures_are_not_retried(prefect_run, server, store: ArtifactStore, tmp_path: Path) -> None:
    url, handler = server
    state, runs = prefect_run(DownloadConfig(sources=[SourceSpec(name="x.bz2", url=f"{url}/missing")]), store)
    assert state.is_failed() and "HTTP 404" in str(state.result(raise_on_failure=False))
    assert runs == 1 and handler.paths == ["/missing"]  # one request: a 404 does not go away
    missing = DownloadConfig(sources=[SourceSpec(name="a.bz2", url=str(tmp_path / "nope.bz2"))])
    state, runs = prefect_run(missing, store)
    assert state.is_failed() and "not found" in str(state.result(raise_on_failure=False)) and runs == 1
    wrong = DownloadConfig(sources=[SourceSpec(name="d.bz2", url=f"{url}/dump.bz2", md5="0" * 32)])
    state, runs = prefect_run(wrong, store)
    assert state.is_failed() and "md5 mismatch" in str(state.result(raise_on_failure=False)) and runs == 1


def test_transient_failure_is_retried_by_the_task(prefect_run, server, store: ArtifactStore) -> None:
    url, handler = server
    handler.unavailable_first = 1  # one attempt per task run: the 503 ends the first run, the retry succeeds
    cfg = DownloadConfig(sources=[SourceSpec(name="dump.xml.bz2", url=f"{url}/dump.bz2")], attempts=1)
    state, runs = prefect_run(cfg, store)
    assert state.is_completed() and runs == 2 and handler.paths == ["/dump.bz2", "/dump.bz2"]
    ref = state.result()
    assert (ref.path / "files/dump.xml.bz2").read_bytes() == handler.payload


def test_which_errors_are_transient() -> None:
    import errno
    import urllib.error

    def http(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x", code, "status", {}, None)  # type: ignore[arg-type]

    transient = [TransientError("net"), http(503), http(429), http(500), TimeoutError(), ConnectionResetError(),
                 urllib.error.URLError(ConnectionRefusedError()), urllib.error.URLError("closed early"),
                 OSError(errno.ENETUNREACH, "unreachable")]
    deterministic = [KilnError("bad"), http(404), http(403), FileNotFoundError(), PermissionError(),
                     OSError(errno.ENOSPC, "full"), urllib.error.URLError(FileNotFoundError()), ValueError()]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in deterministic] == [False] * len(deterministic)


# ---------------------------------------------------------------- Wikipedia dump URLs and published checksums
DATE = "20240601"


def test_wikipedia_dump_urls_follow_the_standard_layout() -> None:
    assert wikipedia_dump_url("zh", DATE) == (
        "https://dumps.wikimedia.org/zhwiki/20240601/zhwiki-20240601-pages-articles-multistream.xml.bz2"
    )
    assert wikipedia_dump_url("zh-yue", kind="pages-articles-multistream-index", mirror="http://m/") == (
        "http://m/zh_yuewiki/latest/zh_yuewiki-latest-pages-articles-multistream-index.txt.bz2"
    )
    with pytest.raises(KilnError, match="YYYYMMDD"):
        wikipedia_dump_url("en", "2024-06-01")


@pytest.fixture
def mirror(tmp_path: Path, enwiki_sample: Path) -> Iterator[tuple[str, Path]]:
    """A dumps.wikimedia.org look-alike over HTTP: a dated enwiki dump, its index and both sums files."""
    folder = tmp_path / "mirror" / "enwiki" / DATE
    folder.mkdir(parents=True)
    files = {f"enwiki-{DATE}-pages-articles-multistream.xml.bz2": enwiki_sample.read_bytes(),
             f"enwiki-{DATE}-pages-articles-multistream-index.txt.bz2": b"index bytes",
             f"enwiki-{DATE}-pages-articles.xml.bz2": b"single-stream dump"}
    for alg in ("sha1", "md5"):
        lines = [f"{hashlib.new(alg, data).hexdigest()}  {name}" for name, data in files.items()]
        (folder / f"enwiki-{DATE}-{alg}sums.txt").write_text("\n".join(lines) + "\n")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    handler = functools.partial(QuietFiles, directory=str(tmp_path / "mirror"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_wikipedia_sources_carry_published_checksums(mirror, store: ArtifactStore, enwiki_sample: Path) -> None:
    url, _ = mirror
    specs = wikipedia_sources("en", DATE, mirror=url)
    assert [s.name for s in specs] == [f"enwiki-{DATE}-pages-articles-multistream.xml.bz2",
                                       f"enwiki-{DATE}-pages-articles-multistream-index.txt.bz2"]
    assert specs[0].sha1 == hashlib.sha1(enwiki_sample.read_bytes()).hexdigest()
    assert specs[0].md5 == hashlib.md5(enwiki_sample.read_bytes()).hexdigest()
    ref = download(DownloadConfig(sources=specs), store)  # verifies both sums
    assert (ref.path / "files" / specs[0].name).read_bytes() == enwiki_sample.read_bytes()
    parsed = load_config(DownloadConfig, data=tomllib.loads(sources_toml(specs))["download"])
    assert parsed.sources == specs  # the TOML that `python -m tasks.download` prints round-trips


def test_wikipedia_sources_problems_are_named(mirror) -> None:
    url, folder = mirror
    (single,) = wikipedia_sources("en", DATE, mirror=url, multistream=False, checksums=("md5",))
    assert single.name.endswith("-pages-articles.xml.bz2") and single.md5 and not single.sha1
    with pytest.raises(KilnError, match=r"zhwiki-20240601-sha1sums\.txt: HTTP 404"):
        wikipedia_sources("zh", DATE, mirror=url)
    sums = folder / f"enwiki-{DATE}-sha1sums.txt"
    sums.write_text(sums.read_text().splitlines()[0] + "\n")  # the index is not listed (dump still running)
    with pytest.raises(KilnError, match="no sha1 for enwiki-20240601-pages-articles-multistream-index"):
        wikipedia_sources("en", DATE, mirror=url)
