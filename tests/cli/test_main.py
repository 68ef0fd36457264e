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


def test_a_control_character_in_kiln_home_is_one_error_line(capsys, monkeypatch, tmp_path):
    from cli.main import main

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "a\x01b"))
    assert main(["artifacts", "ls"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kiln: error: $KILN_HOME contains control character U+0001")
    assert not (tmp_path / "a\x01b").exists()


def test_verify_names_the_damaged_or_added_file(capsys, tmp_path):
    from cli.main import main
    from storage.store import open_store

    store = open_store(tmp_path / "store")
    ref = store.produce("s", "1", {}, [], lambda b: (b.dir / "data.txt").write_text("good"))
    root = ["--root", str(store.root)]
    assert main([*root, "artifacts", "show", f"s/{ref.key}", "--verify"]) == 0
    (ref.path / "extra.txt").write_text("added")
    capsys.readouterr()
    assert main([*root, "artifacts", "show", f"s/{ref.key}", "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "extra.txt: not listed in the manifest" in err
