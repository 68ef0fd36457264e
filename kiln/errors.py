"""The exception types Kiln raises for problems a user can fix, and which failures are worth retrying.

A `KilnError` message is a single line that names the file (or config key) at
fault and says what to do about it; the CLI prints it without a traceback.

Retrying is for failures that may go away by themselves (a network error, a server's
5xx or 429, a timeout, a reset connection): `is_transient` says which. Everything else
is deterministic (a missing file, a bad config, malformed data, a checksum mismatch
after a complete download) and fails at once: trying again would fail the same way.
"""

from __future__ import annotations

import errno


class KilnError(RuntimeError):
    """A user-fixable problem: bad input file, wrong config, missing artifact, full disk."""


class TransientError(KilnError):
    """A failure that may succeed if tried again later (network, server overload); the stage may be retried."""


# HTTP statuses a server sends for a passing condition: timeout, too many requests, its own errors.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# OSError errnos of network trouble that may clear up (not: ENOENT, EACCES, ENOSPC... a user fixes those).
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EAGAIN,
})


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth retrying.

    True for `TransientError`; for an HTTP error with status 408, 425, 429 or 5xx; for
    timeouts, connection errors (reset, refused, aborted, broken pipe) and other network
    `OSError`s (unreachable host or network, a temporary DNS failure); for an HTTP response
    cut short (`http.client.IncompleteRead`, `RemoteDisconnected`); and for a `URLError`
    whose reason is one of those or a plain message. False for everything else, notably
    any other `KilnError`, HTTP 4xx, and file-system errors (not found, permission, disk full).
    """
    import http.client  # here, not at the top: every module imports this one, few call this
    import socket
    import urllib.error

    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, KilnError):
        return False
    if isinstance(exc, urllib.error.HTTPError):  # before URLError and OSError: it is both
        return exc.code in TRANSIENT_HTTP or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return is_transient(reason) if isinstance(reason, BaseException) else True
    if isinstance(exc, (TimeoutError, ConnectionError, http.client.IncompleteRead, http.client.BadStatusLine)):
        return True
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"; a typo'd host is not
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return False
