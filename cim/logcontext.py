"""Who and what a log line is about, for structured logs.

The library never configures logging; it only says, for the code running now,
which user (and which message trace) it works for. A log handler set up by the
CLI (:mod:`cim.cli.logs`) copies these onto each record as ``user_id`` and
``trace_id``. A log call may also pass them itself with ``extra=``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["bound", "current", "trace_id_var", "user_id_var"]

user_id_var: ContextVar[int | None] = ContextVar("cim_user_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("cim_trace_id", default=None)


def current() -> dict[str, object]:
    """The fields known in this context: ``{"user_id": 42}``, ``{}``, ..."""
    fields: dict[str, object] = {}
    if (user_id := user_id_var.get()) is not None:
        fields["user_id"] = user_id
    if (trace_id := trace_id_var.get()) is not None:
        fields["trace_id"] = trace_id
    return fields


@contextlib.contextmanager
def bound(*, user_id: int | None = None, trace_id: str | None = None) -> Iterator[None]:
    """Within the block (and tasks it creates), log lines carry these fields."""
    user_token = user_id_var.set(user_id) if user_id is not None else None
    trace_token = trace_id_var.set(trace_id) if trace_id is not None else None
    try:
        yield
    finally:
        if trace_token is not None:
            trace_id_var.reset(trace_token)
        if user_token is not None:
            user_id_var.reset(user_token)
