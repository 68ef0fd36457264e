"""fp8_quality's run specs and report: named runs with overrides, the worst diff under the asked-for key."""

from __future__ import annotations

import json

import pytest

from benchmarks import fp8_quality as q


def test_a_run_is_a_precision_or_a_named_precision_with_overrides():
    assert q.parse_run("fp8-rowwise") == ("fp8-rowwise", "fp8-rowwise", [])
    assert q.parse_run("bf16-weights=bf16,run.param_dtype=bfloat16") == (
        "bf16-weights", "bf16", ["run.param_dtype=bfloat16"])
    for bad in ("bf16,run.param_dtype=bfloat16", "w=bf16,param_dtype", "w=", ""):  # unnamed overrides, no value
        with pytest.raises(SystemExit, match="NAME=PRECISION"):
            q.parse_run(bad)


def _metrics(path, final_loss, val_loss):
    rows = [{"kind": "train", "step": s, "loss": 9.0 - s * (9.0 - final_loss) / 100, "tokens_per_s": 10.0}
            for s in range(10, 101, 10)]
    rows.append({"kind": "val", "step": 100, "val_loss": val_loss})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_compares_with_the_first_run_and_names_the_figure(tmp_path):
    ref = _metrics(tmp_path / "bf16.jsonl", 5.0, 5.0)
    other = _metrics(tmp_path / "bf16-weights.jsonl", 5.0, 5.07)
    doc = q.report([ref, other], tmp_path / "out.json", None, figure="bf16_weights_loss_rel_diff")
    comparison = doc["comparisons"]["bf16-weights"]
    assert comparison["val_loss_rel_diff"] == pytest.approx(0.014)
    assert comparison["within_1pct"] is False and comparison["diverged"] is False
    assert doc["bf16_weights_loss_rel_diff"] == pytest.approx(0.014) and "fp8_loss_rel_diff" not in doc
    assert json.loads((tmp_path / "out.json").read_text()) == doc


def test_several_references_compare_against_their_median_and_report_their_spread(tmp_path):
    refs = [_metrics(tmp_path / f"bf16-{i}.jsonl", 5.0, val) for i, val in enumerate((4.89, 4.96, 4.975))]
    other = _metrics(tmp_path / "fp8.jsonl", 5.0, 4.97)
    doc = q.report([*refs, other], None, None, figure="fp8_head_loss_rel_diff", references=3)
    assert doc["reference"] == ["bf16-0", "bf16-1", "bf16-2"]
    assert doc["reference_median"]["final_val_loss"] == 4.96  # the outlying 4.89 neither passes nor fails it
    assert doc["reference_spread"]["final_val_loss"] == pytest.approx((4.975 - 4.89) / 4.96, abs=1e-5)
    assert list(doc["comparisons"]) == ["fp8"]
    assert doc["fp8_head_loss_rel_diff"] == pytest.approx(0.01 / 4.96, abs=1e-5)
    assert q.report([refs[0], other], None, None)["comparisons"]["fp8"]["within_1pct"] is False  # one ref: 1.6 %
    assert doc["diverged_references"] == []
    with pytest.raises(SystemExit, match="--references 3"):
        q.report(refs[:2], None, None, references=3)
    (tmp_path / "again").mkdir()
    twin = _metrics(tmp_path / "again" / "bf16-0.jsonl", 5.0, 4.9)
    with pytest.raises(SystemExit, match="file stems"):
        q.report([refs[0], twin, other], None, None, references=2)
