"""The load of the conversation scenarios (issue 12): groups with members, and
history pages. Run by :mod:`cim.bench.load` (``python -m cim.bench.load
groups|history``), with its users, its events and its protocol.

**groups**, for each size M: a group of M members created through the public
Groups service by one owner; half of them (the owner among them) log in and
connect on chat streams, the other half stay offline. Three timed phases:

- ``series``: the owner sends one message at a time; from its send until the
  last online member has it (and the first: the spread between them);
- ``replay``: once ``stored`` group messages were sent (the series' count),
  offline members log in one after another: from the Login call to the
  ReplayDone of their new stream, every stored message before it;
- ``sustained``: a few online members send as fast as the group path accepts
  (a window of sends awaiting their results each, paced under the per-user
  rate limit): deliveries/s, a delivery being one online member's copy.

**history**: two users fill a conversation (private; or a group of the two)
with ``messages`` messages over their streams, paced under the rate limit;
then one of them reads pages of ``limit`` (``Route.History``): one read at a
time, half from the newest message and half from a random older position,
then ``concurrency`` reads in flight.

The sizes, counts and durations come in the params (see
:func:`cim.bench.scenarios.groups` and :func:`cim.bench.scenarios.history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from cim.bench.load import (
    MESSAGE_TIMEOUT,
    NS,
    RPC_TIMEOUT,
    USER_CHANNEL_OPTIONS,
    Bench,
    Params,
    Population,
    Reporter,
    User,
    cpu_seconds,
    error_name,
    seed_accounts,
)
from cim.bench.records import (
    GroupReplay,
    GroupSeries,
    GroupSize,
    GroupsResult,
    GroupSustained,
    HistoryConversation,
    HistoryResult,
)
from cim.bench.stats import percentiles_ms
from cim.config import DEFAULT_MAX_MSGS_PER_SEC
from cim.core import conversations
from cim.proto.v1 import (
    chat_pb2,
    common_pb2,
    groups_pb2,
    groups_pb2_grpc,
    route_pb2,
    route_pb2_grpc,
)

# Each sender stays under the route's and chat server's default per-user
# rate (their burst absorbs the jitter): a refused send would be an error.
RATE_PER_SENDER = 0.9 * DEFAULT_MAX_MSGS_PER_SEC
# Sustained group sends (defaults): this many online members send, each with
# this many sends awaiting their results.
SUSTAINED_SENDERS = 4
SUSTAINED_WINDOW = 1
# Sends in flight per user: filling a history (its pages are read, not
# its sends timed), and the untimed group messages before a replay.
HISTORY_FILL_WINDOW = 16
GROUP_FILL_WINDOW = 2
# Between two timed sends of a series: the last one's acks and pushes settle.
SERIES_GAP = 0.05
PAYLOAD_BYTES = 64
GROUP = common_pb2.MESSAGE_KIND_GROUP

# A send's target and text; the outbox adds its correlation id.
Target = chat_pb2.SendFrame


# --- pure parts ----------------------------------------------------------------------
def tagged_text(mode: str, number: int, sent_ns: int) -> str:
    """A message's text: ``<mode><number> <sent_ns> `` padded to PAYLOAD_BYTES."""
    text = f"{mode}{number} {sent_ns} "
    return text + "x" * max(1, PAYLOAD_BYTES - len(text))


def read_tag(text: str) -> tuple[str, int, int] | None:
    """(mode, number, sent_ns) of a :func:`tagged_text`; None for any other text."""
    head, _, rest = text.partition(" ")
    sent, _, _ = rest.partition(" ")
    if len(head) < 2 or not head[1:].isdigit() or not sent.isdigit():
        return None
    return head[0], int(head[1:]), int(sent)


class Budget:
    """Message numbers handed out to senders: 1, 2, 3... up to ``count`` if
    given, until ``deadline`` (``time.perf_counter()``) if given."""

    def __init__(self, count: int | None = None, deadline: float | None = None) -> None:
        self.count = count
        self.deadline = deadline
        self.taken = 0

    def take(self) -> int | None:
        if self.count is not None and self.taken >= self.count:
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return None
        self.taken += 1
        return self.taken


