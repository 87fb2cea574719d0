"""``cim dev --log-format json``: every line a process logs is one JSON object,
carries the user it is about where the process knows it (and the route's
lines about a message its trace_id), and never shows a password or a session
token, even at debug level."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cim.client.client import CimClient
from cim.config import ClientConfig
from cim.core.liveness import Backoff
from cim.errors import CimError
from cim.processes import free_ports

from .helpers import CIM, cim_env

pytestmark = pytest.mark.e2e

PASSWORD = "Hunter2-very-secret-pw"


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"exited with {proc.returncode}: {path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {path.read_text()}"
        time.sleep(0.1)


def start_dev(
    route_port: int, server_ports: list[int], stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    """``cim dev`` with JSON logs (from CIM_LOG_FORMAT) at debug level."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(
            [
                CIM,
                "dev",
                "--route-port",
                str(route_port),
                "--server-ports",
                ",".join(map(str, server_ports)),
                "--log-level",
                "debug",
            ],
            env=cim_env(CIM_LOG_FORMAT="json"),
            stdout=out,
            stderr=err,
        )


async def test_json_logs_of_a_chat_carry_the_user_and_no_secret(tmp_path: Path) -> None:
    route_port, *server_ports = free_ports(3)
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    proc = start_dev(route_port, server_ports, stdout, stderr)
    try:
        wait_for(stdout, "Press Ctrl-C to stop.", proc)
        config = ClientConfig(
            routes=(f"127.0.0.1:{route_port}",),
            backoff=Backoff(base=0.05, cap=0.2, retries=20),
            rpc_timeout=5.0,
        )
        alice = CimClient("alice", PASSWORD, config)
        bob = CimClient("bob", PASSWORD + "-bob", config)
        await alice.start()
        await bob.start()
        tokens = [alice.route.token, bob.route.token]
        assert all(tokens)
        # A refused login is logged too: its password must not be.
        intruder = CimClient("alice", "wrong-" + PASSWORD, config)
        with pytest.raises(CimError):
            await intruder.login()
        await intruder.close()
        await alice.send_private(bob.user_id, "hello bob")
        inbox = bob.messages().__aiter__()
        async with asyncio.timeout(5.0):
            message = await anext(inbox)
        assert message.text == "hello bob"
        await alice.send_group("hello all")
        async with asyncio.timeout(5.0):
            group_message = await anext(inbox)
        assert group_message.text == "hello all"
        user_ids = {alice.user_id, bob.user_id}
        alice_id = alice.user_id
        await alice.close()
        await bob.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15.0) == 0, stderr.read_text()

    output = stdout.read_text() + stderr.read_text()
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    assert lines, "cim dev logged nothing"
    entries = [json.loads(line) for line in lines]  # each line one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    assert any(entry["message"] == "shutting down" for entry in entries)
    # The chat server's lines about a connected user say which user.
    logged_users = {entry["user_id"] for entry in entries if "user_id" in entry}
    assert user_ids <= logged_users, entries
    # The route's lines about a user carry that user (the first one named).
    route_entries = [entry for entry in entries if entry["logger"].startswith("cim.route")]
    about_users = [e for e in route_entries if re.search(r"\buser \d+", e["message"])]
    assert about_users, route_entries
    for entry in about_users:
        named = int(re.search(r"\buser (\d+)", entry["message"])[1])  # type: ignore[index]
        assert entry.get("user_id") == named, entry
    assert {e["user_id"] for e in about_users} == user_ids, about_users
    # Its lines about a message carry the message's trace_id (the one the
    # receiver got with it), and the sender as the user.
    for sent in (message, group_message):
        about = [e for e in route_entries if sent.message_id in e["message"]]
        assert about, (sent, route_entries)
        for entry in about:
            assert entry["trace_id"] == sent.trace_id, entry
            assert entry["user_id"] == alice_id, entry
    assert PASSWORD not in output
    for token in tokens:
        assert token not in output
        assert token.split(".")[2] not in output  # not even the signature
