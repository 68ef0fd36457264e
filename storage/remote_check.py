"""Has a remote source changed? Cheap fingerprints for the scheduled refresh, without downloading anything.

    http_fingerprint("https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles1.xml-p1p41242.bz2")
    # 'etag="5f3c…"' -- or 'last-modified=…;length=…' when the server sends no ETag

The download stage adds this to its artifact key (as it adds size and mtime for local
files): an unchanged dump keeps the key, so the monthly run shows every stage Cached,
and a new dump reruns exactly what depends on it.

Wikimedia also publishes each dump run's status at
``https://dumps.wikimedia.org/<wiki>/<YYYYMMDD>/dumpstatus.json``; `dump_job_files` reads
it and refuses a job that is not ``done``, so a refresh never fetches a dump still being written.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from kiln.errors import KilnError

USER_AGENT = "kiln-refresh/1 (+https://github.com/kiln)"  # Wikimedia asks clients to identify themselves


def http_fingerprint(url: str, *, timeout_s: float = 30.0) -> str | None:
    """ETag, else Last-Modified and length, of `url`; None if the server sends neither.

    Tries HEAD, then a one-byte ranged GET for servers that refuse HEAD. A network
    error or a 4xx is a KilnError: the caller should fail, not silently treat the
    source as changed (a different key would refetch everything).
    """
    try:
        headers = _headers(url, "HEAD", timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code not in (403, 405, 501):
            raise KilnError(f"{url}: HTTP {exc.code} {exc.reason} while checking for changes") from None
        headers = _headers(url, "GET", timeout_s, {"Range": "bytes=0-0"})
    etag = headers.get("ETag")
    if etag:
        return f"etag={etag}"
    modified = headers.get("Last-Modified")
    length = _total_length(headers)
    if modified or length is not None:
        return f"last-modified={modified or '?'};length={length if length is not None else '?'}"
    return None


def _headers(url: str, method: str, timeout_s: float, extra: Mapping[str, str] | None = None) -> Mapping[str, str]:
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(extra or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.headers
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KilnError(f"{url}: cannot check for changes ({reason}); check the network or the URL") from None


def _total_length(headers: Mapping[str, str]) -> int | None:
    content_range = headers.get("Content-Range", "")  # "bytes 0-0/12345" for a ranged GET
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch_json(url: str, *, timeout_s: float = 30.0) -> Any:
    """GET a small JSON document (a dumpstatus.json)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise KilnError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise KilnError(f"{url}: unreachable ({getattr(exc, 'reason', exc)})") from None
    except json.JSONDecodeError as exc:
        raise KilnError(f"{url}: not JSON ({exc})") from None


def dump_job_files(status: Mapping[str, Any], job: str = "articlesmultistreamdump") -> dict[str, dict[str, Any]]:
    """The files of a finished job in a Wikimedia dumpstatus.json: name → {size, url, sha1, md5}.

    KilnError if the job is missing or not ``done`` (a run in progress has partial files).
    The sha1 values make a fingerprint that changes exactly when the dump does.
    """
    jobs = status.get("jobs", {})
    if job not in jobs:
        raise KilnError(f"dumpstatus.json has no job {job!r}; jobs: {', '.join(sorted(jobs)) or 'none'}")
    state = jobs[job].get("status")
    if state != "done":
        raise KilnError(f"dump job {job!r} is {state!r}, not 'done'; wait for it to finish or use the previous dump")
    return dict(jobs[job].get("files", {}))