@dataclass
class Round:
    """One timed group send and its copies at the online members."""

    sent_ns: int
    first_ns: int = 0
    last_ns: int = 0
    received: int = 0

    def receipt(self, now_ns: int) -> None:
        if not self.received:
            self.first_ns = now_ns
        self.last_ns = max(self.last_ns, now_ns)
        self.received += 1


def series_figures(
    rounds: Sequence[Round], receivers: int, accept_ns: Sequence[int]
) -> GroupSeries:
    """The series' figures: "to last" and the spread only over the sends
    every receiver got (the last copy of an incomplete one is not the last)."""
    complete = [r for r in rounds if r.received >= receivers]
    to_last = [r.last_ns - r.sent_ns for r in complete]
    return GroupSeries(
        sends=len(rounds),
        complete=len(complete),
        to_first_ms=percentiles_ms([r.first_ns - r.sent_ns for r in rounds if r.received], NS),
        to_last_ms=percentiles_ms(to_last, NS),
        spread_ms=percentiles_ms([r.last_ns - r.first_ns for r in complete], NS),
        fastest_ms=round(min(to_last) / 1e6, 3) if to_last else 0.0,
        accept_ms=percentiles_ms(accept_ns, NS),
    )


def per_second(count: int, span_ns: int) -> float:
    return count / (span_ns * NS) if span_ns > 0 else 0.0


def page_size(before: int, head: int, limit: int) -> int:
    """How many messages a history page holds: those below ``before`` (0:
    the newest), at most ``limit``; positions run from 1 to ``head``, none
    dropped by retention."""
    below = head if before == 0 else min(before - 1, head)
    return max(0, min(limit, below))


def check_page(
    messages: Sequence[common_pb2.ChatMessage], before: int, head: int, limit: int
) -> str:
    """What is wrong with a page ("" if nothing): its size, its order."""
    if len(messages) != page_size(before, head, limit):
        return "page size"
    top = head if before == 0 else before - 1
    positions = [message.position for message in messages]
    if positions != list(range(top, top - len(positions), -1)):
        return "page positions"
    return ""


# --- sends on users' streams ------------------------------------------------------
class Outbox:
    """Send frames on users' streams, matched with their results by
    correlation id (unique across users)."""

    def __init__(self, errors: Counter[str]) -> None:
        self.errors = errors
        self.accept_ns: list[int] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[int, asyncio.Future[bool]]] = {}

    async def send(self, user: User, target: Target) -> asyncio.Future[bool]:
        """Writes one send; the future says whether it was accepted."""
        tag = next(self._ids)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[tag] = (time.perf_counter_ns(), future)
        try:
            target.correlation_id = tag
            await user.write(chat_pb2.ClientFrame(send=target))
        except grpc.aio.AioRpcError as exc:
            self._pending.pop(tag, None)
            self.errors[error_name(exc)] += 1
            future.set_result(False)
        return future

    def result(self, frame: chat_pb2.SendResultFrame) -> None:
        entry = self._pending.pop(frame.correlation_id, None)
        if entry is None:
            self.errors["unknown send result"] += 1
            return
        started, future = entry
        accepted = frame.WhichOneof("outcome") == "ok"
        if accepted:
            self.accept_ns.append(time.perf_counter_ns() - started)
        else:
            self.errors[f"send:{_CODE_NAMES.get(frame.error.code, frame.error.code)}"] += 1
        if not future.done():
            future.set_result(accepted)

    def forget(self) -> int:
        """Sends still without a result: each counted as an error."""
        left = len(self._pending)
        for _, future in self._pending.values():
            if not future.done():
                future.set_result(False)
        self._pending.clear()
        if left:
            self.errors["no send result"] += left
        return left


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


async def settle(futures: Sequence[asyncio.Future[bool]], outbox: Outbox) -> int:
    """Awaits the results of ``futures`` (MESSAGE_TIMEOUT at most; the rest
    count as errors); returns how many sends were accepted."""
    if futures:
        await asyncio.wait(futures, timeout=MESSAGE_TIMEOUT)
    outbox.forget()
    return sum(1 for future in futures if future.result())


