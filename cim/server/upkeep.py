"""A chat server's periodic work: idle sweeps, session refreshes, ack and read flushes.

The idle sweep sleeps until just after the earliest idle deadline of the
streams held here (at most a sweep interval, so streams that appear meanwhile
are seen): a silent stream ends within a moment of its deadline, not up to a
third of the idle timeout later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from cim.config import ServerConfig
from cim.core.chat_session import SessionInvalid, Tick
from cim.core.liveness import next_sweep_at
from cim.errors import CimError
from cim.proto.v1 import common_pb2
from cim.server.acks import AckForwarder
from cim.server.reads import ReadForwarder
from cim.server.routes import RouteLinks
from cim.server.streams import StreamTable

log = logging.getLogger(__name__)

# Tells the registry how many streams this server holds (least-connected routing).
LoadReport = Callable[[int], Awaitable[None]]


def refresh_interval(configured: float, session_ttl: float | None) -> float:
    """How often to refresh: the configured interval, but well within the
    login-state TTL the routes announced (a third of it)."""
    if session_ttl is None or session_ttl <= 0:
        return configured
    return min(configured, session_ttl / 3)


class Upkeep:
    """Start with :meth:`start`, end with :meth:`stop`; :meth:`sweep` and
    :meth:`refresh` also run on their own (tests, shutdown)."""

    def __init__(
        self,
        config: ServerConfig,
        streams: StreamTable,
        routes: RouteLinks,
        acks: AckForwarder,
        report_load: LoadReport,
        *,
        reads: ReadForwarder | None = None,
    ) -> None:
        self._config = config
        self._streams = streams
        self._routes = routes
        self._acks = acks
        self._reads = reads
        self._report_load = report_load
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def refresh_interval(self) -> float:
        return refresh_interval(self._config.refresh_interval, self._routes.session_ttl)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweeping()),
            asyncio.create_task(_every(lambda: self.refresh_interval, self.refresh)),
            asyncio.create_task(_every(lambda: self._config.ack_interval, self._acks.flush)),
        ]
        if self._reads is not None:  # read marks go at the pace of acks
            self._tasks.append(
                asyncio.create_task(_every(lambda: self._config.ack_interval, self._reads.flush))
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def sweep(self) -> int:
        """Ends the streams silent for longer than the idle timeout; how many."""
        evicted = 0
        for stream in self._streams.streams():
            if stream.closed:
                continue
            stream.handle(Tick())
            if stream.closed:
                evicted += 1
                log.info(
                    "evicting user %s: silent for over %g s",
                    stream.user_id,
                    self._config.heartbeat.idle_timeout,
                )
        return evicted

    async def _sweeping(self) -> None:
        policy = self._config.heartbeat
        while True:
            now = time.monotonic()
            deadlines = (stream.session.idle_deadline for stream in self._streams.streams())
            wake = next_sweep_at((d for d in deadlines if d is not None), now, policy)
            await asyncio.sleep(wake - now)
            try:
                self.sweep()
            except Exception:
                log.exception("idle sweep failed")

    async def refresh(self) -> None:
        """Keeps live sessions' login state fresh at a route (one call for all of
        them) and closes streams whose session has ended elsewhere."""
        live = [stream for stream in self._streams.streams() if not stream.closed]
        await self._report_load(len(live))
        if not live:
            return
        try:
            reply = await self._routes.refresh(
                [common_pb2.SessionRef(user_id=s.user_id, session_id=s.session_id) for s in live]
            )
        except CimError as exc:
            log.warning("session refresh failed: %s", exc.message)
            return
        for ref in reply.invalid:
            stream = self._streams.get(ref.user_id)
            if stream is not None:
                stream.handle(SessionInvalid(ref.session_id))


async def _every(interval: Callable[[], float], work: Callable[[], Awaitable[None]]) -> None:
    # Short naps, so a shorter interval learned meanwhile applies at once.
    last = time.monotonic()
    while True:
        await asyncio.sleep(min(interval(), 0.5))
        if time.monotonic() - last < interval():
            continue
        last = time.monotonic()
        try:
            await work()
        except Exception:
            log.exception("periodic %s failed", getattr(work, "__name__", "work"))
