"""Task runs a killed flow-run process left Running are marked Crashed by the next flow run (flows.sweep).

Against the session's real Prefect server (tests/prefect_server.py): the flow runs and
task runs are created through the client in the states a ``kill -9`` leaves behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flows.sweep import crash_abandoned_task_runs

pytestmark = pytest.mark.slow  # starts the session's Prefect server when run alone (~10-30 s)


@pytest.fixture
def client(prefect_api: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as c:
        yield c


def make_run(client: Any, flow_name: str, task_name: str) -> tuple[Any, Any]:
    """A Running flow run with one Running task run, as a flow-run process leaves them when it is killed."""
    from prefect import flow, task
    from prefect.states import Running

    @flow(name=flow_name)
    def a_flow() -> None: ...

    @task(name=task_name)
    def a_task() -> None: ...

    flow_run = client.create_flow_run(a_flow, state=Running())
    task_run = client.create_task_run(a_task, flow_run.id, dynamic_key=uuid.uuid4().hex, state=Running())
    return flow_run, task_run


def state_of(client: Any, task_run: Any) -> str:
    return client.read_task_run(task_run.id).state.type.value


def test_task_runs_of_a_crashed_or_retried_flow_run_are_marked_crashed(client: Any) -> None:
    from prefect.states import Crashed

    crashed_run, orphan = make_run(client, "kiln-pipeline", "pretrain-1")
    client.set_flow_run_state(crashed_run.id, Crashed(message="flow run process exited with -9"), force=True)
    retried_run, earlier_attempt = make_run(client, "kiln-pipeline", "pretrain-2")  # UI Retry: same flow run id
    _, live = make_run(client, "kiln-pipeline", "pretrain-3")  # another run, still going: not ours to judge
    other_crashed, foreign = make_run(client, "someone-elses-flow", "step-1")  # not a kiln flow
    client.set_flow_run_state(other_crashed.id, Crashed(), force=True)
    assert state_of(client, orphan) == "RUNNING"

    marked = crash_abandoned_task_runs(retried_run.id)

    assert {orphan.id, earlier_attempt.id} <= set(marked)
    assert state_of(client, orphan) == state_of(client, earlier_attempt) == "CRASHED"
    assert "abandoned" in client.read_task_run(orphan.id).state.message
    assert state_of(client, live) == "RUNNING" and state_of(client, foreign) == "RUNNING"
    assert not {orphan.id, earlier_attempt.id} & set(crash_abandoned_task_runs(retried_run.id))  # done once


def test_outside_a_flow_run_nothing_is_swept(client: Any) -> None:
    assert crash_abandoned_task_runs() == []
