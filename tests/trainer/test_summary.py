"""DONE.json and trainer_state.json as typed records: round trips, and bad files named in the error."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kiln.errors import KilnError
from trainer.state import TrainState
from trainer.summary import DONE_FILE, TrainSummary

SUMMARY = TrainSummary(kind="sft", steps=30, tokens_seen=11520, final_loss=1.25, val_loss=None, best_val_loss=None,
                       elapsed_s=2.5, params=1000, trainable_params=40, world_size=1,
                       checkpoint="checkpoints/step-00000030", lora_rank=8, adapter_dir="adapter")


def test_summary_round_trips_through_done_json(tmp_path):
    path = SUMMARY.write(tmp_path)
    assert path == tmp_path / DONE_FILE
    assert TrainSummary.read(tmp_path) == SUMMARY == TrainSummary.read(path)
    assert json.loads(path.read_text())["final_loss"] == 1.25  # plain JSON for humans and other tools


def test_integer_losses_read_back_as_floats(tmp_path):
    (tmp_path / DONE_FILE).write_text(json.dumps({**dataclasses.asdict(SUMMARY), "final_loss": 2}))
    assert TrainSummary.read(tmp_path).final_loss == 2.0


@pytest.mark.parametrize(("content", "says"), [
    (None, "missing; the training run did not finish"),
    ("{\"steps\": 3", "not a readable training summary"),
    ("[1, 2]", "must be a table"),
    (json.dumps({k: v for k, v in dataclasses.asdict(SUMMARY).items() if k != "steps"}), "steps"),
    (json.dumps({**dataclasses.asdict(SUMMARY), "loss": 1.0}), "unknown key 'loss'"),
    (json.dumps({**dataclasses.asdict(SUMMARY), "steps": "thirty"}), "steps"),
])
def test_a_missing_or_garbled_summary_is_a_kiln_error_naming_the_file(tmp_path, content, says):
    if content is not None:
        (tmp_path / DONE_FILE).write_text(content)
    with pytest.raises(KilnError) as err:
        TrainSummary.read(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / DONE_FILE)) and says in message and "\n" not in message


def test_train_state_round_trips_and_ignores_the_saved_scheduler_step():
    state = TrainState(step=7, tokens_seen=896, elapsed_s=1.5, last_loss=3.0, data={"epoch": 1, "pos": 12})
    state.record_val(2.5)
    state.record_val(2.7)
    assert (state.last_val_loss, state.best_val_loss) == (2.7, 2.5)
    saved = json.loads(json.dumps({**state.to_dict(), "scheduler": {"step": 7}}))  # as in trainer_state.json
    assert TrainState.from_dict(saved) == state
