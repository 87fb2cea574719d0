"""What every long-running ``cim`` command does around the library: logging,
the event loop, errors as one line, and running until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, NoReturn, Protocol

import click

from cim.cli import logs
from cim.cli.options import ZooKeeperFlags
from cim.core.members import MemberKind
from cim.errors import CimError
from cim.registry.base import Registry

log = logging.getLogger("cim")


def setup_logging(level: str, log_format: str = "text") -> None:
    """Logging to stderr (see :mod:`cim.cli.logs`); the library itself never configures it."""
    logs.setup_logging(level, log_format.lower())


def fail(message: str) -> NoReturn:
    """Ends the command with ``Error: message`` on one line and exit status 1."""
    raise click.ClickException(" ".join(message.split()))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A ``ValueError`` (bad settings, unusable TLS files) ends the command in one line."""
    try:
        yield
    except ValueError as exc:
        fail(str(exc))


def split_addresses(values: tuple[str, ...]) -> list[str]:
    """``("a:1,b:2", "c:3")`` -> ``["a:1", "b:2", "c:3"]``."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs on uvloop when installed (measurably faster for grpc.aio)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(main)


async def wait_for_signal() -> None:
    """Returns on SIGINT or SIGTERM. The handlers stay until the loop closes:
    a second signal while the process stops in order (a chat server drains)
    does not cut that short."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    await signalled.wait()


class Service(Protocol):
    """A route, a chat server or an embedded cluster, as a command runs it."""

    async def start(self) -> None: ...

    async def wait(self) -> None: ...


async def serve(
    service: Service,
    *,
    stop: Callable[[], Awaitable[None]],
    release: Callable[[], Awaitable[None]],
    started: Callable[[], str],
) -> None:
    """Starts ``service`` (a failure ends the command in one line), prints
    ``started()``, then waits for a signal or the service's end, and runs
    ``stop``; ``release`` closes what the service used, in every case."""
    try:
        await service.start()
    except (OSError, CimError) as exc:
        await stop()
        await release()
        fail(str(exc))
    click.echo(started())
    sys.stdout.flush()
    ended = asyncio.ensure_future(service.wait())
    signalled = asyncio.ensure_future(wait_for_signal())
    try:
        await asyncio.wait([ended, signalled], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        await stop()
    finally:
        for task in (ended, signalled):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await release()


async def open_registry(
    flags: ZooKeeperFlags, static_kind: MemberKind, static_addresses: list[str]
) -> Registry:
    """ZooKeeper when --zk is given, else the static addresses from flags."""
    registry: Registry
    if flags.zk:
        from cim.registry.zookeeper import ZooKeeperRegistry

        registry = ZooKeeperRegistry(
            flags.zk, flags.zk_root, flags.zk_session_timeout, flags.zk_connect_timeout
        )
    else:
        from cim.registry.static import StaticRegistry

        registry = StaticRegistry.from_addresses(static_kind, static_addresses)
    try:
        await registry.start()
    except CimError as exc:
        fail(exc.message)
    return registry


def where_members(flags: ZooKeeperFlags, static_what: str, static_addresses: list[str]) -> str:
    """Where a process finds the others, for its start-up line."""
    if flags.zk:
        return f"ZooKeeper {flags.zk}{flags.zk_root}"
    return f"{static_what} " + ", ".join(static_addresses)