async def send_paced(
    outbox: Outbox,
    senders: Sequence[User],
    budget: Budget,
    target: Callable[[User, int], Target],
    window: int,
    rate: float = RATE_PER_SENDER,
) -> int:
    """Each sender sends while the budget lasts, at most ``rate`` a second
    and ``window`` awaiting their results; returns how many were accepted
    (each result awaited, for MESSAGE_TIMEOUT at most)."""
    futures: list[asyncio.Future[bool]] = []

    async def one_sender(user: User) -> None:
        slots = asyncio.Semaphore(window)
        started = time.perf_counter()
        for k in itertools.count():
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            number = budget.take()
            if number is None:
                return
            future = await outbox.send(user, target(user, number))
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)

    await asyncio.gather(*(one_sender(user) for user in senders))
    return await settle(futures, outbox)


def group_send(group_id: str, mode: str, number: int, sent_ns: int) -> Target:
    text = tagged_text(mode, number, sent_ns)
    return chat_pb2.SendFrame(
        group=common_pb2.SendGroupRequest(
            group_id=group_id, text=text, client_msg_id=f"{mode}{number}"
        )
    )


def _group_target(group_id: str, mode: str) -> Callable[[User, int], Target]:
    def target(user: User, number: int) -> Target:
        return group_send(group_id, mode, number, time.perf_counter_ns())

    return target


