"""Wikitext cleaning throughput and cleanliness: Kiln vs WikiExtractor 3.1.0 vs naive mwparserfromhell.

    python benchmarks/clean_throughput.py [--dump PATH] [--out benchmarks/results/clean_throughput.json]

Default dump: the real enwiki sample shipped in the gensim wheel (106 articles, ~6 MB of wikitext).
Everything runs in one process on one core (`--cpu N` pins it), except the WikiExtractor CLI row:
its `--processes 1` still forks a reader, one worker and a reducer.

Rows, all on the same ns-0 non-redirect pages:
- clean only, in process: `clean_wikitext`, WikiExtractor's `Extractor.clean_text` (fed the escaped
  page lines its CLI feeds it, with the CLI's options), and `mwparserfromhell.parse(t).strip_code()`.
  This is the fair per-page comparison.
- end to end from the .bz2: `iter_pages` + `clean_wikitext`, `iter_pages` alone (the bz2 + XML
  floor), and the WikiExtractor CLI in a subprocess (`--processes 1 --json`, interpreter start-up
  included).

Each row is timed `--repeat` times, interleaved so that load from other processes hits all rows
alike, and the best wall time is reported (as `timeit` does: noise only ever adds time). Residue is
leftover markup per 1000 output characters (`markup_residue`), and "kept" is output characters as
a share of input wikitext characters. "cpu p/s" divides by CPU time instead of wall time (the CLI
row counts its child processes): on a shared machine it is the steadier figure.
"""

from __future__ import annotations

import argparse
import bz2
import importlib.metadata
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from tasks.text.mediawiki import iter_pages  # noqa: E402
from tasks.text.wikitext import clean_wikitext, markup_residue  # noqa: E402

DEFAULT_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
RESIDUE_KEYS = ("{{", "[[", "|", "<ref", "&nbsp;", "'''")


@dataclass
class Row:
    """One measured method."""

    name: str
    scope: str
    run: Callable[[], list[str]]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    output: list[str] = field(default_factory=list)


def default_dump() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gensim") / DEFAULT_DUMP))


def wikiextractor_pages(dump: Path) -> list[tuple[str, str, str, list[str]]]:
    """(id, revid, title, raw page lines) exactly as the WikiExtractor CLI collects them."""
    import wikiextractor.WikiExtractor as cli

    with bz2.open(dump, "rt", encoding="utf-8") as lines:
        # The CLI reads the Template namespace name from <siteinfo> first; collect_pages
        # skips titles starting with it, so unset it would skip every page.
        head = "".join(line for _, line in zip(range(200), lines, strict=False))
        cli.templateNamespace = re.search(r'<namespace key="10"[^>]*>([^<]+)<', head).group(1)
    with bz2.open(dump, "rt", encoding="utf-8") as lines:
        return list(cli.collect_pages(lines))


def wikiextractor_clean(pages: list[tuple[str, str, str, list[str]]]) -> Callable[[], list[str]]:
    """In-process WikiExtractor with the CLI's defaults (templates expanded, `<a>` tags ignored)."""
    from wikiextractor.extract import _DEFAULT_IGNORED_TAG_PATTERNS, Extractor, ignoreTag

    ignored = [*_DEFAULT_IGNORED_TAG_PATTERNS, ignoreTag("a")]

    def run() -> list[str]:
        out = []
        for page_id, revid, title, lines in pages:
            extractor = Extractor(page_id, revid, "", title, lines, to_json=True, ignored_tag_patterns=ignored)
            out.append("\n".join(extractor.clean_text("".join(lines), html_safe=False)))
        return out

    return run


def wikiextractor_cli(dump: Path) -> Callable[[], list[str]]:
    def run() -> list[str]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump)]
            cmd += ["--processes", "1", "--json", "-q", "-o", tmp]
            subprocess.run(cmd, check=True, capture_output=True)
            docs = [json.loads(line) for f in sorted(Path(tmp).rglob("wiki_*")) for line in f.open()]
        return [d["text"] for d in docs]

    return run


def naive_mwparser(texts: list[str]) -> Callable[[], list[str]]:
    import mwparserfromhell

    return lambda: [mwparserfromhell.parse(t).strip_code() for t in texts]


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the WikiExtractor CLI)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(rows: list[Row], repeat: int) -> None:
    for _ in range(repeat):
        for row in rows:
            start, cpu_start = time.perf_counter(), cpu_seconds()
            row.output = row.run()
            row.times.append(time.perf_counter() - start)
            row.cpu.append(cpu_seconds() - cpu_start)
            print(f"  {row.name:<38} {row.times[-1]:7.3f} s wall {row.cpu[-1]:7.3f} s cpu", file=sys.stderr)


def round_ratio(fast: Row, slow: Row) -> float:
    """Median over rounds of slow/fast time: both ran back to back, under the same load."""
    return round(statistics.median(s / f for f, s in zip(fast.times, slow.times, strict=True)), 2)


