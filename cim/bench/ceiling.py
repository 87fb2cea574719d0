"""The physical limits of Python gRPC on this machine.

Bare grpc.aio services (bytes in, bytes out, no protobuf, no auth, no storage)
run with cim's own server and channel options (`cim.grpcutil`) and cim's event
loop (uvloop when ``use_uvloop``), each server in its own process and the load
in another. cim's benchmark figures are divided by these ceilings, so a ratio
can only improve by improving cim.

Four figures:

- ``unary_ceiling``: echo calls per second with N calls in flight on one channel.
- ``streaming_ceiling``: one server-streaming call pushing payloads as fast as
  the client reads.
- ``relay_ceiling``: a one-hop relay (the essence of a chat server): users hold
  bidi streams to one relay process, which forwards each message to the
  recipient's stream through a bounded per-stream queue with a single writer.
- ``stream_memory_ceiling``: server memory per idle bidi stream, each on its own
  TCP connection, and how fast such streams can be opened.

Each function is synchronous, starts its own processes (``python -m
cim.bench.ceiling serve|load|hold ...``, :class:`cim.bench.child.Child`) on
127.0.0.1, and stops them before it returns, whatever happens.

``python -m cim.bench.ceiling all --duration 3`` prints all of them as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

import grpc

from cim.bench import procstats
from cim.bench.child import Child, emit, exit_on_eof, open_stdin, until_eof, wait_go
from cim.bench.records import (
    CeilingRun,
    Ceilings,
    RelayCeiling,
    StreamingCeiling,
    StreamMemoryCeiling,
    UnaryCeiling,
    WindowUse,
    decode,
)
from cim.bench.stats import percentiles_ms
from cim.grpcutil import CHANNEL_OPTIONS, SERVER_OPTIONS, bind

T = TypeVar("T")
R = TypeVar("R", bound=CeilingRun)
log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVICE = "cim.bench.Ceiling"
KINDS = ("unary", "streaming", "relay", "hold")
_METHODS = {"unary": "Unary", "streaming": "Stream", "relay": "Relay", "hold": "Hold"}

# Channels in one process to the same target share TCP connections through
# gRPC's global subchannel pool; a local pool gives each channel its own
# connection, as separate client processes would have. Otherwise cim's options.
SEPARATE_CONNECTION_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
]

RELAY_STREAMS_PER_CHANNEL = 50
RELAY_QUEUE_BOUND = 10_000  # frames buffered per stream in the relay before it drops
HOLD_BATCH = 500  # idle streams opened at once (grpc-notes: pending-call caps)
HOLD_STREAMS_PER_PROCESS = 5_000
HOLD_SETTLE_S = 0.5  # idle time after the last stream opened, before reading RSS

_MODULE = "cim.bench.ceiling"

# Relay frame: recipient, sender, send time (perf_counter of the load process),
# padded with filler to the payload size.
_RELAY_HEADER = struct.Struct("!IId")


@dataclass(frozen=True)
class CeilingOptions:
    payload_bytes: int = 64
    duration: float = 5.0  # seconds of measurement per figure (after a short warm-up)
    unary_concurrency: int = 64  # calls in flight
    relay_users: int = 200  # streams to the relay, one message in flight per sender
    relay_rate: float = 0.0  # 0: as fast as possible; > 0: fixed total messages/s
    use_uvloop: bool = True

    @property
    def warmup(self) -> float:
        return min(1.0, max(0.2, self.duration / 5))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CeilingOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


# --------------------------------------------------------------------------
# Public API (synchronous; each call starts and stops its own processes)
# --------------------------------------------------------------------------


def unary_ceiling(o: CeilingOptions) -> UnaryCeiling:
    """Echo calls/s with ``unary_concurrency`` calls in flight on one channel."""
    return _measure("unary", o, UnaryCeiling)


def streaming_ceiling(o: CeilingOptions) -> StreamingCeiling:
    """Messages/s of one server-streaming call pushing as fast as the client reads."""
    return _measure("streaming", o, StreamingCeiling)


def relay_ceiling(o: CeilingOptions) -> RelayCeiling:
    """Messages/s and send-to-receive latency through a one-hop relay process.

    ``relay_users`` bidi streams, ``RELAY_STREAMS_PER_CHANNEL`` per channel (one
    TCP connection each). With ``relay_rate`` 0 every user sends to a random other
    user and waits until the recipient received it (one message in flight per
    sender); with ``relay_rate`` > 0 messages are sent at that fixed total rate
    (open loop) from random senders to random recipients.
    """
    if not 2 <= o.relay_users <= RELAY_QUEUE_BOUND:
        # More senders than a queue holds could lose a message and stall its sender.
        raise ValueError(f"relay_users must be between 2 and {RELAY_QUEUE_BOUND}")
    return _measure("relay", o, RelayCeiling)


def stream_memory_ceiling(
    connections: int,
    o: CeilingOptions,
    *,
    batch: int = HOLD_BATCH,
    load_processes: int = 0,
) -> StreamMemoryCeiling:
    """Server RSS per idle bidi stream (own channel and TCP connection each), and
    how fast they open: each of ``load_processes`` (0: one per
    ``HOLD_STREAMS_PER_PROCESS``) opens its share in batches of ``batch``."""
    if connections < 1 or batch < 1:
        raise ValueError("connections and batch must be positive")
    procstats.raise_open_file_limit()
    load_average = os.getloadavg()[0]
    n_loads = load_processes or math.ceil(connections / HOLD_STREAMS_PER_PROCESS)
    n_loads = max(1, min(n_loads, connections))
    shares = [
        connections // n_loads + (1 if i < connections % n_loads else 0) for i in range(n_loads)
    ]
    loop_flag = "--uvloop" if o.use_uvloop else "--no-uvloop"
    with _server("hold", o) as (server, port):
        loads: list[Child] = []
        try:
            for i, share in enumerate(shares):
                args = ["hold", "--port", str(port), "--count", str(share), "--batch", str(batch)]
                loads.append(Child.python(f"hold load {i + 1}", _MODULE, [*args, loop_flag]))
            for load in loads:
                load.expect("ready", time.monotonic() + 30)
            time.sleep(0.2)  # let the server settle after the loads' start-up
            before = procstats.read(server.pid)
            fds_before = _open_fds(server.pid)
            procstats.reset_peak(server.pid)
            for load in loads:
                load.go()
            spans = []
            for load in loads:
                opened = load.expect("open", time.monotonic() + 30 + connections / 100)
                spans.append((float(opened["start"]), float(opened["end"])))
            time.sleep(HOLD_SETTLE_S)
            after = procstats.read(server.pid)
            fds_after = _open_fds(server.pid)
        finally:
            for load in loads:
                load.stop(5.0, grace=2.0)
    opening = max(end for _, end in spans) - min(start for start, _ in spans)
    return StreamMemoryCeiling(
        connections=connections,
        server_rss_kb_before=before.rss_kb,
        server_rss_kb_after=after.rss_kb,
        rss_per_connection_kb=round((after.rss_kb - before.rss_kb) / connections, 2),
        connect_per_s=round(connections / opening, 1) if opening > 0 else 0.0,
        open_seconds=round(opening, 3),
        server_open_fds_added=fds_after - fds_before,
        load_processes=n_loads,
        load_average_1m_at_start=load_average,
        batch=batch,
        processes={
            "server": WindowUse(
                round(after.cpu_seconds - before.cpu_seconds, 3), after.rss_kb, after.peak_rss_kb
            )
        },
    )


def all_ceilings(
    o: CeilingOptions,
    *,
    relay_rate: float = 500.0,
    connections: int | None = 2_000,
    progress: Callable[[str], None] = lambda text: None,
) -> Ceilings:
    """All of them, the relay also at ``relay_rate`` messages/s (relay_fixed)
    and the stream memory with ``connections`` streams (None: not that one).
    A ceiling that fails is recorded in ``failed``; the others still run."""
    jobs: list[tuple[str, str, Callable[[], CeilingRun]]] = [
        ("unary", "unary calls", lambda: unary_ceiling(o)),
        ("streaming", "server-streaming push", lambda: streaming_ceiling(o)),
        ("relay", "stream-to-stream relay", lambda: relay_ceiling(replace(o, relay_rate=0.0))),
        (
            "relay_fixed",
            f"relay at {relay_rate:g}/s",
            lambda: relay_ceiling(replace(o, relay_rate=relay_rate)),
        ),
    ]
    if connections is not None:
        jobs.append(
            (
                "stream_memory",
                f"memory of {connections} idle streams",
                lambda: stream_memory_ceiling(connections, o),
            )
        )
    ceilings = Ceilings(duration=o.duration)
    for key, what, job in jobs:
        progress(f"ceiling: {what}")
        started = time.perf_counter()
        try:
            figures = job()
        except Exception as exc:
            log.exception("ceiling %s failed", key)
            ceilings.failed[key] = f"{type(exc).__name__}: {exc}"
            continue
        figures.wall_s = round(time.perf_counter() - started, 2)
        setattr(ceilings, key, figures)
    return ceilings


def _measure(kind: str, o: CeilingOptions, record: type[R]) -> R:
    procstats.raise_open_file_limit()
    # Other work on the machine lowers every figure: keep a trace of it.
    load_average = os.getloadavg()[0]
    with _server(kind, o) as (server, port):
        args = ["load", kind, "--port", str(port), "--server-pid", str(server.pid)]
        load = Child.python(f"{kind} load", _MODULE, [*args, "--options", o.to_json()])
        try:
            done = load.expect("result", time.monotonic() + o.warmup + o.duration + 30)
        finally:
            load.stop(5.0, grace=3.0)
    result = decode(record, done["result"])
    result.load_average_1m_at_start = load_average
    return result


@contextlib.contextmanager
def _server(kind: str, o: CeilingOptions) -> Iterator[tuple[Child, int]]:
    loop_flag = "--uvloop" if o.use_uvloop else "--no-uvloop"
    server = Child.python(f"{kind} server", _MODULE, ["serve", kind, "--port", "0", loop_flag])
    try:
        port = int(server.expect("port", time.monotonic() + 30)["port"])
        yield server, port
    finally:
        server.stop(5.0, grace=3.0)


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


class _Window:
    """The measurement window: CPU and memory of the server and this (load)
    process over it, and its length."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.open = False
        self._start = self._end = 0.0
        self._before: dict[str, procstats.ProcStats] = {}
        self._after: dict[str, procstats.ProcStats] = {}

    def _pids(self) -> dict[str, int]:
        return {"server": self.server_pid, "load": os.getpid()}

    def begin(self) -> None:
        for pid in self._pids().values():
            procstats.reset_peak(pid)
        self._before = {name: procstats.read(pid) for name, pid in self._pids().items()}
        self._start = time.perf_counter()
        self.open = True

    def end(self) -> None:
        self.open = False
        self._end = time.perf_counter()
        self._after = {name: procstats.read(pid) for name, pid in self._pids().items()}

    @property
    def seconds(self) -> float:
        return self._end - self._start

    def processes(self) -> dict[str, WindowUse]:
        out = {}
        for name, after in self._after.items():
            cpu = after.cpu_seconds - self._before[name].cpu_seconds
            percent = round(100 * cpu / self.seconds, 1) if self.seconds else 0.0
            out[name] = WindowUse(round(cpu, 3), after.rss_kb, after.peak_rss_kb, percent)
        return out


