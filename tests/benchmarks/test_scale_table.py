"""The README tables come from the committed scale.json: every stage, size and tool appears."""

import json
from pathlib import Path

from benchmarks.scale_table import dedup_table, stage_table

RESULT = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scale.json").read_text())


def test_stage_table_has_a_column_per_size_and_rows_per_stage() -> None:
    table = stage_table(RESULT).splitlines()
    assert all(line.count("|") == len(RESULT["sizes_gb"]) + 3 for line in table)
    cpu_rows = [line for line in table if "| CPU-s/GB |" in line]
    assert [r.split("|")[1].strip() for r in cpu_rows] == ["clean", "dedup", "tokenizer", "pretokenize"]
    first = RESULT["stages"]["clean"]["cpu_s_per_gb"][0]
    assert f"{first:,.0f}" in cpu_rows[0]


def test_dedup_table_scores_both_tools() -> None:
    table = dedup_table(RESULT)
    compared = next(r for r in RESULT["per_size"] if "datatrove" in r)["datatrove"]
    assert "datatrove 0.10.1" in table and "**Kiln**" in table
    assert f"{compared['kiln']['near_recall']:.4f}" in table
    assert f"{compared['datatrove']['controls_merged']:,} of" in table
