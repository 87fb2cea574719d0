"""Who and what a log line is about, for structured logs.

The library never configures logging; it only says, for the code running now,
which user (and which message trace) it works for. A log handler set up by the
CLI (:mod:`cim.cli.logs`) copies these onto each record as ``user_id`` and
``trace_id``. A log call may also pass them itself with ``extra=``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

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


class bound:  # lower case: used like the function it was, ``with bound(user_id=42):``
    """Within the block (and tasks it creates), log lines carry these fields.

    A class, not a generator context manager: about 1.2 us for both fields
    (a generator took 1.8 us for one), cheap enough for every group message."""

    __slots__ = ("_trace_id", "_trace_token", "_user_id", "_user_token")

    def __init__(self, *, user_id: int | None = None, trace_id: str | None = None) -> None:
        self._user_id = user_id
        self._trace_id = trace_id
        self._user_token: Token[int | None] | None = None
        self._trace_token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if self._user_id is not None:
            self._user_token = user_id_var.set(self._user_id)
        if self._trace_id is not None:
            self._trace_token = trace_id_var.set(self._trace_id)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._trace_token is not None:
            trace_id_var.reset(self._trace_token)
        if self._user_token is not None:
            user_id_var.reset(self._user_token)