async def _run_window(o: CeilingOptions, window: _Window) -> None:
    await asyncio.sleep(o.warmup)
    window.begin()
    await asyncio.sleep(o.duration)
    window.end()


def _connect(port: int, options: list[tuple[str, int]] = CHANNEL_OPTIONS) -> Any:
    return grpc.aio.insecure_channel(f"{HOST}:{port}", options=options)


def _method(kind: str) -> str:
    return f"/{SERVICE}/{_METHODS[kind]}"


async def _cancel_all(tasks: list[asyncio.Task[Any]], timeout: float = 5.0) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


async def _unary_load(port: int, server_pid: int, o: CeilingOptions) -> UnaryCeiling:
    channel = _connect(port)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.unary_unary(_method("unary"), _registered_method=True)
        payload = b"x" * o.payload_bytes
        window = _Window(server_pid)
        samples: list[float] = []
        clock = time.perf_counter

        async def caller() -> None:
            while True:
                started = clock()
                await call(payload, timeout=10)
                if window.open:
                    samples.append(clock() - started)

        callers = [asyncio.create_task(caller()) for _ in range(o.unary_concurrency)]
        try:
            await _run_window(o, window)
        finally:
            await _cancel_all(callers)
        _raise_failed(callers)
        return UnaryCeiling(
            calls_per_s=round(len(samples) / window.seconds, 1),
            latency_ms=percentiles_ms(samples),
            concurrency=o.unary_concurrency,
            payload_bytes=o.payload_bytes,
            seconds=round(window.seconds, 3),
            processes=window.processes(),
        )
    finally:
        await channel.close()


