"""Read marks from client streams, batched for a route (cim.server.reads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from cim.errors import Unavailable
from cim.proto.internal.v1 import route_internal_pb2
from cim.server.reads import ReadForwarder
from cim.server.routes import RouteLinks


class Routes:
    def __init__(self) -> None:
        self.calls: list[list[tuple[int, str, str, int]]] = []
        self.fail = False

    async def mark_read(self, reads: Sequence[route_internal_pb2.SessionRead]) -> None:
        if self.fail:
            raise Unavailable("MarkRead: no route answered")
        self.calls.append([(r.user_id, r.session_id, r.conversation_id, r.position) for r in reads])


def forwarder() -> tuple[ReadForwarder, Routes]:
    routes = Routes()
    return ReadForwarder(cast(RouteLinks, routes)), routes


async def test_one_flush_carries_the_highest_mark_per_user_and_conversation() -> None:
    reads, routes = forwarder()
    await reads.flush()
    assert routes.calls == []  # nothing to send: no call
    reads.note(1, "s1", "p:1:2", 3)
    reads.note(1, "s1", "p:1:2", 5)
    reads.note(1, "s1", "p:1:2", 4)  # lower: the 5 stands
    reads.note(1, "s1", "g:7", 2)
    reads.note(2, "s2", "p:1:2", 1)
    await reads.flush()
    assert routes.calls == [[(1, "s1", "p:1:2", 5), (1, "s1", "g:7", 2), (2, "s2", "p:1:2", 1)]]
    await reads.flush()
    assert len(routes.calls) == 1


async def test_a_failed_flush_keeps_its_marks_for_the_next() -> None:
    reads, routes = forwarder()
    reads.note(1, "s1", "p:1:2", 3)
    routes.fail = True
    await reads.flush()
    reads.note(1, "s1", "p:1:2", 2)  # meanwhile, a lower one
    routes.fail = False
    await reads.flush()
    assert routes.calls == [[(1, "s1", "p:1:2", 3)]]
