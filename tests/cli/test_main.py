"""What `kiln run` prints at the end of a run."""

from __future__ import annotations

from cli.main import print_summary


def test_eval_counts_print_as_integers_and_losses_with_four_decimals(capsys):
    # evaluate's eval.json, as the demo writes it
    evaluation = {"model": "dpo/1e7fcd74248c44ab7617", "seq_len": 256, "val_loss": 7.5023274421691895,
                  "val_ppl": 1812.255429487753, "val_tokens": 20480, "sft_val_tokens": 8, "sft_split": "val"}
    print_summary({"stages": {"evaluate": {"state": "Completed", "artifact": "/store/evaluate/k", "key": "k"}},
                   "evaluation": evaluation})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval ")]
    assert lines == ["eval seq_len: 256", "eval val_loss: 7.5023", "eval val_ppl: 1812.2554",
                     "eval val_tokens: 20480", "eval sft_val_tokens: 8"]
