"""What ``kiln run`` prints of Prefect's logs: progress lines, not tracebacks of errors we explain ourselves.

    quiet_kiln_errors()     # after Prefect configured logging, before the flow runs (not with --debug)

A stage that fails with a `KilnError` (bad input, bad config: something the user
fixes) ends as one ``kiln: error: …`` line from the CLI. Prefect's engine logs the same
exception before that, with its traceback, twice (``Task run failed with exception``
and the flow's ``Encountered exception during execution``), then repeats the message
in each ``Finished in state Failed(…)`` line: ~170 lines of noise above the one that
matters. This filter, on Prefect's console handler only, drops the records carrying
a `KilnError` and shortens the Failed-state lines that quote one; the API handler is
untouched, so the UI keeps the full record. Any other exception (a bug) passes as is,
traceback included. ``kiln run --debug`` installs nothing.
"""

from __future__ import annotations

import logging

from kiln.errors import KilnError

FAILED_WITH_KILN_ERROR = "KilnError: "


class KilnErrorFilter(logging.Filter):
    """Console filter: no records of a `KilnError` the CLI prints anyway; Failed-state lines without the repeat."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, KilnError):
            return False  # "Task run failed with exception" / "Encountered exception during execution"
        if record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            message = record.getMessage()
            if message.startswith("Finished in state Failed(") and FAILED_WITH_KILN_ERROR in message:
                record.msg, record.args = "Finished in state Failed (the error is below)", None
        return True


def quiet_kiln_errors() -> KilnErrorFilter:
    """Install `KilnErrorFilter` on the root logger's Prefect console handler(s); the filter installed."""
    from prefect.logging.handlers import PrefectConsoleHandler

    flt = KilnErrorFilter()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and flt not in handler.filters:
            handler.addFilter(flt)
    return flt
