"""The ZooKeeper registry: each process holds an ephemeral node per member it
registers, and every process keeps an in-memory view of all members, updated
by watches (a ChildrenWatch per kind, a DataWatch per member node).

Threads: kazoo calls watches and state listeners on its own threads. Those
callbacks only read ZooKeeper and hand the result to the event loop with
``call_soon_threadsafe``; all registry state lives on the loop, and listeners
are called there. The registry's own blocking kazoo calls run in worker
threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from cim.core.members import Member, MemberKind
from cim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from cim.registry.base import Listener
from cim.registry.paths import DEFAULT_ROOT, RegistryPaths

log = logging.getLogger(__name__)

# Kazoo's default reconnect backoff grows to an hour. After an outage the
# client must be back within a session timeout of ZooKeeper's return to keep
# its session, so attempts stay at most this far apart.
_RETRY_MAX_DELAY = 1.0

# aclose waits no longer than this for each node deletion on a failing
# connection: the end of the session removes the nodes anyway.
_CLOSE_TIMEOUT = 2.0

# A node held by another session is waited for this many session timeouts: the
# server expires sessions on tick boundaries, and a tick may be up to half a
# session timeout (ZooKeeper's minimum session timeout is two ticks).
_TAKEOVER_FACTOR = 1.5


class ZooKeeperRegistry:
    """A :class:`~cim.registry.base.Registry` on ZooKeeper (one server or an
    ensemble: ``hosts`` is a kazoo connect string such as "h1:2181,h2:2181").

    ``members`` is an in-memory read. While ZooKeeper is unreachable the last
    view is kept; once it is back, the watches re-read it, and the members this
    process registered are written again (re-created if the session expired).
    """

    def __init__(
        self,
        hosts: str,
        root: str = DEFAULT_ROOT,
        session_timeout: float = 10.0,
        connect_timeout: float = 15.0,
    ) -> None:
        self.hosts = hosts
        self.paths = RegistryPaths(root)
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        # Made by start(), so that a bad connect string is reported there, with
        # every other start-up problem.
        self._client: KazooClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._client_live = False  # kazoo's threads run: stop them on close
        # Read by kazoo threads, so not a plain bool on the loop.
        self._stopping = threading.Event()

        # The view (loop only): children listed by the ChildrenWatch, data
        # from the DataWatches; a member shows once both know it.
        self._children: dict[MemberKind, set[str]] = {kind: set() for kind in MemberKind}
        self._data: dict[MemberKind, dict[str, Member]] = {kind: {} for kind in MemberKind}
        self._views: dict[MemberKind, list[Member]] = {kind: [] for kind in MemberKind}
        self._listeners: dict[MemberKind, list[Listener]] = {kind: [] for kind in MemberKind}

        # Paths with a live DataWatch (kazoo threads).
        self._watched: set[str] = set()
        self._watch_lock = threading.Lock()

        # Own nodes (loop only): what this process registered, by path, and
        # paths to delete once connected (deregistered while disconnected).
        self._own: dict[str, Member] = {}
        self._stale: set[str] = set()
        self._own_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._disconnected = False
        self._session_lost = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Failed operations and lost connections so far (metrics read it).
        self.errors = 0

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Connects (at most ``connect_timeout``), creates the base paths and
        starts the watches; on return ``members`` holds the current view."""
        if self._started or self._closed:
            raise FailedPrecondition("ZooKeeperRegistry.start() may be called once")
        self._loop = asyncio.get_running_loop()
        # command_retry serves kazoo's watch recipes, which re-read until they
        # succeed or the client closes; the registry's own calls go through
        # _call, bounded in time.
        retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": _RETRY_MAX_DELAY}
        try:
            self._client = KazooClient(
                hosts=self.hosts,
                timeout=self.session_timeout,
                connection_retry=dict(retry),
                command_retry=dict(retry),
            )
        except ValueError as exc:
            self._closed = True
            raise InvalidArgument(f"bad ZooKeeper hosts {self.hosts!r}: {exc}") from exc
        self._client.add_listener(self._on_state)
        self._client_live = True
        try:
            await asyncio.to_thread(self._client.start, self.connect_timeout)
        except KazooTimeoutError as exc:
            # kazoo stops the client itself when start times out.
            self._client_live = False
            self._closed = True
            raise Unavailable(
                f"could not connect to ZooKeeper at {self.hosts} within "
                f"{self.connect_timeout:g} s: is it running and reachable from here?"
            ) from exc
        self._started = True
        self._connected.set()
        try:
            await asyncio.to_thread(self._start_watches)
        except KazooException as exc:
            await self.aclose()
            raise Unavailable(
                f"ZooKeeper at {self.hosts}: could not set up {self.paths.root}/: {exc!r}"
            ) from exc
        log.info("registry connected to ZooKeeper at %s (root %s)", self.hosts, self.paths.root)

    def _start_watches(self) -> None:
        client = self._zk
        for kind in MemberKind:
            self._call(client.ensure_path_async, self.paths.kind_dir(kind))
        for kind in MemberKind:
            # The first call (and the DataWatches it starts) happens here,
            # before start() returns.
            ChildrenWatch(client, self.paths.kind_dir(kind), partial(self._on_children, kind))

    async def aclose(self) -> None:
        """Removes this process's nodes and closes the session."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        for listeners in self._listeners.values():
            listeners.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            self._client.remove_listener(self._on_state)
        if self._started and self._connected.is_set():
            # Closing the session would remove them too; deleting first makes
            # the removal visible before the close handshake.
            for path in [*self._own, *self._stale]:
                try:
                    await asyncio.to_thread(self._delete_own, path, _CLOSE_TIMEOUT)
                except KazooException as exc:
                    log.debug("could not delete %s on close: %r", path, exc)
        self._own.clear()
        self._stale.clear()
        if self._client_live:
            self._client_live = False
            await asyncio.to_thread(self._shutdown_client)

    def _shutdown_client(self) -> None:
        try:
            self._zk.stop()
        except KazooException as exc:
            log.warning("stopping the ZooKeeper client failed: %r", exc)
        finally:
            self._zk.close()

    @property
    def _zk(self) -> KazooClient:
        if self._client is None:
            raise FailedPrecondition("the ZooKeeper registry is not started")
        return self._client

    # -- own members ------------------------------------------------------

    async def register(self, member: Member) -> None:
        """Creates the member's ephemeral node. Raises ``AlreadyExists`` if a
        live session of another process holds it, ``Unavailable`` if
        ZooKeeper cannot be reached."""
        self._check_started()
        path = self.paths.member(member.kind, member.member_id)
        async with self._own_lock:
            await self._wait_connected(f"register {member.kind} {member.member_id}")
            try:
                await asyncio.to_thread(self._put_own, member)
            except KazooException as exc:
                self.errors += 1
                # The create may have gone through: clean it up when possible.
                self._stale.add(path)
                raise Unavailable(
                    f"could not register {member.kind} {member.member_id} in ZooKeeper "
                    f"at {self.hosts}: {exc!r}"
                ) from exc
            self._own[path] = member
            self._stale.discard(path)

    async def update(self, member: Member) -> None:
        """Writes the member's new data (re-creating its node if missing).
        While disconnected it is only remembered, and written on reconnection:
        callers' periodic work must not stall on a ZooKeeper outage."""
        self._check_started()
        path = self.paths.member(member.kind, member.member_id)
        self._own[path] = member
        self._stale.discard(path)
        if not self._connected.is_set():
            return
        async with self._own_lock:
            if self._own.get(path) is not member:
                return  # superseded by a later update or a deregister meanwhile
            try:
                await asyncio.to_thread(self._put_own, member)
            except AlreadyExists:
                self._own.pop(path, None)
                raise
            except KazooException as exc:
                self.errors += 1
                log.warning(
                    "update of %s %s failed (%r): written again on reconnection",
                    member.kind,
                    member.member_id,
                    exc,
                )

    async def deregister(self, member: Member) -> None:
        """Deletes the member's node if this session holds it."""
        if not self._started or self._closed:
            return
        path = self.paths.member(member.kind, member.member_id)
        if self._own.pop(path, None) is None and path not in self._stale:
            return
        self._stale.add(path)
        if not self._connected.is_set():
            return  # deleted on reconnection, or gone with the session
        async with self._own_lock:
            if path in self._own or path not in self._stale:
                return  # registered again meanwhile, or already deleted
            try:
                await asyncio.to_thread(self._delete_own, path)
            except KazooException as exc:
                self.errors += 1
                log.warning("deregistering %s failed (%r): retried on reconnection", path, exc)
                return
            self._stale.discard(path)

    async def _wait_connected(self, what: str) -> None:
        if self._connected.is_set():
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            raise Unavailable(
                f"{what}: no connection to ZooKeeper at {self.hosts} for {self.connect_timeout:g} s"
            ) from exc

    def _put_own(self, member: Member) -> None:
        """Makes the member's node an ephemeral node of this session holding
        its data (worker thread)."""
        client = self._zk
        path = self.paths.member(member.kind, member.member_id)
        data = member.to_json()
        wait = self.session_timeout * _TAKEOVER_FACTOR
        deadline = time.monotonic() + wait
        while True:
            try:
                self._call(client.create_async, path, data, ephemeral=True, makepath=True)
                return
            except NodeExistsError:
                # Ours (a create that succeeded although its reply was lost,
                # then retried) or another session's.
                pass
            gone = threading.Event()
            try:
                current, stat = self._call(client.get_async, path, watch=_setter(gone))
            except NoNodeError:
                continue
            session = client.client_id
            if session is None:
                continue  # disconnected meanwhile: the next create waits for it
            if stat.ephemeralOwner == session[0]:
                if current != data:
                    try:
                        self._call(client.set_async, path, data)
                    except NoNodeError:
                        continue
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AlreadyExists(
                    f"{member.kind} id {member.member_id!r} is registered in ZooKeeper at "
                    f"{self.hosts} ({path}) by another live session "
                    f"(0x{stat.ephemeralOwner:x}) that did not end within {wait:g} s: "
                    "another running process uses this id"
                )
            log.info(
                "%s is held by session 0x%x (a previous run of this process?): "
                "waiting up to %.1f s for it to expire",
                path,
                stat.ephemeralOwner,
                remaining,
            )
            gone.wait(remaining)

    def _delete_own(self, path: str, timeout: float | None = None) -> None:
        """Deletes ``path`` if this session holds it (worker thread)."""
        client = self._zk
        stat = self._call(client.exists_async, path, timeout=timeout)
        session = client.client_id
        if stat is None or session is None or stat.ephemeralOwner != session[0]:
            return  # gone, or another process's node now: never delete that
        with contextlib.suppress(NoNodeError):
            self._call(client.delete_async, path, timeout=timeout)

    def _call(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs a kazoo ``*_async`` operation (worker thread), retrying after a
        lost connection, for at most ``timeout`` (default ``connect_timeout``).

        Not kazoo's blocking calls: a request made while disconnected waits
        in kazoo's queue until the connection is back, however long that is.
        """
        timeout = kwargs.pop("timeout", None)
        budget = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        delay = 0.1
        while True:
            remaining = deadline - time.monotonic()
            try:
                return operation(*args, **kwargs).get(timeout=max(remaining, 0.0))
            except KazooTimeoutError:
                raise OperationTimeoutError(
                    f"no answer from ZooKeeper at {self.hosts} within {budget:g} s"
                ) from None
            except ConnectionClosedError:
                raise
            except (ConnectionLoss, SessionExpiredError):
                # Lost before an answer: the caller's checks (node owner) make
                # a repeated create or delete safe.
                if time.monotonic() + delay >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_DELAY)

    async def _resync_own(self, session_lost: bool) -> None:
        """After a reconnection: writes own members' latest data (re-creating
        nodes a lost session took along) and deletes deregistered ones."""
        async with self._own_lock:
            for path in list(self._stale):
                if path in self._own:
                    self._stale.discard(path)
                    continue
                try:
                    await asyncio.to_thread(self._delete_own, path)
                except KazooException as exc:
                    self.errors += 1
                    log.warning("could not delete %s: %r", path, exc)
                    continue
                self._stale.discard(path)
            count = 0
            for path in list(self._own):
                member = self._own.get(path)
                if member is None:
                    continue
                try:
                    await asyncio.to_thread(self._put_own, member)
                except AlreadyExists as exc:
                    log.error("not re-registered: %s", exc.message)
                    continue
                except KazooException as exc:
                    self.errors += 1
                    log.warning(
                        "could not re-register %s (%r): retried on the next reconnection",
                        path,
                        exc,
                    )
                    continue
                count += 1
        if session_lost and count:
            log.info("re-registered %d member(s) after the ZooKeeper session expired", count)

    # -- the view ----------------------------------------------------------

    def members(self, kind: MemberKind) -> list[Member]:
        return list(self._views[kind])

    def subscribe(self, kind: MemberKind, listener: Listener) -> Callable[[], None]:
        self._listeners[kind].append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners[kind]:
                self._listeners[kind].remove(listener)

        return unsubscribe

    def _on_children(self, kind: MemberKind, names: list[str]) -> bool | None:
        """ChildrenWatch callback (kazoo thread)."""
        if self._stopping.is_set():
            return False
        self._post(self._apply_children, kind, frozenset(names))
        new: list[str] = []
        with self._watch_lock:
            for name in names:
                path = self.paths.child(kind, name)
                if path not in self._watched:
                    self._watched.add(path)
                    new.append(name)
        for name in new:
            DataWatch(self._zk, self.paths.child(kind, name), partial(self._on_data, kind, name))
        return None

    def _on_data(
        self, kind: MemberKind, name: str, data: bytes | None, stat: Any, event: Any = None
    ) -> bool | None:
        """DataWatch callback (kazoo thread). Takes ``event`` so that kazoo never
        retries it with fewer arguments after a TypeError."""
        path = self.paths.child(kind, name)
        if self._stopping.is_set() or stat is None:
            # Deleted: stop watching; the ChildrenWatch starts a new DataWatch
            # if the node comes back.
            with self._watch_lock:
                self._watched.discard(path)
            self._post(self._apply_data, kind, name, None)
            return False
        self._post(self._apply_data, kind, name, _parse(path, kind, data))
        return None

    def _on_state(self, state: str) -> None:
        """Connection state listener (kazoo's connection thread): must not block."""
        self._post(self._state_changed, state)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or self._stopping.is_set():
            return
        # RuntimeError: the loop closed, nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _apply_children(self, kind: MemberKind, names: frozenset[str]) -> None:
        self._children[kind] = set(names)
        self._publish(kind)

    def _apply_data(self, kind: MemberKind, name: str, member: Member | None) -> None:
        if member is None:
            self._data[kind].pop(name, None)
        else:
            self._data[kind][name] = member
        self._publish(kind)

    def _publish(self, kind: MemberKind) -> None:
        if self._closed or self._loop is None:
            return
        data = self._data[kind]
        view = sorted(
            (data[name] for name in self._children[kind] if name in data),
            key=lambda member: member.member_id,
        )
        if view == self._views[kind]:
            return
        self._views[kind] = view
        for listener in list(self._listeners[kind]):
            self._loop.call_soon(listener, list(view))

    def _state_changed(self, state: str) -> None:
        if self._closed:
            return
        if state == KazooState.SUSPENDED:
            self.errors += 1
            self._connected.clear()
            self._disconnected = True
            log.warning(
                "lost the connection to ZooKeeper at %s: serving the last view of members",
                self.hosts,
            )
        elif state == KazooState.LOST:
            self.errors += 1
            self._connected.clear()
            self._disconnected = self._session_lost = True
            log.warning(
                "ZooKeeper session expired: this process's registrations are gone until "
                "it reconnects and registers them again"
            )
        elif state == KazooState.CONNECTED and self._disconnected:
            self._connected.set()
            lost = self._session_lost
            self._disconnected = self._session_lost = False
            log.info(
                "reconnected to ZooKeeper at %s (%s session)", self.hosts, "new" if lost else "same"
            )
            # No explicit re-read of the view here: the ChildrenWatch and every
            # DataWatch fetch again on CONNECTED by themselves, and a second,
            # parallel read could land after (and undo) a newer watch result.
            self._spawn(self._resync_own(lost))
        elif state == KazooState.CONNECTED:
            self._connected.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("registry background work failed", exc_info=task.exception())

    def _check_started(self) -> None:
        if not self._started or self._closed:
            raise FailedPrecondition("the ZooKeeper registry is not running (start() first)")


def _parse(path: str, kind: MemberKind, data: bytes | None) -> Member | None:
    try:
        member = Member.from_json(data or b"")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: not a member entry (%r)", path, exc)
        return None
    if member.kind != kind:
        log.warning("ignoring %s: a %s entry among the %ss", path, member.kind, kind)
        return None
    return member


def _setter(event: threading.Event) -> Callable[[Any], None]:
    """A kazoo watch that sets ``event`` whatever happened to the node."""
    return lambda _watched: event.set()
