"""Fixtures of the end-to-end suite: a ``cim dev`` cluster and consoles on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Client, Dev, Procs, StartClient, launch_client, start_dev
from .test_node_client import node_client  # noqa: F401 - shared with test_distributed


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def dev(procs: Procs) -> Iterator[Dev]:
    """``cim dev`` on free ports. At teardown it gets SIGINT, like Ctrl-C in
    its terminal: it must stop by itself, log "shutting down" and exit 0 (it
    handles SIGINT/SIGTERM with a signal handler rather than dying of them)."""
    cluster = start_dev(procs)
    yield cluster
    status = cluster.proc.stop(timeout=10.0)
    output = cluster.proc.output
    assert status == 0, f"cim dev exited with {status} on SIGINT; output:\n{output[-4000:]}"
    assert "shutting down" in output
    assert "Traceback" not in output, output[-4000:]


@pytest.fixture
def start_client(procs: Procs, dev: Dev, tmp_path: Path) -> StartClient:
    """``start_client("alice")``: a console on the ``dev`` cluster in a
    pseudo-terminal, with its own chat-log folder (kept across restarts of the
    same user within a test) and CIM_PASSWORD set unless ``password=None``."""

    def start(
        name: str,
        *,
        password: str | None = "pw-default",
        tty: bool = True,
        wait: bool = True,
    ) -> Client:
        return launch_client(
            procs,
            name,
            dev.route_address,
            tmp_path / f"chatlog-{name}",
            password=password,
            tty=tty,
            wait=wait,
        )

    return start
