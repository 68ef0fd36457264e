"""gpu_frontier pairs the right rows: same-batch FP8 vs bf16, untied Kiln vs torchtitan, per seq_len."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_frontier as gf


def kiln(preset, tps, *, mb=8, seq=2048, precision="bf16", mfu=None, tied=None, **extra):
    row = {"system": "kiln", "preset": preset, "micro_batch_size": mb, "seq_len": seq, "precision": precision,
           "tokens_per_s": tps, "mfu": mfu, "peak_mem_gb": 40.0, "compile": True, "fused_loss": False,
           "vocab_size": gf.VOCAB[gf.SHAPE_OF[preset]], "activation_checkpointing": False, **extra}
    if tied is not None:
        row["tie_embeddings"] = tied
    return row


def tt(shape, tps, *, mb=8, seq=2048, precision="bf16"):
    return {"system": "torchtitan 0.2.2", "shape": shape, "micro_batch": mb, "seq_len": seq, "precision": precision,
            "tokens_per_s": tps, "mfu": 0.4, "peak_mem_gb": 50.0, "tied": False, "compile": True,
            "fused_loss": False, "activation_checkpointing": "none", "vocab_size": gf.VOCAB[shape]}


def summary(*raw):
    return gf.summarize([gf.normalize(r) for r in raw])


def test_normalize_maps_kiln_and_runner_keys_to_the_issue_row():
    row = gf.normalize(kiln("llama3-8b", 9000.0, mb=2, seq=4096, mfu=0.41, activation_checkpointing=True))
    assert {k: row[k] for k in gf.ROW_KEYS} == {"system": "kiln", "shape": "8b", "precision": "bf16",
                                                "micro_batch": 2, "seq_len": 4096, "tokens_per_s": 9000.0,
                                                "mfu": 0.41, "peak_mem_gb": 40.0}
    assert row["activation_checkpointing"] == "full"
    assert gf.normalize(kiln("1b", 1.0))["tied"] is True  # Kiln's 1b preset is tied unless the row says not
    assert gf.normalize(kiln("1b", 1.0, tied=False))["tied"] is False
    assert gf.normalize({"system": "litgpt", "version": "0.5.13", "shape": "1b", "batch_size": 8,
                         "precision": "Fabric bf16-mixed (single device, no FSDP)"})["precision"] == "bf16"


def test_fp8_speedup_pairs_the_same_micro_batch_only():
    doc = summary(kiln("1b", 100.0, mb=8), kiln("1b", 90.0, mb=16),
                  kiln("1b", 120.0, mb=8, precision="fp8-rowwise"),
                  kiln("1b", 115.0, mb=8, precision="fp8-tensorwise"),
                  kiln("1b", 200.0, mb=16, precision="fp8-rowwise", fused_loss=True))  # no bf16 fused partner
    assert doc["fp8_speedup_vs_kiln_bf16"] == pytest.approx(1.2)
    assert "fp8-rowwise mb8" in doc["figure_sources"]["fp8_speedup_vs_kiln_bf16"]
    assert doc["goals"]["fp8_speedup_vs_kiln_bf16"]["met"] is True


def test_torchtitan_comparison_uses_untied_kiln_rows_and_its_best_bf16():
    rows = [kiln("1b", 500.0, tied=True), kiln("1b", 130.0, tied=False, precision="fp8-rowwise"),
            tt("1b", 90.0), tt("1b", 100.0, mb=16), tt("1b", 999.0, precision="fp8-rowwise")]
    doc = summary(*rows)
    assert doc["best_1b_speedup_vs_torchtitan_bf16"] == pytest.approx(1.3)  # 130 / 100, the tied 500 ignored
    assert doc["goals"]["best_1b_speedup_vs_torchtitan_bf16"]["met"] is False
    assert summary(kiln("1b", 500.0, tied=True), tt("1b", 100.0))["best_1b_speedup_vs_torchtitan_bf16"] is None


def test_fp8_head_rows_count_for_the_best_1b_only_once_their_loss_is_measured_within_the_goal():
    rows = [gf.normalize(r) for r in (kiln("1b", 130.0, tied=False, precision="fp8-tensorwise"),
                                      kiln("1b", 140.0, tied=False, precision="fp8-tensorwise", fused_loss=True,
                                           fp8_head=True), tt("1b", 100.0))]
    best = "best_1b_speedup_vs_torchtitan_bf16"
    assert gf.summarize(rows)[best] == pytest.approx(1.3)  # no convergence run yet
    assert gf.summarize(rows, {"fp8_head_loss_rel_diff": 0.012})[best] == pytest.approx(1.3)
    doc = gf.summarize(rows, {"fp8_head_loss_rel_diff": 0.004})
    assert doc[best] == pytest.approx(1.4) and "fp8-head" in doc["figure_sources"][best]
    assert doc["fp8_head_loss_rel_diff"] == 0.004 and "fp8_head_loss_rel_diff" not in doc["goals"]


def test_8b_comparison_with_fp32_weights_only_is_reported_beside_the_best():
    rows = [gf.normalize(r) for r in (kiln("llama3.1-8b", 120.0, seq=4096, param_dtype="bfloat16"),
                                      kiln("llama3.1-8b", 96.0, seq=4096), tt("8b", 100.0, seq=4096))]
    doc = gf.summarize(rows, {"bf16_weights_loss_rel_diff": 0.006})
    assert doc["speedup_8b_vs_torchtitan"] == pytest.approx(1.2)
    assert doc["speedup_8b_vs_torchtitan_fp32_weights"] == pytest.approx(0.96)
    assert "speedup_8b_vs_torchtitan_fp32_weights" not in doc["goals"]


def test_8b_figures_compare_within_a_seq_len_and_take_the_smallest():
    doc = summary(kiln("llama3-8b", 110.0, seq=4096, mfu=0.42), kiln("llama3-8b", 60.0, seq=8192, mfu=0.45),
                  kiln("llama3-8b", 140.0, seq=4096, precision="fp8-tensorwise"),
                  tt("8b", 100.0, seq=4096), tt("8b", 50.0, seq=8192), tt("8b", 10.0, seq=2048))
    assert doc["speedup_8b_vs_torchtitan"] == pytest.approx(1.1)  # min(110/100, 60/50)
    assert doc["fp8_speedup_8b"] == pytest.approx(140 / 110)
    assert doc["mfu_8b"] == 0.45


def test_failed_and_off_vocab_rows_are_listed_but_not_counted():
    doc = summary(kiln("125m", 500.0, mfu=0.48), kiln("125m", 600.0, mfu=0.58, vocab_size=32001),
                  {**kiln("125m", 0.0), "error": "OOM: ..."})
    assert doc["mfu_125m"] == 0.48
    assert len(doc["rows"]) == 3 and doc["goals"]["mfu_125m"]["met"] is False
    unmeasured = [k for k in gf.GOALS if k != "mfu_125m"]
    assert all(doc[k] is None and doc["goals"][k]["met"] is None for k in unmeasured)


def test_summarize_cli_reads_reports_runner_rows_ceiling_and_measured_figures(tmp_path):
    report = {"benchmark": "train_throughput", "device": "NVIDIA H200", "torch": "2.11.0+cu130",
              "results": [kiln("1b", 100.0, tied=False), kiln("1b", 118.0, tied=False, precision="fp8-rowwise")]}
    (tmp_path / "kiln_1b_8.json").write_text(json.dumps(report))
    (tmp_path / "tt_1b_8.json").write_text(json.dumps(tt("1b", 80.0)))
    (tmp_path / "ceiling.json").write_text(json.dumps({"benchmark": "matmul_ceiling", "tflops_median": 675.0}))
    (tmp_path / "quality.json").write_text(json.dumps({"fp8_loss_rel_diff": 0.004}))
    out = tmp_path / "gpu_frontier.json"
    assert gf.main(["summarize", str(tmp_path), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert (doc["device"], doc["torch"], doc["matmul_ceiling_tflops"]) == ("NVIDIA H200", "2.11.0+cu130", 675.0)
    assert doc["fp8_speedup_vs_kiln_bf16"] == pytest.approx(1.18)
    assert doc["best_1b_speedup_vs_torchtitan_bf16"] == pytest.approx(118 / 80)
    assert doc["fp8_loss_rel_diff"] == 0.004 and doc["goals"]["fp8_loss_rel_diff"]["met"] is True
    assert len(doc["rows"]) == 3
    assert gf.main(["summarize", str(tmp_path), "--out", str(out)]) == 0  # its own output is not read back
    assert len(json.loads(out.read_text())["rows"]) == 3


def test_results_json_of_several_device_calls_summarize_together(tmp_path):
    """gpu_bench.sh merges a call's JSONs into results.json; two calls' files give one table."""
    first = {"ceiling": {"benchmark": "matmul_ceiling", "tflops_median": 690.0},
             "tt_8b_1_compile": tt("8b", 5000.0, mb=1, seq=4096)}
    second = {"kiln_llama3_8b_1": {"device": "NVIDIA H200", "torch": "2.11.0+cu130",
                                   "results": [kiln("llama3-8b", 5600.0, mb=1, seq=4096, mfu=0.42)]}}
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    rows, extras = gf.load_rows(tmp_path.glob("*.json"))
    doc = gf.summarize(rows, extras)
    assert doc["speedup_8b_vs_torchtitan"] == pytest.approx(1.12) and doc["mfu_8b"] == 0.42
    assert doc["matmul_ceiling_tflops"] == 690.0 and len(doc["rows"]) == 2


def test_an_earlier_frontier_json_carries_its_rows_and_ceiling_into_a_new_summary(tmp_path):
    """Later device calls add rows to an earlier gpu_frontier.json; bf16-weight and every-N-block rows are labeled."""
    earlier = gf.summarize([gf.normalize(tt("8b", 5000.0, mb=1, seq=4096))],
                           {"matmul_ceiling": {"tflops_median": 700.0}, "fp8_loss_rel_diff": 0.004,
                            "bf16_weights_loss_rel_diff": 0.008})
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    new = kiln("llama3.1-8b", 6000.0, mb=1, seq=4096, mfu=0.5, param_dtype="bfloat16", ac_every=2)
    new["activation_checkpointing"] = True
    (tmp_path / "new.json").write_text(json.dumps(new))
    doc = gf.summarize(*gf.load_rows(tmp_path.glob("*.json")))
    assert doc["matmul_ceiling_tflops"] == 700.0 and doc["fp8_loss_rel_diff"] == 0.004
    assert doc["speedup_8b_vs_torchtitan"] == pytest.approx(1.2) and len(doc["rows"]) == 2
    assert "ac=every2" in doc["figure_sources"]["mfu_8b"] and "bf16-weights" in doc["figure_sources"]["mfu_8b"]


def test_bf16_weights_loss_is_carried_without_a_goal_and_compile_modes_do_not_pair(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps({"bf16_weights_loss_rel_diff": 0.0138}))
    (tmp_path / "r.json").write_text(json.dumps({"benchmark": "train_throughput", "results": [
        kiln("1b", 100.0), kiln("1b", 150.0, precision="fp8-tensorwise", compile_mode="max-autotune-no-cudagraphs"),
        kiln("1b", 120.0, precision="fp8-tensorwise", fused_loss_chunk=16384)]}))
    rows, extras = gf.load_rows(tmp_path.glob("*.json"))
    doc = gf.summarize(rows, extras)
    assert doc["bf16_weights_loss_rel_diff"] == 0.0138 and "bf16_weights_loss_rel_diff" not in doc["goals"]
    assert doc["fp8_speedup_vs_kiln_bf16"] == pytest.approx(1.2)  # the max-autotune row has no default partner
    assert "chunk16384" in doc["figure_sources"]["fp8_speedup_vs_kiln_bf16"]


def test_quality_gate_keeps_rows_whose_loss_cost_is_unmeasured_or_over_1_percent_out_of_the_goal_figures():
    """bf16 weights (stochastic, Kahan) and the FP8 head count only with a measured loss within 1 %."""
    rows = [gf.normalize(r) for r in (
        kiln("llama3.1-8b", 7000.0, mb=1, seq=4096, mfu=0.36),
        kiln("llama3.1-8b", 11000.0, mb=2, seq=4096, mfu=0.56, param_dtype="bfloat16"),
        kiln("llama3.1-8b", 10000.0, mb=2, seq=4096, mfu=0.52, param_dtype="bfloat16", bf16_update="kahan"),
        kiln("llama3.1-8b", 13000.0, mb=2, seq=4096, precision="fp8-tensorwise", param_dtype="bfloat16"),
        tt("8b", 7500.0, seq=4096))]
    measured = {"bf16_weights_loss_rel_diff": 0.014, "kahan_weights_loss_rel_diff": 0.005}
    doc = gf.summarize(rows, measured)
    assert doc["mfu_8b"] == pytest.approx(0.52) and "kahan" in doc["figure_sources"]["mfu_8b"]
    assert doc["speedup_8b_vs_torchtitan"] == pytest.approx(10000 / 7500)
    # FP8 over bf16 pairs the same weight handling (stochastic with stochastic) and is not gated
    assert doc["fp8_speedup_8b"] == pytest.approx(13000 / 11000)
    assert doc["fp8_speedup_8b_quality_gated"] is None  # no FP8 row with passing weights
    assert gf.summarize(rows)["mfu_8b"] == pytest.approx(0.36)  # nothing measured: fp32 weights only
    assert gf.quality_ok(rows[1], {"bf16_weights_loss_rel_diff": 0.009})


def test_the_fp8_head_with_kahan_weights_counts_only_once_the_two_ran_together_within_1_percent():
    row = gf.normalize(kiln("llama3.1-8b", 15000.0, mb=2, seq=4096, precision="fp8-tensorwise", fused_loss=True,
                            fp8_head=True, param_dtype="bfloat16", bf16_update="kahan"))
    alone = {"fp8_head_loss_rel_diff": 0.002, "kahan_weights_loss_rel_diff": 0.005}  # each passes by itself
    assert not gf.quality_ok(row, alone)
    assert not gf.quality_ok(row, {**alone, "fp8_head_kahan_loss_rel_diff": 0.011})
    assert gf.quality_ok(row, {**alone, "fp8_head_kahan_loss_rel_diff": 0.003})
    assert not gf.quality_ok(row, {"fp8_head_kahan_loss_rel_diff": 0.003})  # and each alone still counts
    bf16 = gf.normalize(kiln("llama3.1-8b", 11000.0, mb=2, seq=4096, param_dtype="bfloat16", bf16_update="kahan"))
    doc = gf.summarize([row, bf16], {**alone, "fp8_head_kahan_loss_rel_diff": 0.003})
    assert doc["fp8_speedup_8b_quality_gated"] == pytest.approx(15000 / 11000)
    assert doc["fp8_head_kahan_loss_rel_diff"] == 0.003


def test_fp8_against_torchtitans_float8_pairs_untied_fp8_rows_only():
    doc = summary(kiln("1b", 95.0, precision="fp8-tensorwise"),  # tied: torchtitan's llama3 is untied
                  kiln("1b", 90.0, precision="fp8-tensorwise", tied=False), kiln("1b", 99.0, tied=False),
                  tt("1b", 70.0, precision="fp8-tensorwise"), tt("1b", 60.0),
                  kiln("llama3.1-8b", 15.0, seq=4096, precision="fp8-tensorwise"), tt("8b", 8.0, seq=4096))
    assert doc["fp8_1b_speedup_vs_torchtitan_fp8"] == pytest.approx(90 / 70)
    assert doc["fp8_8b_speedup_vs_torchtitan_fp8"] is None  # torchtitan's 8B float8 row is missing
    doc = summary(kiln("llama3.1-8b", 15.0, seq=4096, precision="fp8-tensorwise"),
                  tt("8b", 8.0, seq=4096, precision="fp8-tensorwise"))
    assert doc["fp8_8b_speedup_vs_torchtitan_fp8"] == pytest.approx(15 / 8)


def test_a_measurement_json_beats_the_figure_an_earlier_frontier_carries_whatever_the_file_order(tmp_path):
    earlier = gf.summarize([gf.normalize(tt("1b", 100.0))], {"fp8_head_loss_rel_diff": 0.02})
    for name in ("a_frontier.json", "z_frontier.json"):  # read before and after the measurement's file
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text(json.dumps(earlier))
        (folder / "m_fp8_head_quality.json").write_text(json.dumps({"fp8_head_loss_rel_diff": 0.002}))
        assert gf.summarize(*gf.load_rows(sorted(folder.glob("*.json"))))["fp8_head_loss_rel_diff"] == 0.002


def test_fp8_speedups_take_the_fastest_bf16_partner_and_pair_weight_handling():
    doc = summary(kiln("1b", 120.0, precision="fp8-tensorwise"), kiln("1b", 100.0), kiln("1b", 80.0),  # a slow repeat
                  kiln("llama3.1-8b", 130.0, seq=4096, precision="fp8-tensorwise", param_dtype="bfloat16",
                       bf16_update="kahan"),
                  kiln("llama3.1-8b", 100.0, seq=4096, param_dtype="bfloat16", bf16_update="kahan"),
                  kiln("llama3.1-8b", 150.0, seq=4096, precision="fp8-tensorwise", param_dtype="bfloat16"),
                  kiln("llama3.1-8b", 140.0, seq=4096, param_dtype="bfloat16"))
    assert doc["fp8_speedup_vs_kiln_bf16"] == pytest.approx(1.2)  # 120 / 100, not 120 / 80
    assert doc["fp8_speedup_8b"] == pytest.approx(1.3)  # Kahan with Kahan; stochastic's 150 / 140 is less
    gated = gf.summarize([gf.normalize(r) for r in (
        kiln("llama3.1-8b", 115.0, seq=4096, precision="fp8-tensorwise", param_dtype="bfloat16", bf16_update="kahan"),
        kiln("llama3.1-8b", 100.0, seq=4096, param_dtype="bfloat16", bf16_update="kahan"),
        kiln("llama3.1-8b", 150.0, seq=4096, precision="fp8-tensorwise", param_dtype="bfloat16"),
        kiln("llama3.1-8b", 120.0, seq=4096, param_dtype="bfloat16"))],
        {"bf16_weights_loss_rel_diff": 0.014, "kahan_weights_loss_rel_diff": 0.005})
    assert gated["fp8_speedup_8b"] == pytest.approx(1.25)  # stochastic's, with its loss cost on both sides
    assert gated["fp8_speedup_8b_quality_gated"] == pytest.approx(1.15)  # Kahan's


def test_rows_without_fsdp_say_so_and_pair_only_with_their_own_kind():
    doc = summary(kiln("1b", 130.0, precision="fp8-tensorwise", parallel="none"), kiln("1b", 100.0),
                  kiln("1b", 110.0, parallel="none"), kiln("1b", 115.0, precision="fp8-tensorwise", parallel="fsdp"))
    assert doc["fp8_speedup_vs_kiln_bf16"] == pytest.approx(130 / 110)  # not 130 / 100
    assert "parallel=none" in doc["figure_sources"]["fp8_speedup_vs_kiln_bf16"]
    assert {r.get("parallel") for r in doc["rows"]} == {"none", None}  # fsdp is the default, left unsaid
    eight = summary(kiln("llama3.1-8b", 150.0, seq=4096, precision="fp8-tensorwise", parallel="none"),
                    kiln("llama3.1-8b", 100.0, seq=4096), kiln("llama3.1-8b", 120.0, seq=4096, parallel="none"))
    assert eight["fp8_speedup_8b"] == pytest.approx(1.25)  # against the no-FSDP bf16 row, not the FSDP one


def test_rows_keep_the_pipelined_rate_and_allocator_figures_when_reported():
    row = gf.normalize(kiln("125m", 100.0, tokens_per_s_pipelined=101.0, alloc_retries=0, peak_reserved_gb=58.4))
    assert (row["tokens_per_s_pipelined"], row["alloc_retries"], row["peak_reserved_gb"]) == (101.0, 0, 58.4)
    assert "alloc_retries" not in gf.normalize(kiln("125m", 100.0))