# --- groups --------------------------------------------------------------------------
class GroupsBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter
        self.errors: Counter[str] = Counter()
        self.outbox = Outbox(self.errors)
        self.group_id = ""
        self.receivers = 0
        # The series: its rounds, and the one awaited.
        self.rounds: list[Round] = []
        self.round_done = asyncio.Event()
        # Copies of untimed ("f") and sustained ("s") sends, and when each
        # count reaches its target.
        self.copies: Counter[str] = Counter()
        self.wanted: dict[str, int] = {}
        self.copies_done = asyncio.Event()
        self.last_copy_ns = 0
        self.delivery_ns: list[int] = []

    def on_frame(self, user: User, frame: chat_pb2.ServerFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "send_result":
            self.outbox.result(frame.send_result)
        elif kind == "notice":
            self.errors[f"notice:{frame.notice.kind}"] += 1
        elif kind == "message" and frame.message.kind == GROUP:
            self._copy(frame.message)

    def _copy(self, message: common_pb2.ChatMessage) -> None:
        now = time.perf_counter_ns()
        tag = read_tag(message.text)
        if message.group_id != self.group_id or tag is None:
            self.errors["stray message"] += 1
            return
        mode, number, sent_ns = tag
        if mode == "t" and 1 <= number <= len(self.rounds):
            timed = self.rounds[number - 1]
            timed.receipt(now)
            if number == len(self.rounds) and timed.received >= self.receivers:
                self.round_done.set()
            return
        self.copies[mode] += 1
        if mode == "s":
            self.last_copy_ns = now
            self.delivery_ns.append(now - sent_ns)
        wanted = self.wanted.get(mode)
        if wanted is not None and self.copies[mode] >= wanted:
            self.copies_done.set()

    async def _await_copies(self, mode: str, wanted: int) -> None:
        """Until the online members hold ``wanted`` copies of ``mode`` sends
        (MESSAGE_TIMEOUT at most after the last result); missing ones are errors."""
        self.wanted[mode] = wanted
        self.copies_done.clear()
        if self.copies[mode] < wanted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.copies_done.wait(), MESSAGE_TIMEOUT)
        if self.copies[mode] < wanted:
            self.errors["missing"] += wanted - self.copies[mode]

    async def run(self) -> GroupsResult:
        sizes = [int(size) for size in self.params.get("sizes", [100, 1000])]
        return GroupsResult(sizes=[await self.run_size(size) for size in sizes])

    async def run_size(self, members: int) -> GroupSize:
        self.errors.clear()
        self.copies.clear()
        self.wanted.clear()
        self.rounds, self.delivery_ns, self.last_copy_ns = [], [], 0
        self.outbox.accept_ns = []
        online = members // 2
        offline_names = [f"gx{members}-{i}" for i in range(members - online)]
        offline = await seed_accounts(self.params, offline_names, "cheap")
        population = Population(self.params, f"go{members}", online, self.on_frame)
        await population.start()
        users = population.users
        if len(users) < 2:
            raise RuntimeError(f"fewer than two of {online} users could join")
        owner = users[0]
        started = time.perf_counter_ns()
        created = await groups_pb2_grpc.GroupsStub(population.route_channel).CreateGroup(
            groups_pb2.CreateGroupRequest(
                name=f"bench {members}",
                member_ids=[user.user_id for user in users[1:]] + list(offline.values()),
            ),
            metadata=owner.metadata,
            timeout=RPC_TIMEOUT,
        )
        create_ms = (time.perf_counter_ns() - started) / 1e6
        self.group_id = created.group.group_id
        self.receivers = len(users) - 1
        await asyncio.sleep(0.5)  # the creation's pushes settled
        cpu = cpu_seconds()

        name = f"groups-{members}"
        await self.reporter.phase(f"{name}-series", "start")
        series = await self.series(owner, int(self.params.get("sends", 30)))
        await self.reporter.phase(f"{name}-series", "end")

        stored = max(int(self.params.get("stored", 100)), len(self.rounds))
        await self.fill(owner, stored - len(self.rounds))
        returning = offline_names[: int(self.params.get("replays", 3))]
        await self.reporter.phase(f"{name}-replay", "start")
        replay = await self.replay(
            population.route, [User(them, offline[them]) for them in returning], stored
        )
        await self.reporter.phase(f"{name}-replay", "end")

        await self.reporter.phase(f"{name}-sustained", "start")
        sustained = await self.sustained(
            users,
            float(self.params.get("sustain_s", 3.0)),
            int(self.params.get("senders", SUSTAINED_SENDERS)),
            int(self.params.get("window", SUSTAINED_WINDOW)),
        )
        await self.reporter.phase(f"{name}-sustained", "end")
        load_cpu = cpu_seconds() - cpu
        joined = population.joined()
        await population.close()
        return GroupSize(
            members=members,
            online=len(users),
            receivers=self.receivers,
            group_id=self.group_id,
            joined=joined,
            create_ms=round(create_ms, 3),
            series=series,
            replay=replay,
            sustained=sustained,
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
            load_cpu_s=load_cpu,
        )

    async def series(self, sender: User, sends: int) -> GroupSeries:
        results = []
        for number in range(1, sends + 1):
            self.round_done.clear()
            sent_ns = time.perf_counter_ns()
            self.rounds.append(Round(sent_ns))
            request = group_send(self.group_id, "t", number, sent_ns)
            results.append(await self.outbox.send(sender, request))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.round_done.wait(), MESSAGE_TIMEOUT)
            missing = self.receivers - self.rounds[-1].received
            if missing > 0:
                self.errors["missing"] += missing
            await asyncio.sleep(SERIES_GAP)
        await settle(results, self.outbox)
        return series_figures(self.rounds, self.receivers, self.outbox.accept_ns)

    async def fill(self, sender: User, count: int) -> None:
        """``count`` more group messages (not timed), every copy delivered."""
        if count <= 0:
            return
        target = _group_target(self.group_id, "f")
        accepted = await send_paced(self.outbox, [sender], Budget(count), target, GROUP_FILL_WINDOW)
        await self._await_copies("f", accepted * self.receivers)

    async def replay(
        self, route: route_pb2_grpc.RouteStub, returning: Sequence[User], stored: int
    ) -> GroupReplay:
        """Each of ``returning`` (offline members) logs in, one after another."""
        login_ns: list[int] = []
        done_ns: list[int] = []
        replayed: list[int] = []
        for user in returning:
            try:
                login, done, count = await self.replay_one(route, user)
            except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as exc:
                self.errors[f"replay: {error_name(exc)}"] += 1
                continue
            login_ns.append(login)
            done_ns.append(done)
            replayed.append(count)
            if count != stored:
                self.errors["replay: stored messages missing"] += abs(stored - count)
        return GroupReplay(
            stored=stored,
            logins=len(done_ns),
            replayed=min(replayed, default=0),
            to_replay_done_ms=percentiles_ms(done_ns, NS),
            login_ms=percentiles_ms(login_ns, NS),
        )

    async def replay_one(self, route: route_pb2_grpc.RouteStub, user: User) -> tuple[int, int, int]:
        """Logs an offline member in and reads its replay; returns the Login
        call's time, the time to ReplayDone, and the group messages replayed.
        Logs it out after (it is offline again for the next phase)."""
        replayed = 0
        done = asyncio.Event()

        def on_frame(_: User, frame: chat_pb2.ServerFrame) -> None:
            nonlocal replayed
            kind = frame.WhichOneof("frame")
            if kind == "message":
                message = frame.message
                if message.kind == GROUP and message.group_id == self.group_id:
                    replayed += 1
            elif kind == "replay_done":
                done.set()

        started = time.perf_counter_ns()
        await user.login(route)
        logged_in = time.perf_counter_ns()
        channel = grpc.aio.insecure_channel(user.server_address, options=USER_CHANNEL_OPTIONS)
        try:
            await user.connect(channel, on_frame)
            await asyncio.wait_for(done.wait(), RPC_TIMEOUT)
            finished = time.perf_counter_ns()
            await route.Logout(
                route_pb2.LogoutRequest(), metadata=user.metadata, timeout=RPC_TIMEOUT
            )
        finally:
            user.close()
            await channel.close()
        return logged_in - started, finished - started, replayed

    async def sustained(
        self, users: Sequence[User], seconds: float, senders_count: int, window: int
    ) -> GroupSustained:
        senders = users[: min(senders_count, len(users))]
        self.outbox.accept_ns = []
        target = _group_target(self.group_id, "s")
        first = time.perf_counter_ns()
        budget = Budget(deadline=time.perf_counter() + seconds)
        accepted = await send_paced(self.outbox, senders, budget, target, window)
        sending_s = (time.perf_counter_ns() - first) * NS
        expected = accepted * self.receivers
        await self._await_copies("s", expected)
        deliveries = self.copies["s"]
        span = self.last_copy_ns - first
        return GroupSustained(
            senders=len(senders),
            in_flight_per_sender=window,
            rate_cap_per_sender=RATE_PER_SENDER,
            sending_s=round(sending_s, 3),
            accepted=accepted,
            deliveries=deliveries,
            expected_deliveries=expected,
            elapsed_s=round(span * NS, 3),
            deliveries_per_s=per_second(deliveries, span),
            msgs_per_s=per_second(accepted, span),
            delivery_ms=percentiles_ms(self.delivery_ns, NS),
            accept_ms=percentiles_ms(self.outbox.accept_ns, NS),
        )


