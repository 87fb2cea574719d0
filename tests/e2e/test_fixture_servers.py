"""The suite's Redis and ZooKeeper servers die with the test process: a run
killed by a CI timeout (SIGKILL to pytest) leaves none of them behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.children import kill_and_reap, start_parent, wait_gone

STARTS = {
    "redis": (
        "from tests.fixtures.redis_server import RedisServer, free_port\n"
        "server = RedisServer(Path(directory), free_port())\n"
    ),
    "zookeeper": (
        "from tests.fixtures.zookeeper_server import ZooKeeperServer\n"
        "server = ZooKeeperServer(Path(directory))\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(STARTS))
def test_a_fixture_server_dies_with_the_test_process(kind: str, tmp_path: Path) -> None:
    parent, server = start_parent(
        "from pathlib import Path\n"
        f"directory = {str(tmp_path)!r}\n" + STARTS[kind] + "server.start()\n"
        "print(server.pid, flush=True)\n"
    )
    kill_and_reap(parent)
    assert wait_gone(server), f"{kind} (pid {server}) outlived the test process"
