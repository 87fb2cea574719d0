"""Read marks clients send on their streams, forwarded to a route in batches.

Like acks (``cim.server.acks``): a read cursor only rises, so only the
highest mark per user and conversation matters, and one flush carries one
entry each however many arrived. A flush that fails keeps its marks for the
next one (a mark that never arrives only leaves a conversation unread
longer).
"""

from __future__ import annotations

import logging

from cim.errors import CimError
from cim.proto.internal.v1 import route_internal_pb2
from cim.server.routes import RouteLinks

log = logging.getLogger(__name__)


class ReadForwarder:
    def __init__(self, routes: RouteLinks) -> None:
        self._routes = routes
        # (user id, conversation id) -> (session id, position)
        self._pending: dict[tuple[int, str], tuple[str, int]] = {}

    def note(self, user_id: int, session_id: str, conversation_id: str, position: int) -> None:
        key = (user_id, conversation_id)
        if position > self._pending.get(key, ("", 0))[1]:
            self._pending[key] = (session_id, position)

    async def flush(self) -> None:
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        reads = [
            route_internal_pb2.SessionRead(
                user_id=user_id,
                session_id=session_id,
                conversation_id=conversation_id,
                position=position,
            )
            for (user_id, conversation_id), (session_id, position) in taken.items()
        ]
        try:
            await self._routes.mark_read(reads)
        except CimError as exc:
            log.warning("could not forward %d read marks: %s", len(taken), exc)
            for (user_id, conversation_id), (session_id, position) in taken.items():
                self.note(user_id, session_id, conversation_id, position)
