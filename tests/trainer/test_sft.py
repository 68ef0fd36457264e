"""SFT: loss masks, packing without leaks, resumable batches, and real fine-tuning runs (full and LoRA).

Runs use a debug-shaped model whose vocab fits a real chat tokenizer (trained on
gensim's enwiki sample) and the project's demo conversations, through the same
stage that prepares chat data in the pipeline.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.chat import ChatSession
from model import IGNORE_INDEX, Llama, get_preset
from model.loading import load_model
from model.tokenizer import Tokenizer
from tests.trainer.conftest import sft_args, train_losses
from trainer.checkpoint import list_checkpoints
from trainer.loop import EXIT_STOPPED, STOP_ENV
from trainer.metrics import read_metrics
from trainer.sft import main
from trainer.sft_data import ChatDataset, chat_loader, encode_chat, pack_rows, read_split

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, the eternal city."},
]


@pytest.fixture(scope="module")
def tok(chat_tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(chat_tokenizer_dir)


# ---------------------------------------------------------------- masks and packing
def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive positions that carry loss."""
    runs, current = [], []
    for i, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == i
            current.append(i)
    return runs + ([current] if current else [])


def test_only_assistant_replies_and_their_end_token_carry_loss(tok):
    ids, labels = encode_chat(tok, CONVERSATION)
    assert tok.decode(ids) == "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    learned = [tok.decode(run) for run in labelled_runs(ids, labels)]
    assert learned == ["Paris.<|im_end|>", "Rome, the eternal city.<|im_end|>"]
    last_ids, last_labels = encode_chat(tok, CONVERSATION, train_on="last")
    assert last_ids == ids
    assert [tok.decode(r) for r in labelled_runs(last_ids, last_labels)] == ["Rome, the eternal city.<|im_end|>"]


def test_pack_rows_is_a_deterministic_best_fit():
    lengths = [50, 30, 70, 20, 10, 90, 40]
    rows = pack_rows(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 4 and rows == pack_rows(lengths, 100)  # 310 tokens: 4 rows is optimal


def test_packed_conversations_do_not_attend_to_each_other(tok):
    records = [{"messages": CONVERSATION},
               {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
               {"messages": [{"role": "user", "content": "Count to three."},
                             {"role": "assistant", "content": "One, two, three."}]}]
    packed = ChatDataset(records, tok, 128, packing=True)
    alone = ChatDataset(records, tok, 128, packing=False)
    assert len(packed) == 1 and len(alone) == 3
    torch.manual_seed(0)
    model = Llama(get_preset("debug", vocab_size=tok.model_vocab_size)).eval()
    x, y, docs = packed.batch([0])
    assert docs is not None and set(docs[0].tolist()) == {-1, 0, 1, 2}
    with torch.no_grad():
        packed_logits = model(x, doc_ids=docs)[0][0]
        leaky_logits = model(x)[0][0]
        xs, ys, no_docs = alone.batch([0, 1, 2])
        assert no_docs is None
        alone_logits = model(xs)[0]
    at = 0
    for k, (ex, _) in enumerate(alone.examples):  # same order as in the packed row
        n = len(ex)
        assert torch.equal(x[0, at:at + n], xs[k, :n]) and torch.equal(y[0, at:at + n], ys[k, :n])
        torch.testing.assert_close(packed_logits[at:at + n], alone_logits[k, :n], rtol=1e-4, atol=1e-4)
        if k > 0:  # without doc ids the later conversations would see the earlier ones
            assert not torch.allclose(leaky_logits[at:at + n], alone_logits[k, :n], atol=1e-3)
        at += n
    assert (y[0, at:] == IGNORE_INDEX).all() and (ys[ys != IGNORE_INDEX] >= 0).all()


def test_chat_loader_resumes_at_the_same_batch(tok, sft_setup):
    ds = ChatDataset(read_split(sft_setup["data"], "train"), tok, 64, packing=True)
    first = chat_loader(ds, 2, seed=5)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    expected = [next(first)[0] for _ in range(6)]
    resumed = chat_loader(ds, 2, seed=5)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[0], e) for e in expected)
    assert 0.5 < ds.fill <= 1.0


# ---------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def full_run(sft_setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-full")
    torch.set_num_threads(1)
    assert main(sft_args(sft_setup, out)) == 0
    return out


