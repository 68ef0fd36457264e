"""DPO: the loss and log-probs are right, a short run raises the chosen-rejected margin, resume reuses the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.loading import load_model
from model.tokenizer import Tokenizer
from tests.trainer.conftest import dpo_args
from trainer.dpo import REFERENCE_FILE, dpo_loss, main, reference_logps, sequence_logps
from trainer.loop import EXIT_STOPPED, STOP_ENV
from trainer.metrics import read_metrics
from trainer.sft_data import PreferenceDataset, read_split


def test_dpo_loss_at_the_reference_and_its_gradient():
    policy_c = torch.tensor([-3.0, -5.0], requires_grad=True)
    policy_r = torch.tensor([-4.0, -2.0], requires_grad=True)
    loss, stats = dpo_loss(policy_c, policy_r, policy_c.detach(), policy_r.detach(), beta=0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)  # policy == reference: margin 0
    assert stats["reward_margin"].item() == 0 and stats["reward_accuracy"].item() == 0
    loss.backward()
    assert (policy_c.grad < 0).all() and (policy_r.grad > 0).all()  # descent raises chosen, lowers rejected
    loss, stats = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                           beta=0.5)
    assert math.isclose(stats["reward_margin"].item(), 1.0) and stats["reward_accuracy"].item() == 1
    assert math.isclose(loss.item(), -math.log(1 / (1 + math.exp(-1.0))), rel_tol=1e-6)


def test_sequence_logps_sum_only_labelled_tokens():
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[-100, 3, 4, -100, -100], [1, -100, -100, -100, 6]])
    logp = logits.log_softmax(-1)
    want = torch.stack([logp[0, 1, 3] + logp[0, 2, 4], logp[1, 0, 1] + logp[1, 4, 6]])
    torch.testing.assert_close(sequence_logps(logits, targets), want)


def test_pairs_score_only_the_final_reply(dpo_setup, chat_tokenizer_dir):
    tok = Tokenizer.load(chat_tokenizer_dir)
    records = read_split(dpo_setup["data"], "train")
    ds = PreferenceDataset(records, tok, 64)
    x, y, index = ds.batch([0])
    for row, reply in ((0, records[0]["chosen"]), (1, records[0]["rejected"])):
        assert tok.decode(y[row][y[row] != -100].tolist()) == f"{reply}<|im_end|>"
    assert index.tolist() == [0]


@pytest.fixture(scope="module")
def dpo_run(dpo_setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo-run")
    torch.set_num_threads(1)
    assert main(dpo_args(dpo_setup, out)) == 0
    return out


def test_dpo_raises_the_chosen_rejected_margin(dpo_run, dpo_setup, chat_tokenizer_dir):
    train = read_metrics(dpo_run / "metrics.jsonl", "train")
    assert abs(train[0]["reward_margin"]) < 1e-4  # step 1 scores the reference itself
    assert train[-1]["reward_margin"] > 0.5 and train[-1]["reward_accuracy"] > 0.9
    assert train[-1]["loss"] < math.log(2) - 0.2
    val = read_metrics(dpo_run / "metrics.jsonl", "val")
    assert [m["step"] for m in val] == [8, 16] and all("val_reward_accuracy" in m for m in val)
    # Independently of the logs: the exported model prefers the chosen replies more than the reference did.
    model, _ = load_model(dpo_run)
    ds = PreferenceDataset(read_split(dpo_setup["data"], "train"), Tokenizer.load(chat_tokenizer_dir), 64)
    from trainer.dpo import DPOConfig
    from trainer.parallelize import DistEnv

    cfg = DPOConfig()
    policy = reference_logps(model, ds, cfg, DistEnv(0, 0, 1, torch.device("cpu"), "none"))
    ref = torch.load(dpo_run / REFERENCE_FILE, weights_only=True)["train"]
    gain = (policy[:, 0] - policy[:, 1]) - (ref[:, 0] - ref[:, 1])
    assert gain.mean() > 1.0 and (gain > 0).float().mean() > 0.9
    assert json.loads((dpo_run / "DONE.json").read_text())["kind"] == "dpo"


def test_resume_reuses_the_stored_reference(dpo_setup, dpo_run, tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_ENV, "6")
    assert main(dpo_args(dpo_setup, tmp_path)) == EXIT_STOPPED
    reference = (tmp_path / REFERENCE_FILE).read_bytes()
    monkeypatch.delenv(STOP_ENV)
    assert main(dpo_args(dpo_setup, tmp_path)) == 0
    assert (tmp_path / REFERENCE_FILE).read_bytes() == reference
    straight = [m["loss"] for m in read_metrics(dpo_run / "metrics.jsonl", "train")]
    assert [m["loss"] for m in read_metrics(tmp_path / "metrics.jsonl", "train")] == straight


def test_dpo_refuses_the_fp8_head_it_would_not_use():
    from kiln.config import load_config
    from kiln.errors import KilnError
    from trainer.dpo import DPOConfig

    with pytest.raises(KilnError, match=r"DPO does not use.*run\.fp8_head=false"):
        load_config(DPOConfig, None, ["run.precision=fp8-tensorwise", "run.fused_loss=true", "run.fp8_head=true"])