# --- history -------------------------------------------------------------------------
class HistoryBench:
    def __init__(self, params: Params, reporter: Reporter) -> None:
        self.params = params
        self.reporter = reporter
        self.rng = random.Random(params.get("seed", 1))
        self.errors: Counter[str] = Counter()
        self.outbox = Outbox(self.errors)
        self.population = Population(params, "hs", 2, self.on_frame)

    def on_frame(self, user: User, frame: chat_pb2.ServerFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "send_result":
            self.outbox.result(frame.send_result)
        elif kind == "notice":
            self.errors[f"notice:{frame.notice.kind}"] += 1
        # The peer's copies of the fill are not measured.

    async def run(self) -> HistoryResult:
        kinds = [str(kind) for kind in self.params.get("kinds", ["private"])]
        await self.population.start()
        if len(self.population.users) < 2:
            raise RuntimeError("the two users of the history scenario could not join")
        try:
            return HistoryResult(conversations=[await self.run_kind(kind) for kind in kinds])
        finally:
            await self.population.close()

    async def open(self, kind: str) -> tuple[str, Callable[[User, int], Target]]:
        """The conversation of the two users, and what a message to it is."""
        a, b = self.population.users[:2]
        if kind == "private":
            peer = {a.user_id: b.user_id, b.user_id: a.user_id}

            def private(user: User, number: int) -> Target:
                text = tagged_text("h", number, time.perf_counter_ns())
                return chat_pb2.SendFrame(
                    private=common_pb2.SendPrivateRequest(
                        receiver_id=peer[user.user_id], text=text, client_msg_id=f"h{number}"
                    )
                )

            return conversations.private_id(a.user_id, b.user_id), private
        created = await groups_pb2_grpc.GroupsStub(self.population.route_channel).CreateGroup(
            groups_pb2.CreateGroupRequest(name="bench history", member_ids=[b.user_id]),
            metadata=a.metadata,
            timeout=RPC_TIMEOUT,
        )
        return created.group.group_id, _group_target(created.group.group_id, "h")

    async def run_kind(self, kind: str) -> HistoryConversation:
        self.errors.clear()
        messages = int(self.params.get("messages", 2000))
        limit = int(self.params.get("limit", 50))
        reader = self.population.users[0]
        conversation_id, target = await self.open(kind)
        started = time.perf_counter()
        await send_paced(
            self.outbox, self.population.users[:2], Budget(messages), target, HISTORY_FILL_WINDOW
        )
        fill_s = time.perf_counter() - started

        def read(before: int) -> asyncio.Future[route_pb2.HistoryResponse]:
            return self.population.route.History(  # type: ignore[no-any-return]
                route_pb2.HistoryRequest(
                    conversation_id=conversation_id, before_position=before, limit=limit
                ),
                metadata=reader.metadata,
                timeout=RPC_TIMEOUT,
            )

        head = 0
        with contextlib.suppress(grpc.aio.AioRpcError):
            head = (await read(0)).head_position
        if head <= limit:
            self.errors["conversation shorter than a page"] += 1

        def position(i: int) -> int:
            """Even reads from the newest, odd ones from a random older position."""
            return 0 if i % 2 == 0 or head <= limit else self.rng.randint(limit + 1, head)

        async def timed(before: int) -> int | None:
            begun = time.perf_counter_ns()
            try:
                reply = await read(before)
            except grpc.aio.AioRpcError as exc:
                self.errors[error_name(exc)] += 1
                return None
            took = time.perf_counter_ns() - begun
            wrong = check_page(reply.messages, before, head, limit)
            if wrong:
                self.errors[wrong] += 1
            return took

        name = f"history-{kind}"
        reads = int(self.params.get("reads", 200))
        newest: list[int] = []
        older: list[int] = []
        await self.reporter.phase(name, "start")
        for i in range(reads):
            before = position(i)
            took = await timed(before)
            if took is not None:
                (older if before else newest).append(took)
        await self.reporter.phase(name, "end")

        concurrency = int(self.params.get("concurrency", 64))
        load_s = float(self.params.get("load_s", 2.0))
        under_load: list[int] = []
        counter = itertools.count()

        async def caller(stop_at: float) -> None:
            while time.perf_counter() < stop_at:
                took = await timed(position(next(counter)))
                if took is not None:
                    under_load.append(took)

        await self.reporter.phase(f"{name}-load", "start")
        begun = time.perf_counter()
        await asyncio.gather(*(caller(begun + load_s) for _ in range(concurrency)))
        load_elapsed = time.perf_counter() - begun
        await self.reporter.phase(f"{name}-load", "end")
        return HistoryConversation(
            kind=kind,
            conversation_id=conversation_id,
            head_position=head,
            fill_s=round(fill_s, 3),
            page_limit=limit,
            reads=len(newest) + len(older),
            page_ms=percentiles_ms(newest + older, NS),
            newest_page_ms=percentiles_ms(newest, NS),
            older_page_ms=percentiles_ms(older, NS),
            concurrency=concurrency,
            load_s=round(load_elapsed, 3),
            load_reads=len(under_load),
            load_reads_per_s=len(under_load) / load_elapsed if load_elapsed else 0.0,
            load_ms=percentiles_ms(under_load, NS),
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
        )


BENCHES: dict[str, Callable[[Params, Reporter], Bench]] = {
    "groups": GroupsBench,
    "history": HistoryBench,
}
