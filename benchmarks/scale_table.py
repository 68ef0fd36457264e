"""The README's corpus-scale tables, from `benchmarks/results/scale.json`, so the text never drifts from the run.

    python -m benchmarks.scale_table [benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STAGES = ("clean", "dedup", "tokenizer", "pretokenize")


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def stage_table(result: dict[str, Any]) -> str:
    """Per stage: CPU-s/GB, marginal CPU-s/GB, wall seconds and peak RSS (largest worker / driver) at each size."""
    sizes = result["sizes_gb"]
    head = "| stage | measure | " + " | ".join(f"{s:.3g} GB" for s in sizes) + " |"
    lines = [head, "|---|---|" + "---:|" * len(sizes)]
    for name in STAGES:
        row = result["stages"][name]
        marginal = row.get("marginal_cpu_s_per_gb") or [None] * len(sizes)
        rss = [f"{w:.2f} / {d:.2f}" for w, d in zip(row["peak_rss_gb_per_worker"], row["peak_rss_gb_driver"],
                                                      strict=True)]
        lines += [f"| {name} | CPU-s/GB | " + " | ".join(_num(v) for v in row["cpu_s_per_gb"]) + " |",
                  "| | marginal CPU-s/GB | " + " | ".join(_num(v) for v in marginal) + " |",
                  "| | wall s | " + " | ".join(_num(v) for v in row["wall_s"]) + " |",
                  "| | RSS worker / driver | " + " | ".join(rss) + " |"]
    return "\n".join(lines)


def dedup_table(result: dict[str, Any]) -> str:
    """Kiln and datatrove on the same cleaned documents, scored on the planted truth."""
    compared = next((r for r in result.get("per_size", []) if "datatrove" in r), None)
    if compared is None:
        return "(datatrove was not run)"
    lines = [f"| {compared['text_gb']:.3g} GB, same documents | CPU-s | near recall | exact recall | precision "
             "| controls merged |", "|---|---:|---:|---:|---:|---:|"]
    for label, key in (("datatrove 0.10.1", "datatrove"), ("**Kiln**", "kiln")):
        r = compared["datatrove"][key]
        lines.append(f"| {label} | {r['cpu_s']:.0f} | {r['near_recall']:.4f} | {r['exact_recall']:.4f} "
                     f"| {r['precision']:.4f} | {r['controls_merged']:,} of {r['controls']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("result", nargs="?", type=Path, default=Path("benchmarks/results/scale.json"))
    result = json.loads(parser.parse_args().result.read_text())
    print(stage_table(result), "", dedup_table(result), sep="\n")


if __name__ == "__main__":
    main()