def test_sft_lowers_the_loss_on_assistant_tokens(full_run, tok):
    losses = train_losses(full_run)
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < losses[0] - 2.0  # ln(1024) = 6.9 at init; 30 demo answers are learnable
    val = read_metrics(full_run / "metrics.jsonl", "val")
    assert [m["step"] for m in val] == [10, 20, 30] and val[-1]["val_loss"] < val[0]["val_loss"]
    done = json.loads((full_run / "DONE.json").read_text())
    assert done["kind"] == "sft" and done["steps"] == 30 and done["trainable_params"] == done["params"]
    model, cfg = load_model(full_run)  # final/ + tokenizer/: everything `kiln chat` needs
    assert cfg.vocab_size == tok.model_vocab_size and not model.training
    session = ChatSession(full_run, seed=0)
    reply = "".join(session.reply("What is the capital of France?", max_new_tokens=12, temperature=0))
    assert isinstance(reply, str) and session.messages[-1] == {"role": "assistant", "content": reply}


def test_stop_and_resume_continues_the_same_curve(sft_setup, full_run, tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_ENV, "14")
    assert main(sft_args(sft_setup, tmp_path)) == EXIT_STOPPED
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]
    monkeypatch.delenv(STOP_ENV)
    assert main(sft_args(sft_setup, tmp_path)) == 0
    assert train_losses(tmp_path) == train_losses(full_run)  # exact: data position, RNG and optimizer restored


def test_lora_trains_adapters_only_and_exports_merged_weights(sft_setup, tmp_path):
    torch.set_num_threads(1)
    # The base is random here, so the head needs an adapter too for the loss to move much.
    targets = ("wq", "wv", "w2", "output")
    args = sft_args(sft_setup, tmp_path, "lora.rank=8", "lora.alpha=16", "lora.dropout=0.0", "optim.lr=1e-2",
                    f"lora.targets={json.dumps(list(targets))}", "run.steps=20", "run.val_every=0")
    assert main(args) == 0
    losses = train_losses(tmp_path)
    assert np.mean(losses[-3:]) < losses[0] - 1.0
    done = json.loads((tmp_path / "DONE.json").read_text())
    assert 0 < done["trainable_params"] < done["params"] / 5
    from safetensors.torch import load_file

    wanted = {"layers.0.attention.wq", "layers.1.attention.wq", "layers.0.attention.wv", "layers.1.attention.wv",
              "layers.0.feed_forward.w2", "layers.1.feed_forward.w2", "output"}
    adapter = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert set(adapter) == {f"{name}.lora_{ab}" for name in wanted for ab in "AB"}
    base = load_file(str(sft_setup["base"] / "final" / "model.safetensors"))
    merged = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert set(merged) == set(base)  # a plain Llama again
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {f"{name}.weight" for name in wanted}  # everything else stayed frozen


def test_a_val_split_smaller_than_a_micro_batch_is_still_scored(sft_setup, tok, tmp_path):
    """The demo's chat val split packs into fewer rows than one micro-batch: SFT must still report its val loss."""
    val_rows = len(ChatDataset(read_split(sft_setup["data"], "val"), tok, 96, packing=True))
    assert 0 < val_rows < 8
    args = sft_args(sft_setup, tmp_path, "data.micro_batch_size=8", "run.steps=2", "run.val_every=1",
                    "schedule.warmup_steps=1")
    assert main(args) == 0
    val = read_metrics(tmp_path / "metrics.jsonl", "val")
    assert [m["step"] for m in val] == [1, 2] and all(m["val_loss"] > 0 for m in val)
    assert json.loads((tmp_path / "DONE.json").read_text())["val_loss"] == val[-1]["val_loss"]


def test_fused_loss_counts_only_assistant_tokens_like_the_plain_head(sft_setup, full_run, tmp_path):
    """Prompt tokens are IGNORE_INDEX: the chunked loss (chunks of 100 over 4 x 96 positions) skips them the same."""
    torch.set_num_threads(1)
    assert main(sft_args(sft_setup, tmp_path, "run.fused_loss=true", "run.fused_loss_chunk=100")) == 0
    assert train_losses(tmp_path) == pytest.approx(train_losses(full_run), rel=1e-4)
    assert read_metrics(tmp_path / "metrics.jsonl", "val")[-1]["val_loss"] == pytest.approx(
        read_metrics(full_run / "metrics.jsonl", "val")[-1]["val_loss"], rel=1e-4)


def test_fused_loss_refuses_a_lora_adapted_head(sft_setup, tmp_path, caplog):
    args = sft_args(sft_setup, tmp_path, "lora.rank=4", 'lora.targets=["wq", "output"]', "run.fused_loss=true")
    with caplog.at_level(logging.ERROR, logger="trainer"):
        assert main(args) == 2  # KilnError: one line saying what to change
    assert "run.fused_loss needs a plain output head" in caplog.text
