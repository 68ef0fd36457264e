"""The clean stage's report: per source, documents and characters in and out, and every drop with its reason.

Built from the counts each phase-1 unit saved with its completion marker plus the dedup
drops of phase 2, so a resumed run reports exactly what an uninterrupted one does. It holds
no timings or paths outside the artifact: equal inputs give byte-equal ``report.json`` and
``report.md``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tasks.text.filters import FilterStats
from tasks.text.units import InputFile, Unit

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
MAX_INPUT_ROWS = 20
"""Input files listed in ``report.md`` (a dump split into thousands of files would bury the rest)."""


def build_report(
    units: Sequence[Unit], unit_infos: Mapping[str, dict[str, Any]], dedup: dict[str, Any], output: dict[str, int],
    dropped_samples: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The report as JSON-able data (see `to_markdown` for the human view); `dropped_samples`: documents per
    ``dropped/<reason>.parquet``."""
    stats = FilterStats()
    reader: dict[str, Counter[str]] = {}
    for unit in units:
        info = unit_infos[unit.name]
        stats = stats.merge(FilterStats.from_dict(info["filters"]))
        for source, counts in info["reader"].items():
            reader.setdefault(source, Counter()).update(counts)
    for source, reasons in dedup["dropped"].items():
        c = stats.sources[source]
        for reason, (docs, chars) in reasons.items():
            c.docs_out -= docs
            c.chars_out -= chars
            c.dropped[reason] += docs
            c.dropped_chars[reason] += chars
    sources = stats.to_dict()
    for source, entry in sources.items():
        entry["reader"] = dict(sorted(reader.get(source, Counter()).items()))
    inputs = {u.input.index: u.input for u in units}
    return {
        "sources": sources,
        "total": _total(sources),
        "output": output,
        "inputs": [_input_row(f, sum(u.input.index == i for u in units)) for i, f in sorted(inputs.items())],
        "dropped_samples": dict(dropped_samples or {}),
        "duplicates": {
            "clusters": dedup.get("clusters", {}),
            "by_source_pair": [{"kept": k, "dropped": d, "reason": r, "docs": n}
                               for k, d, r, n in dedup.get("pairs", [])],
        },
    }


def _total(sources: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"docs_in": 0, "chars_in": 0, "docs_out": 0, "chars_out": 0}
    dropped: Counter[str] = Counter()
    reader: Counter[str] = Counter()
    for entry in sources.values():
        for key in total:
            total[key] += entry[key]
        dropped.update(entry["dropped"])
        reader.update(entry["reader"])
    return {**total, "dropped": dict(sorted(dropped.items())), "reader": dict(sorted(reader.items()))}


def _input_row(f: InputFile, units: int) -> dict[str, Any]:
    return {"file": f.name, "format": f.fmt, "source": f.source, "bytes": f.size, "units": units}


def flat_counts(report: Mapping[str, Any]) -> dict[str, int]:
    """The manifest's ``counts``: totals, ``dropped_<reason>``, reader counts, output sizes."""
    total = report["total"]
    counts = {
        "docs_in": total["docs_in"],
        "documents": total["docs_out"],
        "chars_in": total["chars_in"],
        "chars_out": total["chars_out"],
        **{f"dropped_{reason}": n for reason, n in total["dropped"].items()},
        **total["reader"],
        **{k: v for k, v in report["output"].items() if k not in ("documents", "chars")},
        "input_files": len(report["inputs"]),
    }
    return dict(sorted(counts.items()))


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def to_markdown(report: Mapping[str, Any]) -> str:
    """Tables for people: per source in/out and drops, reader counts, output, inputs."""
    out = report["output"]
    lines = ["# Clean report", "", "Documents and characters per source; drops by reason (quality filters in the",
             "order they run, then exact and near-duplicate removal across all sources).", "",
             FilterStats.from_dict(report["sources"]).to_markdown(), ""]
    readers = sorted({k for e in report["sources"].values() for k in e["reader"]})
    if readers:
        lines += ["## Reader counts", "", "| source | " + " | ".join(readers) + " |",
                  "|---|" + "---:|" * len(readers)]
        for source, entry in report["sources"].items():
            lines.append(f"| {source} | " + " | ".join(f"{entry['reader'].get(k, 0):,}" for k in readers) + " |")
        lines.append("")
    jsonl = f" and {out['jsonl_files']:,} `.jsonl.zst` files" if out.get("jsonl_files") else ""
    lines += ["## Output", "", f"{out['documents']:,} documents, {out['chars']:,} characters "
              f"in {out['shards']:,} Parquet shards{jsonl}.", "",
              "| input | format | source | bytes | units |", "|---|---|---|---:|---:|"]
    shown = report["inputs"][:MAX_INPUT_ROWS]
    lines += [f"| {r['file']} | {r['format']} | {r['source']} | {r['bytes']:,} | {r['units']} |" for r in shown]
    if len(report["inputs"]) > len(shown):
        rest = report["inputs"][len(shown):]
        lines.append(f"| … {len(rest):,} more (all in report.json) | | | {sum(r['bytes'] for r in rest):,} | "
                     f"{sum(r['units'] for r in rest):,} |")
    dups = report.get("duplicates") or {}
    if dups.get("by_source_pair"):
        c = dups.get("clusters") or {}
        lines += ["", "## Duplicates by source pair", "",
                  f"{c.get('exact_groups', 0):,} groups of exact copies (largest {c.get('exact_largest', 0):,}), "
                  f"{c.get('near_clusters', 0):,} clusters of near copies (largest {c.get('near_largest', 0):,}); "
                  "each keeps its earliest document in input order.", "",
                  "| kept copy from | dropped copy from | reason | documents |", "|---|---|---|---:|"]
        lines += [f"| {p['kept']} | {p['dropped']} | {p['reason']} | {p['docs']:,} |" for p in dups["by_source_pair"]]
    samples = report.get("dropped_samples") or {}
    if samples:
        lines += ["", "## Dropped samples", "", "The first dropped documents per reason, in input order, with the "
                  "output's schema:", "", "| reason | file | documents |", "|---|---|---:|"]
        lines += [f"| {reason} | `dropped/{reason}.parquet` | {n:,} |" for reason, n in samples.items()]
    return "\n".join(lines) + "\n"