async def _streaming_load(port: int, server_pid: int, o: CeilingOptions) -> StreamingCeiling:
    channel = _connect(port)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.unary_stream(_method("streaming"), _registered_method=True)(
            b"x" * o.payload_bytes
        )
        window = _Window(server_pid)
        received = 0

        async def reader() -> None:
            nonlocal received
            read, eof = call.read, grpc.aio.EOF
            while await read() is not eof:
                if window.open:
                    received += 1

        task = asyncio.create_task(reader())
        try:
            await _run_window(o, window)
        finally:
            call.cancel()
            await _cancel_all([task])
        _raise_failed([task])
        return StreamingCeiling(
            msgs_per_s=round(received / window.seconds, 1),
            payload_bytes=o.payload_bytes,
            seconds=round(window.seconds, 3),
            processes=window.processes(),
        )
    finally:
        await channel.close()


async def _relay_load(port: int, server_pid: int, o: CeilingOptions) -> RelayCeiling:
    users = o.relay_users
    n_channels = math.ceil(users / RELAY_STREAMS_PER_CHANNEL)
    channels = [_connect(port, SEPARATE_CONNECTION_OPTIONS) for _ in range(n_channels)]
    tasks: list[asyncio.Task[Any]] = []
    calls: list[Any] = []
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), 10
        )
        stubs = [ch.stream_stream(_method("relay"), _registered_method=True) for ch in channels]
        calls = [
            stubs[i // RELAY_STREAMS_PER_CHANNEL](metadata=(("x-user", str(i)),))
            for i in range(users)
        ]
        # The relay greets each stream once it is registered: all can receive.
        await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), 20)

        window = _Window(server_pid)
        samples: list[float] = []
        filler = b"x" * max(0, o.payload_bytes - _RELAY_HEADER.size)
        pack, unpack, clock = _RELAY_HEADER.pack, _RELAY_HEADER.unpack_from, time.perf_counter
        loop = asyncio.get_running_loop()
        delivered: list[asyncio.Future[None] | None] = [None] * users
        sent = 0

        async def receiver(me: int) -> None:
            call = calls[me]
            while True:
                frame = await call.read()
                if frame is grpc.aio.EOF:
                    return
                _to, sender, sent_at = unpack(frame)
                if window.open:
                    samples.append(clock() - sent_at)
                waiter = delivered[sender]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

        def recipient(rnd: random.Random, sender: int) -> int:
            to = rnd.randrange(users - 1)
            return to + 1 if to >= sender else to

        async def closed_loop_sender(me: int) -> None:
            nonlocal sent
            call = calls[me]
            rnd = random.Random(me)
            while True:
                waiter: asyncio.Future[None] = loop.create_future()
                delivered[me] = waiter
                await call.write(pack(recipient(rnd, me), me, clock()) + filler)
                sent += 1
                await waiter

        outboxes: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(users)]

        async def open_loop_writer(me: int) -> None:
            nonlocal sent
            call, outbox = calls[me], outboxes[me]
            while True:
                to = await outbox.get()
                await call.write(pack(to, me, clock()) + filler)
                sent += 1

        async def open_loop_scheduler() -> None:
            rnd = random.Random(users)
            started, scheduled = clock(), 0
            tick = max(0.001, 1 / o.relay_rate)
            while True:
                due = int((clock() - started) * o.relay_rate) - scheduled
                for _ in range(due):
                    sender = rnd.randrange(users)
                    outboxes[sender].put_nowait(recipient(rnd, sender))
                scheduled += max(0, due)
                await asyncio.sleep(tick)

        tasks = [asyncio.create_task(receiver(i)) for i in range(users)]
        if o.relay_rate > 0:
            tasks += [asyncio.create_task(open_loop_writer(i)) for i in range(users)]
            tasks.append(asyncio.create_task(open_loop_scheduler()))
        else:
            tasks += [asyncio.create_task(closed_loop_sender(i)) for i in range(users)]
        sent_at_start = 0
        await asyncio.sleep(o.warmup)
        window.begin()
        sent_at_start = sent
        await asyncio.sleep(o.duration)
        window.end()
        sent_in_window = sent - sent_at_start
        _raise_failed(tasks)
        return RelayCeiling(
            msgs_per_s=round(len(samples) / window.seconds, 1),
            latency_ms=percentiles_ms(samples),
            mode="open loop" if o.relay_rate > 0 else "closed loop, one in flight per sender",
            rate=o.relay_rate,
            latency_from="the sender's write() call to the recipient's read()",
            sent_in_window=sent_in_window,
            received_in_window=len(samples),
            users=users,
            channels=n_channels,
            streams_per_channel=RELAY_STREAMS_PER_CHANNEL,
            tcp_connections=n_channels,
            payload_bytes=max(o.payload_bytes, _RELAY_HEADER.size),
            seconds=round(window.seconds, 3),
            processes=window.processes(),
        )
    finally:
        for call in calls:
            call.cancel()
        await _cancel_all(tasks)
        await asyncio.wait_for(asyncio.gather(*(ch.close() for ch in channels)), 10)


