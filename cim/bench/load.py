"""The load generator: one scenario against a running cluster, in its own process.

    python -m cim.bench.load private|group|connections|login|convlist|groups|history --params JSON

It talks to the cluster with raw stubs: one channel to the route shared by all
users (Login, and the unary send path), and for each user its own channel (its
own TCP connection) to its chat server with its own Chat stream. Accounts are
written straight into Redis through cim's store before the scenario starts, so
set-up does not pay a password hash per user (see ``hash`` in the params).

Events for the harness (the protocol of :mod:`cim.bench.child`):
    {"event": "phase", "name": ..., "state": "start"|"end"}   then waits for go
    {"event": "ready", "alive": N, ...}  (connections: all joined) then waits for go
    {"event": "result", "result": {...}}                        the last one
Without ``"interactive": true`` in the params it does not wait (for use by hand).
Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

import grpc

from cim.bench import procstats
from cim.bench.child import emit, open_stdin, wait_go
from cim.bench.records import (
    ConnectionsPart,
    FanOut,
    GroupResult,
    GroupRound,
    HashParams,
    Joined,
    LoadRun,
    LoginResult,
    LoginStorm,
    MessagePath,
    MessagePhase,
    PrivateResult,
)
from cim.bench.stats import percentiles_ms
from cim.client.client import ACK_INTERVAL
from cim.core.passwords import ScryptParams, hash_password
from cim.grpcutil import CHANNEL_OPTIONS, token_metadata
from cim.proto.v1 import chat_pb2, chat_pb2_grpc, common_pb2, route_pb2, route_pb2_grpc

log = logging.getLogger("cim.bench.load")

SCENARIOS = ("private", "group", "connections", "login", "convlist", "groups", "history")
PASSWORD = "bench-password"
# How long one message may take before it counts as lost.
MESSAGE_TIMEOUT = 5.0
RPC_TIMEOUT = 30.0
# Each user's own TCP connection: channels with equal arguments otherwise share one.
USER_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
]
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
NS = 1e-9  # latencies are perf_counter_ns() differences

Params = dict[str, Any]


# --- helpers ---------------------------------------------------------------------
def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Reporter:
    """Events for the harness (:mod:`cim.bench.child`); in interactive mode it
    waits for the harness's go after each."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._stdin: asyncio.StreamReader | None = None

    async def emit(self, event: str, wait: bool = True, **fields: Any) -> None:
        emit(event, **fields)
        if wait and self.interactive:
            if self._stdin is None:
                self._stdin = await open_stdin()
            await wait_go(self._stdin)

    async def phase(self, name: str, state: str) -> None:
        await self.emit("phase", name=name, state=state)