def summarize(row: Row, n_pages: int, in_chars: int, in_mb: float) -> dict:
    best = min(row.times)
    joined = "\n".join(row.output)
    residue = markup_residue(joined)
    return {
        "name": row.name,
        "scope": row.scope,
        "pages": len(row.output) if row.output else n_pages,
        "seconds_best": round(best, 4),
        "seconds_median": round(statistics.median(row.times), 4),
        "pages_per_s": round(n_pages / best, 1),
        "cpu_seconds_best": round(min(row.cpu), 4),
        "pages_per_cpu_s": round(n_pages / min(row.cpu), 1),
        "mb_wikitext_per_s": round(in_mb / best, 2),
        "chars_out": len(joined) if row.output else None,
        "kept_pct": round(100 * len(joined) / in_chars, 1) if row.output else None,
        "residue_per_1000_chars": {k: round(residue[k], 4) for k in RESIDUE_KEYS} if row.output else None,
    }


def table(results: list[dict]) -> str:
    head = f"{'method':<38} {'scope':<11} {'pages/s':>8} {'MB/s':>6} {'cpu p/s':>8} {'kept%':>6} " + " ".join(
        f"{k:>7}" for k in RESIDUE_KEYS
    )
    lines = [head, "-" * len(head)]
    for r in results:
        res = r["residue_per_1000_chars"]
        cols = " ".join(f"{res[k]:>7.3f}" for k in RESIDUE_KEYS) if res else ""
        kept = f"{r['kept_pct']:>6.1f}" if r["kept_pct"] is not None else f"{'-':>6}"
        lines.append(
            f"{r['name']:<38} {r['scope']:<11} {r['pages_per_s']:>8.1f} {r['mb_wikitext_per_s']:>6.2f}"
            f" {r['pages_per_cpu_s']:>8.1f} {kept} {cols}"
        )
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    out = {}
    for dist in ("mwparserfromhell", "wikiextractor", "gensim"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    out["kiln_git"] = rev.stdout.strip() or None
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump", type=Path, default=None, help="a .xml.bz2 dump (default: gensim's enwiki sample)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/clean_throughput.json")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method; the best is reported")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process (and the CLI run) to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    logging.disable(logging.WARNING)  # WikiExtractor logs per-page template warnings
    dump = args.dump or default_dump()
    machine_info = machine()  # load average before we add ours

    pages = list(iter_pages(dump))
    texts = [p.text for p in pages]
    in_chars = sum(map(len, texts))
    in_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    we_pages = wikiextractor_pages(dump)
    if sorted(p[0] for p in we_pages) != sorted(p.id for p in pages):
        raise SystemExit("WikiExtractor and Kiln selected different pages; the comparison would be unfair")

    kiln = Row("kiln clean_wikitext", "clean only", lambda: [clean_wikitext(t) for t in texts])
    we = Row("wikiextractor Extractor.clean_text", "clean only", wikiextractor_clean(we_pages))
    naive = Row("mwparserfromhell parse().strip_code()", "clean only", naive_mwparser(texts))
    kiln_e2e = Row(
        "kiln iter_pages + clean_wikitext", "end to end", lambda: [clean_wikitext(p.text) for p in iter_pages(dump)]
    )
    reader = Row("kiln iter_pages only (bz2 + XML)", "end to end", lambda: [p.text for p in iter_pages(dump)])
    we_cli = Row("wikiextractor CLI --processes 1", "end to end", wikiextractor_cli(dump))
    rows = [kiln, we, naive, kiln_e2e, reader, we_cli]
    print(f"{dump.name}: {len(pages)} articles, {in_mb:.2f} MB wikitext; {args.repeat} rounds", file=sys.stderr)
    measure(rows, args.repeat)
    reader.output = []  # it yields wikitext, not cleaned text: no residue figures
    results = [summarize(r, len(pages), in_chars, in_mb) for r in rows]
    speedup = {
        "clean_vs_wikiextractor": round(min(we.times) / min(kiln.times), 2),
        "clean_vs_wikiextractor_median_of_rounds": round_ratio(kiln, we),
        "clean_vs_wikiextractor_cpu_time": round(min(we.cpu) / min(kiln.cpu), 2),
        "clean_vs_naive_mwparserfromhell": round(min(naive.times) / min(kiln.times), 2),
        "end_to_end_vs_wikiextractor_cli": round(min(we_cli.times) / min(kiln_e2e.times), 2),
        "end_to_end_vs_wikiextractor_cli_median_of_rounds": round_ratio(kiln_e2e, we_cli),
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dump": {"path": str(dump), "bytes": dump.stat().st_size, "articles": len(pages), "wikitext_mb": in_mb},
        "repeat": args.repeat,
        "timing": "best wall time of the interleaved rounds; *_median_of_rounds compare rows run back to back",
        "machine": {**machine_info, "loadavg_at_end": os.getloadavg()},
        "versions": versions(),
        "results": results,
        "speedup": speedup,
    }
    print(table(results))
    print("speedup:", json.dumps(speedup))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.out)  # atomic: a half-written result never replaces a good one
    return report


if __name__ == "__main__":
    main()
