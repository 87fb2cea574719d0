"""Acks clients send on their streams, forwarded to a route in batches.

Acks are cumulative, so only the highest per session matters: however many
arrive, one flush carries one entry per session. A flush that fails keeps
its acks for the next one (an ack that never arrives only means the inbox
is trimmed later, or the client sees a replayed duplicate it drops).
"""

from __future__ import annotations

import logging

from cim.errors import CimError
from cim.proto.internal.v1 import route_internal_pb2
from cim.server.routes import RouteLinks

log = logging.getLogger(__name__)


class AckForwarder:
    def __init__(self, routes: RouteLinks) -> None:
        self._routes = routes
        self._pending: dict[tuple[int, str], int] = {}

    def note(self, user_id: int, session_id: str, seq: int) -> None:
        key = (user_id, session_id)
        if seq > self._pending.get(key, 0):
            self._pending[key] = seq

    async def flush(self) -> None:
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        acks = [
            route_internal_pb2.SessionAck(user_id=user_id, session_id=session_id, seq=seq)
            for (user_id, session_id), seq in taken.items()
        ]
        try:
            await self._routes.ack(acks)
        except CimError as exc:
            log.warning("could not forward %d acks: %s", len(taken), exc)
            for (user_id, session_id), seq in taken.items():
                self.note(user_id, session_id, seq)
