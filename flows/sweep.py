"""Task runs left "Running" by a dead process are marked Crashed when the next flow run starts.

    crash_abandoned_task_runs()   # first thing in every kiln flow run (flows.dag.run_dag)

Why: when a flow-run process is killed (``kill -9``, OOM, a lost node), the worker marks
the *flow* run Crashed, but its task runs stay Running (or Pending) in the UI forever:
nobody is left to report their end. Two kinds are certainly abandoned:

- task runs of *this* flow run, found before any of its tasks started: a UI "Retry"
  reuses the flow-run id, so these are the crashed attempt's;
- task runs of a kiln flow run that is already over (Crashed, Failed, Cancelled, Completed).

Both are set to Crashed (forced: the orchestration rules would refuse a transition
not made by the run itself). Housekeeping only: if the API says no, the run goes on
with one warning line.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

log = logging.getLogger("kiln.sweep")
LIMIT = 200  # per query; the next flow run sweeps whatever is left
FLOW_PREFIX = "kiln-"  # only kiln's own flows' task runs are touched (a shared server may run others)


def crash_abandoned_task_runs(flow_run_id: UUID | None = None) -> list[UUID]:
    """Mark abandoned task runs Crashed (see module doc); the ids marked. `flow_run_id`: the current run's."""
    from prefect.context import FlowRunContext

    if flow_run_id is None:
        ctx = FlowRunContext.get()
        if ctx is None or ctx.flow_run is None:
            return []  # not inside a flow run: nothing is ours to judge
        flow_run_id = UUID(str(ctx.flow_run.id))
    try:
        return _sweep(flow_run_id)
    except Exception as exc:  # noqa: BLE001 -- housekeeping must not fail the run
        log.warning("could not mark abandoned task runs Crashed: %s: %s", type(exc).__name__, exc)
        return []


def _sweep(flow_run_id: UUID) -> list[UUID]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
        any_=[StateType.RUNNING, StateType.PENDING])))
    over = [StateType.CRASHED, StateType.FAILED, StateType.CANCELLED, StateType.COMPLETED]
    with get_client(sync_client=True) as client:
        found: dict[UUID, tuple[Any, str]] = {}
        for run in client.read_task_runs(task_run_filter=unfinished, limit=LIMIT,
                                         flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))):
            found[run.id] = (run, "an earlier attempt of this flow run")
        ended = client.read_task_runs(
            task_run_filter=unfinished, limit=LIMIT, flow_filter=FlowFilter(name=FlowFilterName(like_=FLOW_PREFIX)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=over))))
        for run in ended:
            found.setdefault(run.id, (run, "its flow run, which has ended"))
        for run, owner in found.values():
            message = f"abandoned: the process running it died with {owner}; marked Crashed by flow run {flow_run_id}"
            client.set_task_run_state(run.id, Crashed(message=message), force=True)
            _logger().info("task run %s (%s) was %s: marked Crashed", run.name, run.id, run.state_name)
    return list(found)


def _logger() -> Any:
    """The flow run's logger (shows in the UI) inside a run, else plain logging."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
