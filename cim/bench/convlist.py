"""The conversation-list scenario (issue 13): one user with K conversations
reads their list, a page at a time, as a console or an app does.

Set-up (not timed): K + 1 accounts are seeded in Redis, the K others log in
and each sends the user one private message through the route (so every
conversation is made by cim's own send path: the list entries, the
senders' read cursors, the bodies). Then one phase, ``list``: the user calls
``Route.ListConversations`` (the first page, 20 lines) ``calls`` times, one
in flight, and walks the whole list page by page once. Runs in a load
process (``python -m cim.bench.load convlist``): see :mod:`cim.bench.load`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc

from cim.bench.records import ConvListResult
from cim.bench.stats import percentiles_ms
from cim.grpcutil import CHANNEL_OPTIONS, token_metadata
from cim.proto.v1 import common_pb2, route_pb2, route_pb2_grpc

Params = dict[str, Any]

CONVERSATIONS = 200
CALLS = 500
PAGE = 20
NS = 1e-9
RPC_TIMEOUT = 30.0
# Senders logging in and sending at once during the set-up.
SETUP_IN_FLIGHT = 50


class ConvListBench:
    def __init__(self, params: Params, reporter: Any) -> None:
        self.params = params
        self.reporter = reporter
        self.errors: Counter[str] = Counter()

    async def run(self) -> ConvListResult:
        from cim.bench.load import PASSWORD, cpu_seconds, seed_accounts

        count = int(self.params.get("conversations", CONVERSATIONS))
        calls = int(self.params.get("calls", CALLS))
        names = ["lister", *(f"peer-{i}" for i in range(count))]
        ids = await seed_accounts(self.params, names, "cheap")
        channel = grpc.aio.insecure_channel(self.params["route"], options=CHANNEL_OPTIONS)
        route = route_pb2_grpc.RouteStub(channel)
        try:
            lister = await self._login(route, "lister", ids["lister"], PASSWORD)
            await self._make_conversations(route, ids, ids["lister"], PASSWORD)
            await self.reporter.phase("list", "start")
            cpu = cpu_seconds()
            first_page = await self._first_pages(route, lister, calls)
            walk, lines = await self._walk(route, lister)
            cpu = cpu_seconds() - cpu
            await self.reporter.phase("list", "end")
        finally:
            await channel.close()
        return ConvListResult(
            conversations=count,
            listed=lines,
            page=PAGE,
            calls=len(first_page),
            latency_ms=percentiles_ms(first_page, unit=NS),
            walk_pages=len(walk),
            walk_page_latency_ms=percentiles_ms(walk, unit=NS),
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
            load_cpu_s=cpu,
        )

    @staticmethod
    async def _login(
        route: route_pb2_grpc.RouteStub, name: str, user_id: int, password: str
    ) -> tuple[tuple[str, str], ...]:
        reply = await route.Login(
            route_pb2.LoginRequest(user_name=name, password=password, user_id=user_id),
            timeout=RPC_TIMEOUT,
        )
        return token_metadata(reply.session_token)

    async def _make_conversations(
        self, route: route_pb2_grpc.RouteStub, ids: dict[str, int], target: int, password: str
    ) -> None:
        """Each peer logs in and sends the lister one message (then logs out)."""
        peers = [(name, uid) for name, uid in ids.items() if name != "lister"]

        async def one(name: str, user_id: int) -> None:
            try:
                auth = await self._login(route, name, user_id, password)
                await route.SendPrivate(
                    common_pb2.SendPrivateRequest(receiver_id=target, text=f"hello from {name}"),
                    metadata=auth,
                    timeout=RPC_TIMEOUT,
                )
                await route.Logout(route_pb2.LogoutRequest(), metadata=auth, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self.errors[f"set-up {exc.code().name}"] += 1

        for start in range(0, len(peers), SETUP_IN_FLIGHT):
            await asyncio.gather(*(one(*peer) for peer in peers[start : start + SETUP_IN_FLIGHT]))

    async def _first_pages(
        self, route: route_pb2_grpc.RouteStub, auth: tuple[tuple[str, str], ...], calls: int
    ) -> list[int]:
        latencies = []
        request = route_pb2.ListConversationsRequest(limit=PAGE)
        for _ in range(calls):
            started = time.perf_counter_ns()
            try:
                await route.ListConversations(request, metadata=auth, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self.errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter_ns() - started)
        return latencies

    async def _walk(
        self, route: route_pb2_grpc.RouteStub, auth: tuple[tuple[str, str], ...]
    ) -> tuple[list[int], int]:
        """Every page once, newest first: their latencies and the lines seen."""
        latencies: list[int] = []
        request = route_pb2.ListConversationsRequest(limit=PAGE)
        lines = 0
        while True:
            started = time.perf_counter_ns()
            try:
                page = await route.ListConversations(request, metadata=auth, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self.errors[exc.code().name] += 1
                break
            latencies.append(time.perf_counter_ns() - started)
            lines += len(page.conversations)
            if not page.more or not page.conversations:
                break
            last = page.conversations[-1]
            request = route_pb2.ListConversationsRequest(
                before_activity_ms=last.last_activity_ms,
                before_conversation_id=last.conversation_id,
                limit=PAGE,
            )
        return latencies, lines