async def seed_accounts(params: Params, names: Sequence[str], hash_kind: str) -> dict[str, int]:
    """Creates the accounts in Redis (cim's store) with one shared password hash;
    returns name -> user id. ``hash_kind``: "default" (cim's scrypt parameters,
    what a registered user has) or "cheap" (scrypt n=2^8, the test suites')."""
    from cim.store.redis import RedisStore

    scrypt = ScryptParams() if hash_kind == "default" else ScryptParams.for_tests()
    password_hash = await asyncio.to_thread(hash_password, PASSWORD, scrypt)
    from cim.errors import Unavailable

    store = RedisStore.from_url(params["redis_url"], params["redis_prefix"], max_connections=16)
    ids: dict[str, int] = {}

    async def create(name: str) -> None:
        # Creating an existing account again returns it: retrying is safe.
        for attempt in range(5):
            try:
                account, _ = await store.create_account(name, password_hash)
            except Unavailable as exc:
                log.warning("seeding %s: %s (attempt %d)", name, exc.message, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            ids[name] = account.user_id
            return
        raise RuntimeError(f"could not create the account {name} in Redis")

    try:
        for start in range(0, len(names), 200):
            await asyncio.gather(*(create(name) for name in names[start : start + 200]))
    finally:
        await store.aclose()
    return ids


# --- users ----------------------------------------------------------------------
class StreamRefused(RuntimeError):
    """The chat server answered the stream's login frame with a notice."""


FrameHandler = Callable[["User", chat_pb2.ServerFrame], None]


@dataclass(eq=False)
class User:
    name: str
    user_id: int
    token: str = ""
    server_address: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    channel: grpc.aio.Channel | None = None
    call: Any = None
    reader: asyncio.Task[None] | None = None
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_sent: float = 0.0
    # The highest seq received and the last one acked: users ack as CimClient does.
    through: int = 0
    acked: int = 0

    async def login(self, route: route_pb2_grpc.RouteStub) -> None:
        reply = await route.Login(
            route_pb2.LoginRequest(user_name=self.name, password=PASSWORD, user_id=self.user_id),
            timeout=RPC_TIMEOUT,
        )
        self.token = reply.session_token
        self.server_address = reply.server.address
        self.metadata = token_metadata(self.token)

    async def connect(self, channel: grpc.aio.Channel, on_frame: FrameHandler) -> None:
        """Opens the user's Chat stream on ``channel``; returns after LoginOk."""
        self.channel = channel
        self.call = chat_pb2_grpc.ChatStub(channel).Connect()
        await self.write(
            chat_pb2.ClientFrame(
                login=chat_pb2.LoginFrame(user_id=self.user_id, session_token=self.token)
            )
        )
        first = await asyncio.wait_for(self.call.read(), RPC_TIMEOUT)
        if first is grpc.aio.EOF or first.WhichOneof("frame") != "login_ok":
            detail = "" if first is grpc.aio.EOF else first.notice.text
            raise StreamRefused(detail or "stream closed")
        self.reader = asyncio.create_task(self._read(on_frame))

    async def _read(self, on_frame: FrameHandler) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while (frame := await self.call.read()) is not grpc.aio.EOF:
                if frame.message.seq > self.through:
                    self.through = frame.message.seq
                on_frame(self, frame)

    async def write(self, frame: chat_pb2.ClientFrame) -> None:
        async with self.write_lock:
            await self.call.write(frame)
            self.last_sent = time.monotonic()

    @property
    def alive(self) -> bool:
        """Its stream is open (not ended by the server or the network)."""
        return self.reader is not None and not self.reader.done()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.call is not None:
            self.call.cancel()


class Population:
    """The users of a scenario: seeded, logged in, connected; heartbeats on.

    ``streams_per_channel`` users of one chat server share a channel (one TCP
    connection); 1 gives every user a connection of its own."""

    def __init__(self, params: Params, prefix: str, count: int, on_frame: FrameHandler) -> None:
        self.params = params
        self.names = [f"{prefix}-{i}" for i in range(count)]
        self.on_frame = on_frame
        self.users: list[User] = []
        self.route_channel = grpc.aio.insecure_channel(params["route"], options=CHANNEL_OPTIONS)
        self.route = route_pb2_grpc.RouteStub(self.route_channel)
        self.connect_ns: list[int] = []
        self.errors: Counter[str] = Counter()
        self.pings = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._seeded: list[User] = []
        self.streams_per_channel = max(1, int(params.get("streams_per_channel", 1)))
        self._channels: dict[str, list[tuple[grpc.aio.Channel, int]]] = {}

    async def seed(self) -> None:
        """Creates the accounts (not timed: set-up)."""
        ids = await seed_accounts(self.params, self.names, self.params.get("hash", "cheap"))
        self._seeded = [User(name, ids[name]) for name in self.names]

    async def start(self, batch: int = 200) -> None:
        """Logs every user in and connects it, ``batch`` at a time."""
        if not self._seeded:
            await self.seed()
        users, self._seeded = self._seeded, []
        # Heartbeats from the start: a long ramp must not let early streams go idle.
        self._heartbeat = asyncio.create_task(self._keep_alive())
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            outcomes = await asyncio.gather(*(self._join(user) for user in chunk))
            self.users += [user for user, ok in zip(chunk, outcomes, strict=True) if ok]

    async def _join(self, user: User) -> bool:
        started = time.perf_counter_ns()
        try:
            await user.login(self.route)
            await user.connect(self._channel_for(user.server_address), self.on_frame)
        except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as exc:
            self.errors[error_name(exc)] += 1
            log.warning("user %s could not join: %s", user.name, exc)
            user.close()
            return False
        self.connect_ns.append(time.perf_counter_ns() - started)
        return True

    async def _keep_alive(self) -> None:
        """Each user acks what it received every ACK_INTERVAL and pings after
        ping_interval seconds of silence, as CimClient does."""
        interval = float(self.params.get("ping_interval", 10.0))
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            now = time.monotonic()
            for user in self.users:
                if user.call is not None and user.through > user.acked:
                    through = user.through
                    ack = chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=through))
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await user.write(ack)
                        user.acked = through
                if user.call is not None and now - user.last_sent >= interval:
                    ping = chat_pb2.ClientFrame(
                        ping=chat_pb2.Ping(client_time_ms=time.time_ns() // 1_000_000)
                    )
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await user.write(ping)
                        self.pings += 1

    def _channel_for(self, address: str) -> grpc.aio.Channel:
        """A channel to ``address`` with room for one more stream."""
        channels = self._channels.setdefault(address, [])
        if not channels or channels[-1][1] >= self.streams_per_channel:
            channel = grpc.aio.insecure_channel(address, options=USER_CHANNEL_OPTIONS)
            channels.append((channel, 0))
        channel, streams = channels[-1]
        channels[-1] = (channel, streams + 1)
        return channel

    def channel_count(self) -> int:
        return sum(len(channels) for channels in self._channels.values())

    def alive(self) -> int:
        """Users whose stream is still open."""
        return sum(1 for user in self.users if user.alive)

    def servers(self) -> dict[str, int]:
        """Users per chat server address."""
        return dict(Counter(user.server_address for user in self.users))

    def joined(self) -> Joined:
        return Joined(
            users=len(self.users),
            join_errors=dict(self.errors),
            servers=self.servers(),
            streams_per_channel=self.streams_per_channel,
            tcp_connections=self.channel_count(),
        )

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for user in self.users:
            user.close()
        channels = [channel for group in self._channels.values() for channel, _ in group]
        for start in range(0, len(channels), 500):
            await asyncio.gather(*(channel.close() for channel in channels[start : start + 500]))
        await self.route_channel.close()


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name)
    if isinstance(exc, StreamRefused):
        return f"stream refused: {str(exc)[:80]}"
    return type(exc).__name__