def _raise_failed(tasks: list[asyncio.Task[Any]]) -> None:
    """Re-raises the first error of a load task that ended on its own."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"load task failed: {task.exception()!r}")


_LOADS: dict[str, Callable[[int, int, CeilingOptions], Awaitable[CeilingRun]]] = {
    "unary": _unary_load,
    "streaming": _streaming_load,
    "relay": _relay_load,
}


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


async def _unary_echo(request: bytes, context: Any) -> bytes:
    return request


async def _stream_push(request: bytes, context: Any) -> AsyncIterator[bytes]:
    # A response generator measured at least as fast as a context.write() loop.
    while True:
        yield request


async def _hold(request_iterator: Any, context: Any) -> None:
    await context.write(b"\x01")  # "you are connected", as a login answer would be
    async for _ in request_iterator:
        pass


class _Relay:
    """Forwards each frame to its recipient's stream: one bounded queue and one
    writer (the handler) per stream; the stream's reader only ``put_nowait``s."""

    def __init__(self) -> None:
        self.queues: dict[int, asyncio.Queue[bytes | None]] = {}
        self.dropped = 0

    async def handle(self, request_iterator: Any, context: Any) -> None:
        user = -1
        for key, value in context.invocation_metadata() or ():
            if key == "x-user":
                user = int(value)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(RELAY_QUEUE_BOUND)
        self.queues[user] = queue
        reader = asyncio.create_task(self._forward(request_iterator, queue))
        try:
            await context.write(b"\x01")  # registered: messages for this user arrive
            write, get = context.write, queue.get
            while (frame := await get()) is not None:
                await write(frame)
        finally:
            reader.cancel()
            if self.queues.get(user) is queue:
                del self.queues[user]

    async def _forward(self, request_iterator: Any, own: asyncio.Queue[bytes | None]) -> None:
        queues = self.queues
        try:
            async for frame in request_iterator:
                queue = queues.get(int.from_bytes(frame[:4], "big"))
                if queue is None or queue.full():
                    self.dropped += 1
                else:
                    queue.put_nowait(frame)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                own.put_nowait(None)  # the client closed its side: end the stream