# --- scenario 1: private messages ---------------------------------------------------
@dataclass
class Phase:
    name: str
    latencies_ns: list[int] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    cpu: float = 0.0
    pacer_late_ms: float = 0.0

    def result(self, rate: float | None = None) -> MessagePhase:
        return MessagePhase(
            msgs_per_s=self.received / self.elapsed if self.elapsed else 0.0,
            sent=self.sent,
            received=self.received,
            elapsed_s=self.elapsed,
            latency_ms=percentiles_ms(self.latencies_ns, unit=NS),
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
            load_cpu_s=self.cpu,
            pacer_late_ms=self.pacer_late_ms,
            rate=rate,
        )


SendFn = Callable[["User", "User", int, str], Awaitable[None]]


class _Counted(Exception):
    """A failed message whose error is already counted."""


class PrivateBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter
        self.rng = random.Random(params.get("seed", 1))
        self.payload = int(params.get("payload_bytes", 64))
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.tags = itertools.count(1)
        self.phase = Phase("setup")
        self.population = Population(params, "pv", int(params.get("users", 200)), self.on_frame)

    def on_frame(self, user: User, frame: chat_pb2.ServerFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "message":
            now = time.perf_counter_ns()
            tag_text, _, rest = frame.message.text.partition(" ")
            future = self.pending.pop(int(tag_text), None)
            if future is None or future.done():
                self.phase.errors["late"] += 1
                return
            self.phase.latencies_ns.append(now - int(rest.partition(" ")[0]))
            self.phase.received += 1
            future.set_result(None)
        elif kind == "send_result":
            result = frame.send_result
            if result.WhichOneof("outcome") == "error":
                self._fail(result.correlation_id, f"send:{result.error.code}")
            elif result.ok.status != DELIVERED:
                self._fail(result.correlation_id, "stored")
        elif kind == "notice":
            self.phase.errors[f"notice:{frame.notice.kind}"] += 1

    def _fail(self, tag: int, why: str) -> None:
        self.phase.errors[why] += 1
        future = self.pending.pop(tag, None)
        if future is not None and not future.done():
            future.set_exception(_Counted(why))

    def _text(self, tag: int) -> str:
        text = f"{tag} {time.perf_counter_ns()} "
        return text + "x" * max(1, self.payload - len(text))

    async def send_stream(self, sender: User, receiver: User, tag: int, text: str) -> None:
        await sender.write(
            chat_pb2.ClientFrame(
                send=chat_pb2.SendFrame(
                    correlation_id=tag,
                    private=common_pb2.SendPrivateRequest(
                        receiver_id=receiver.user_id, text=text, client_msg_id=f"s{tag}"
                    ),
                )
            )
        )

    async def send_unary(self, sender: User, receiver: User, tag: int, text: str) -> None:
        reply = await self.population.route.SendPrivate(
            common_pb2.SendPrivateRequest(
                receiver_id=receiver.user_id, text=text, client_msg_id=f"u{tag}"
            ),
            metadata=sender.metadata,
            timeout=MESSAGE_TIMEOUT,
        )
        if reply.status != DELIVERED:
            self.phase.errors["stored"] += 1
            raise _Counted("stored")

    async def one(self, send: SendFn, sender: User, receiver: User) -> None:
        """One message; returns once the receiver has it (or it failed)."""
        tag = next(self.tags)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[tag] = future
        phase = self.phase
        phase.sent += 1
        try:
            await send(sender, receiver, tag, self._text(tag))
            await asyncio.wait_for(future, MESSAGE_TIMEOUT)
        except TimeoutError:
            phase.errors["timeout"] += 1
        except grpc.aio.AioRpcError as exc:
            phase.errors[error_name(exc)] += 1
        except _Counted:
            pass
        finally:
            self.pending.pop(tag, None)

    def _pair(self, users: list[User]) -> tuple[User, User]:
        sender, receiver = self.rng.sample(users, 2)
        return sender, receiver

    async def closed_loop(self, send: SendFn, duration: float) -> None:
        """Every user sends to random others, one message in flight each."""
        users = self.population.users
        stop_at = time.perf_counter() + duration

        async def sender_loop(sender: User) -> None:
            while time.perf_counter() < stop_at:
                receiver = self.rng.choice(users)
                while receiver is sender:
                    receiver = self.rng.choice(users)
                await self.one(send, sender, receiver)

        await asyncio.gather(*(sender_loop(user) for user in users))

    async def open_loop(self, send: SendFn, duration: float, rate: float) -> None:
        """``rate`` messages a second in total, from random senders, whatever
        the answers (open loop); waits for the last ones at the end."""
        users = self.population.users
        total = max(1, int(duration * rate))
        tasks: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        late = 0.0
        for i in range(total):
            due = started + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                late = max(late, now - due)
            sender, receiver = self._pair(users)
            task = asyncio.create_task(self.one(send, sender, receiver))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        self.phase.pacer_late_ms = late * 1000

    async def run_phase(
        self, name: str, work: Callable[[], Awaitable[None]], rate: float | None = None
    ) -> MessagePhase:
        await self.reporter.phase(name, "start")
        self.phase = Phase(name)
        cpu, started = cpu_seconds(), time.perf_counter()
        await work()
        self.phase.elapsed = time.perf_counter() - started
        self.phase.cpu = cpu_seconds() - cpu
        result = self.phase.result(rate)
        self.phase = Phase("between")
        await self.reporter.phase(name, "end")
        return result

    async def run(self) -> PrivateResult:
        duration = float(self.params.get("duration", 8.0))
        rate = float(self.params.get("rate", 500.0))
        await self.population.start()
        if len(self.population.users) < 2:
            raise RuntimeError("fewer than two users could join")
        joined = self.population.joined()
        stream = await self.run_path("stream", self.send_stream, duration, rate)
        unary = await self.run_path("unary", self.send_unary, duration, rate)
        await self.population.close()
        return PrivateResult(
            **asdict(joined), payload_bytes=self.payload, stream=stream, unary=unary
        )

    async def run_path(self, path: str, send: SendFn, duration: float, rate: float) -> MessagePath:
        """A warm-up, then as fast as one message in flight per user allows, then ``rate``."""
        self.phase = Phase("warmup")
        await self.closed_loop(send, min(1.0, duration / 4))
        fastest = await self.run_phase(f"{path}-max", partial(self.closed_loop, send, duration))
        fixed = await self.run_phase(
            f"{path}-fixed", partial(self.open_loop, send, duration, rate), rate
        )
        return MessagePath(max=fastest, fixed=fixed)


# --- scenario 2: group fan-out -----------------------------------------------------
class GroupBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter
        self.round = 0
        self.count = 0
        self.expected = 0
        self.last_ns = 0
        self.done = asyncio.Event()
        self.recipients = 0
        self.errors: Counter[str] = Counter()
        self.population = Population(params, "gr", int(params.get("users", 1000)), self.on_frame)

    def on_frame(self, user: User, frame: chat_pb2.ServerFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "message":
            if frame.message.text.startswith(f"g{self.round} "):
                self.count += 1
                self.last_ns = time.perf_counter_ns()
                if self.count >= self.expected:
                    self.done.set()
            else:
                self.errors["stale"] += 1
        elif kind == "send_result":
            result = frame.send_result
            if result.WhichOneof("outcome") == "error":
                self.errors[f"send:{result.error.code}"] += 1
            else:
                self.recipients = result.ok.recipients

    async def run(self) -> GroupResult:
        repeats = int(self.params.get("repeats", 5))
        await self.population.start()
        users = self.population.users
        if len(users) < 2:
            raise RuntimeError("fewer than two users could join")
        sender = users[0]
        self.expected = len(users) - 1
        rounds: list[GroupRound] = []
        await asyncio.sleep(0.5)  # every stream settled
        await self.reporter.phase("fanout", "start")
        cpu = cpu_seconds()
        for n in range(1, repeats + 1):
            self.round, self.count, self.last_ns = n, 0, 0
            self.done.clear()
            text = f"g{n} " + "x" * 60
            started = time.perf_counter_ns()
            await sender.write(
                chat_pb2.ClientFrame(
                    send=chat_pb2.SendFrame(
                        correlation_id=n,
                        group=common_pb2.SendGroupRequest(text=text, client_msg_id=f"g{n}"),
                    )
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 30.0)
            elapsed = (self.last_ns - started) / 1e9 if self.last_ns else 0.0
            missing = self.expected - self.count
            if missing:
                self.errors["missing"] += missing
            rounds.append(GroupRound(elapsed, self.count, self.count / elapsed if elapsed else 0.0))
            await asyncio.sleep(0.3)
        load_cpu = cpu_seconds() - cpu
        await self.reporter.phase("fanout", "end")
        joined = self.population.joined()
        await self.population.close()
        complete = [r for r in rounds if r.received == self.expected] or rounds
        times = sorted(r.seconds for r in complete)
        rates = sorted((r.deliveries_per_s for r in complete), reverse=True)
        return GroupResult(
            **asdict(joined),
            receivers=self.expected,
            recipients_reported=self.recipients,
            rounds=rounds,
            best=FanOut(times[0], rates[0]),
            median=FanOut(times[len(times) // 2], rates[len(rates) // 2]),
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
            load_cpu_s=load_cpu,
        )


# --- scenario 3: connections --------------------------------------------------------
class ConnectionsBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter
        self.pongs = 0
        self.notices: Counter[str] = Counter()
        prefix = f"cn{params.get('index', 0)}"
        self.population = Population(params, prefix, int(params.get("users", 2000)), self.on_frame)

    def on_frame(self, user: User, frame: chat_pb2.ServerFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "pong":
            self.pongs += 1
        elif kind == "notice":
            self.notices[str(frame.notice.kind)] += 1

    async def run(self) -> ConnectionsPart:
        batch = int(self.params.get("batch", 200))
        population = self.population
        await population.seed()
        await self.reporter.phase("connect", "start")
        started_wall, cpu = time.time(), cpu_seconds()
        started = time.perf_counter()
        await population.start(batch)
        elapsed = time.perf_counter() - started
        ended_wall = time.time()
        load_cpu = cpu_seconds() - cpu
        await self.reporter.phase("connect", "end")
        await self.reporter.emit("ready", connected=len(population.users), alive=population.alive())
        alive_after_hold = population.alive()
        await population.close()
        return ConnectionsPart(
            users=len(population.users),
            alive_after_hold=alive_after_hold,
            errors=sum(population.errors.values()),
            error_kinds=dict(population.errors),
            servers=population.servers(),
            tcp_connections=population.channel_count(),
            start=started_wall,
            end=ended_wall,
            elapsed_s=elapsed,
            connect_per_s=len(population.users) / elapsed if elapsed else 0.0,
            connect_latency_ms=percentiles_ms(population.connect_ns, unit=NS),
            pings=population.pings,
            pongs=self.pongs,
            notices=dict(self.notices),
            load_cpu_s=load_cpu,
        )


# --- scenario 4: login storm --------------------------------------------------------
class LoginBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter

    async def storm(self, route: route_pb2_grpc.RouteStub, ids: dict[str, int]) -> LoginStorm:
        concurrency = int(self.params.get("concurrency", 64))
        queue = list(ids.items())
        latencies: list[int] = []
        errors: Counter[str] = Counter()

        async def caller() -> None:
            while queue:
                name, user_id = queue.pop()
                started = time.perf_counter_ns()
                try:
                    await route.Login(
                        route_pb2.LoginRequest(user_name=name, password=PASSWORD, user_id=user_id),
                        timeout=RPC_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as exc:
                    errors[error_name(exc)] += 1
                    continue
                latencies.append(time.perf_counter_ns() - started)

        cpu, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return LoginStorm(
            logins=len(latencies),
            elapsed_s=elapsed,
            logins_per_s=len(latencies) / elapsed if elapsed else 0.0,
            latency_ms=percentiles_ms(latencies, unit=NS),
            errors=sum(errors.values()),
            error_kinds=dict(errors),
            concurrency=concurrency,
            load_cpu_s=cpu_seconds() - cpu,
        )

    async def run(self) -> LoginResult:
        count = int(self.params.get("logins", 1000))
        variants = self.params.get("variants", ["default", "cheap"])
        seeded = {
            kind: await seed_accounts(self.params, [f"ls{kind[0]}-{i}" for i in range(count)], kind)
            for kind in variants
        }
        channel = grpc.aio.insecure_channel(self.params["route"], options=CHANNEL_OPTIONS)
        route = route_pb2_grpc.RouteStub(channel)
        result = LoginResult(hash_params={})
        try:
            for kind in variants:
                await self.reporter.phase(f"login-{kind}", "start")
                storm = await self.storm(route, seeded[kind])
                await self.reporter.phase(f"login-{kind}", "end")
                if kind == "default":
                    result.default = storm
                else:
                    result.cheap = storm
                scrypt = ScryptParams() if kind == "default" else ScryptParams.for_tests()
                result.hash_params[kind] = HashParams(scrypt.n, scrypt.r, scrypt.p)
        finally:
            await channel.close()
        return result


# --- entry point -----------------------------------------------------------------
class Bench(Protocol):
    async def run(self) -> LoadRun: ...


def _convlist(params: Params, reporter: Reporter) -> Bench:
    from cim.bench.convlist import ConvListBench  # it imports this module's helpers

    return ConvListBench(params, reporter)


BENCHES: dict[str, Callable[[Params, Reporter], Bench]] = {
    "private": PrivateBench,
    "group": GroupBench,
    "connections": ConnectionsBench,
    "login": LoginBench,
    "convlist": _convlist,
}


def bench_for(scenario: str) -> Callable[[Params, Reporter], Bench]:
    if scenario in BENCHES:
        return BENCHES[scenario]
    # Imported here: groups and history (cim.bench.conversations) build on this module.
    from cim.bench import conversations

    return conversations.BENCHES[scenario]


async def run_scenario(scenario: str, params: Params) -> LoadRun:
    reporter = Reporter(bool(params.get("interactive", False)))
    bench = bench_for(scenario)(params, reporter)
    started = time.perf_counter()
    result = await bench.run()
    result.wall_s = time.perf_counter() - started
    result.load_process = procstats.read(os.getpid())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cim.bench.load", description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--params", default="{}", help="JSON object of scenario parameters")
    args = parser.parse_args(argv)
    params: Params = json.loads(args.params)
    logging.basicConfig(
        level=params.get("log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    procstats.raise_open_file_limit()
    loop_factory = None
    if params.get("uvloop", True):
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run_scenario(args.scenario, params))
    emit("result", result=asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