def _handler(kind: str) -> Any:
    if kind == "unary":
        return grpc.unary_unary_rpc_method_handler(_unary_echo)
    if kind == "streaming":
        return grpc.unary_stream_rpc_method_handler(_stream_push)
    if kind == "relay":
        return grpc.stream_stream_rpc_method_handler(_Relay().handle)
    if kind == "hold":
        return grpc.stream_stream_rpc_method_handler(_hold)
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


async def _serve(kind: str, port: int) -> None:
    procstats.raise_open_file_limit()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handlers = {_METHODS[kind]: _handler(kind)}
    # As generated code does: generic, plus registered (faster method look-up).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    bound = bind(server, HOST, port)
    await server.start()
    emit("port", port=bound)
    stdin = await open_stdin()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    eof = asyncio.create_task(until_eof(stdin))
    eof.add_done_callback(lambda _: stop.set())
    await stop.wait()
    loop.call_later(3.0, os._exit, 0)  # backstop: never outlive the parent
    await server.stop(0.2)


async def _load(kind: str, port: int, server_pid: int, o: CeilingOptions) -> None:
    procstats.raise_open_file_limit()
    exit_on_eof(await open_stdin())
    result = await _LOADS[kind](port, server_pid, o)
    emit("result", result=asdict(result))
    _exit_at_once()


async def _hold_load(port: int, count: int, batch_size: int) -> None:
    """Opens ``count`` idle streams, each on its own channel, in batches, when told."""
    procstats.raise_open_file_limit()
    stdin = await open_stdin()
    emit("ready")
    await wait_go(stdin)
    calls: list[Any] = []
    channels: list[Any] = []

    async def open_one() -> None:
        channel = _connect(port, SEPARATE_CONNECTION_OPTIONS)
        channels.append(channel)
        call = channel.stream_stream(_method("hold"), _registered_method=True)()
        calls.append(call)
        if await call.read() is grpc.aio.EOF:
            raise RuntimeError("hold stream ended at once")

    started = time.monotonic()
    for first in range(0, count, batch_size):
        batch = min(batch_size, count - first)
        await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(batch))), 60)
    emit("open", start=started, end=time.monotonic())
    await until_eof(stdin)
    _exit_at_once()


# --------------------------------------------------------------------------
# Child plumbing
# --------------------------------------------------------------------------


def _exit_at_once() -> None:
    sys.stdout.flush()
    os._exit(0)  # skip tearing down thousands of channels one by one


def _run_async(main: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Runs ``main`` on uvloop when asked, as cim's CLI does."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cim.bench.ceiling",
        description="Bare Python gRPC ceilings on this machine, as JSON on stdout.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = CeilingOptions()
    for name in ("all", "unary", "streaming", "relay", "memory"):
        p = sub.add_parser(name)
        p.add_argument("--duration", type=float, default=defaults.duration)
        p.add_argument("--payload-bytes", type=int, default=defaults.payload_bytes)
        p.add_argument("--unary-concurrency", type=int, default=defaults.unary_concurrency)
        p.add_argument("--relay-users", type=int, default=defaults.relay_users)
        p.add_argument(
            "--relay-rate",
            type=float,
            default=500.0 if name == "all" else defaults.relay_rate,
            help="messages/s for the fixed-rate relay run (all) or the relay run (relay)",
        )
        p.add_argument("--connections", type=int, default=2_000)
        p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    serve = sub.add_parser("serve", help="internal: one bare server")
    serve.add_argument("kind", choices=KINDS)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    load = sub.add_parser("load", help="internal: one load process")
    load.add_argument("kind", choices=sorted(_LOADS))
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--server-pid", type=int, required=True)
    load.add_argument("--options", required=True)
    hold = sub.add_parser("hold", help="internal: idle streams for the memory ceiling")
    hold.add_argument("--port", type=int, required=True)
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--batch", type=int, default=HOLD_BATCH)
    hold.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _run_async(_serve(args.kind, args.port), args.uvloop)
        return
    if args.command == "load":
        o = CeilingOptions.from_json(args.options)
        _run_async(_load(args.kind, args.port, args.server_pid, o), o.use_uvloop)
        return
    if args.command == "hold":
        _run_async(_hold_load(args.port, args.count, args.batch), args.uvloop)
        return
    o = CeilingOptions(
        payload_bytes=args.payload_bytes,
        duration=args.duration,
        unary_concurrency=args.unary_concurrency,
        relay_users=args.relay_users,
        relay_rate=args.relay_rate if args.command == "relay" else 0.0,
        use_uvloop=args.uvloop,
    )
    result: Ceilings | CeilingRun
    if args.command == "all":
        result = all_ceilings(o, connections=args.connections, relay_rate=args.relay_rate)
    elif args.command == "unary":
        result = unary_ceiling(o)
    elif args.command == "streaming":
        result = streaming_ceiling(o)
    elif args.command == "relay":
        result = relay_ceiling(o)
    else:
        result = stream_memory_ceiling(args.connections, o)
    print(json.dumps({"options": asdict(o), **asdict(result)}, indent=2))


if __name__ == "__main__":
    main()
