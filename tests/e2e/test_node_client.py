"""The Node.js example client (examples/node) against a real cluster.

The cluster runs in the test's event loop (``cim.testing.cluster``); the Node
client is a real ``node`` process driven with asyncio subprocesses (a blocking
subprocess call would stall the servers) whose JSON lines on stdout are read
as events. ``npm ci`` runs once per session when node_modules is missing or
older than package-lock.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cim.core import conversations
from cim.proto.v1 import common_pb2
from cim.testing import TestCluster, cluster

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
READ_TIMEOUT = 10.0
PRIVATE = common_pb2.MESSAGE_KIND_PRIVATE
GROUP = common_pb2.MESSAGE_KIND_GROUP
MEMBERSHIP = common_pb2.MESSAGE_KIND_MEMBERSHIP
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
STORED = common_pb2.DELIVERY_STATUS_STORED


@pytest.fixture(scope="session")
def node_client() -> Path:
    """examples/node/client.js, its dependencies installed with ``npm ci``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        pytest.fail(
            f"{missing} not found on PATH: the Node.js client test needs Node.js >= 18 "
            "and npm (e.g. apt-get install nodejs npm)",
            pytrace=False,
        )
    lock = NODE_DIR / "package-lock.json"
    # npm ci writes node_modules/.package-lock.json last: its age tells whether
    # the install is complete and matches the committed lock file.
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm ci in {NODE_DIR} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
    return NODE_DIR / "client.js"


class NodeClient:
    """One running ``node client.js``: its stdout read as JSON events."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, script: Path, route: str, *args: str) -> NodeClient:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            "--route",
            route,
            *args,
            cwd=script.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def next_event(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"node client ended early: {await self._stderr()}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def wait_for(self, name: str, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Reads events up to the first one called ``name``."""
        async with asyncio.timeout(timeout):
            while (event := await self.next_event()).get("event") != name:
                pass
        return event

    async def finish(self, timeout: float = READ_TIMEOUT) -> tuple[int, str]:
        """Reads the remaining events; the exit status and stderr."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            stdout, stderr = await self.process.communicate()
        self.events.extend(json.loads(line) for line in stdout.decode().splitlines() if line)
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()

    async def _stderr(self) -> str:
        assert self.process.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                return (await self.process.stderr.read()).decode()
        return "(no stderr)"

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    async def aclose(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.communicate()


@contextlib.asynccontextmanager
async def _node(script: Path, c: TestCluster, *args: str) -> AsyncIterator[NodeClient]:
    client = await NodeClient.start(script, c.route_address, *args)
    try:
        yield client
    finally:
        await client.aclose()


async def _run_node(script: Path, c: TestCluster, *args: str) -> tuple[int, str, NodeClient]:
    async with _node(script, c, *args) as client:
        code, stderr = await client.finish()
        return code, stderr, client


def _args(user: str, *more: Any, password: str = "node-pw", timeout: float = 15) -> Sequence[str]:
    return ["--user", user, "--password", password, "--timeout", str(timeout), *map(str, more)]


async def test_python_and_node_exchange_private_and_group_messages(node_client):
    async with cluster() as c:
        py = await c.client("pyuser")
        async with _node(
            node_client,
            c,
            *_args(
                "nodeuser",
                "--send-to",
                py.user_id,
                "--text",
                "hello from node",
                "--group",
                "node to all",
                "--wait-for",
                1,
            ),
        ) as node:
            registered = await node.wait_for("registered")
            logged_in = await node.wait_for("logged_in")
            node_id = logged_in["user_id"]
            assert registered["user_id"] == node_id
            assert registered["created"] is True
            assert logged_in["server"]

            # Node -> Python, privately then to the group.
            private = await c.next_message(py)
            group = await c.next_message(py)
            assert (private.text, private.kind) == ("hello from node", PRIVATE)
            assert (private.sender_id, private.sender_name) == (node_id, "nodeuser")
            assert private.receiver_id == py.user_id
            assert (group.text, group.kind, group.group_id) == ("node to all", GROUP, "all")
            assert group.sender_id == node_id

            # Python -> Node: the Node client exits after its one expected message.
            reply = await py.send_private(node_id, "hello from python")
            assert reply.status == DELIVERED
            code, stderr = await node.finish()

        assert code == 0, stderr
        sent = node.named("sent")
        assert [(s["kind"], s["status"]) for s in sent] == [
            ("private", "delivered"),
            ("group", "delivered"),
        ]
        assert sent[1]["group_id"] == "all"  # no --group-id: CIM's broadcast
        assert sent[0]["message_id"] == private.message_id
        assert sent[1]["message_id"] == group.message_id
        assert sent[1]["recipients"] == 1
        [received] = node.named("message")
        assert received == {
            "event": "message",
            "sender_id": py.user_id,
            "sender_name": "pyuser",
            "text": "hello from python",
            "kind": "private",
            "receiver_id": node_id,
            "group_id": "",
            "message_id": reply.message_id,
            "stored": False,
            "seq": 1,  # the first message of the Node user's sequence
            "conversation_id": conversations.private_id(py.user_id, node_id),
            "position": 2,  # the conversation's second: after "hello from node"
        }
        assert node.events[-1] == {"event": "logged_out"}
        # Logged out: a message to the Node user is now stored, not delivered.
        assert (await py.send_private(node_id, "after logout")).status == STORED


async def test_node_runs_a_group_conversation_and_pages_back_through_it(node_client):
    async with cluster() as c:
        py = await c.client("pyuser")
        async with _node(
            node_client,
            c,
            *_args(
                "nodeowner",
                "--create-group",
                "node team",
                "--members",
                py.user_id,
                "--group",
                "hello group",
                "--history",
                "--page",
                2,
                "--wait-for",
                2,  # its own group's creation, then the Python user's reply
            ),
        ) as node:
            node_id = (await node.wait_for("logged_in"))["user_id"]
            created = await c.next_message(py)
            assert (created.kind, created.sender_id) == (MEMBERSHIP, node_id)
            assert created.membership.action == common_pb2.MEMBERSHIP_ACTION_CREATED
            gid = created.group_id
            hello = await c.next_message(py)
            assert (hello.text, hello.kind, hello.sender_id) == ("hello group", GROUP, node_id)
            assert (hello.group_id, hello.conversation_id, hello.position) == (gid, gid, 2)
            reply = await py.send_group("hi node", group_id=gid)
            code, stderr = await node.finish()

        assert code == 0, stderr
        assert node.named("group_created") == [
            {
                "event": "group_created",
                "group_id": gid,
                "name": "node team",
                "member_count": 2,
                "position": 1,
            }
        ]
        [sent] = node.named("sent")
        assert sent == {
            "event": "sent",
            "message_id": hello.message_id,
            "status": "delivered",
            "recipients": 1,
            "kind": "group",
            "group_id": gid,
        }
        creation = "nodeowner created group 'node team' with pyuser"
        received = node.named("message")
        assert [(m["kind"], m["position"], m["text"]) for m in received] == [
            ("membership", 1, creation),
            ("group", 3, "hi node"),
        ]
        assert all(m["group_id"] == gid == m["conversation_id"] for m in received)
        assert received[1]["message_id"] == reply.message_id
        # The history, newest first, two a page: the reply, the node's own
        # message and the creation.
        history = node.named("history")
        assert [(h["position"], h["kind"], h["sender_id"], h["text"]) for h in history] == [
            (3, "group", py.user_id, "hi node"),
            (2, "group", node_id, "hello group"),
            (1, "membership", node_id, creation),
        ]
        assert all(h["conversation_id"] == gid for h in history)
        assert node.named("history_end") == [
            {
                "event": "history_end",
                "conversation_id": gid,
                "pages": 2,
                "head_position": 3,
                "dropped_through_position": 0,
            }
        ]
        assert node.events[-1] == {"event": "logged_out"}
        # The Python client reads the same history.
        page = await py.history(gid)
        assert [m.message_id for m in page.messages] == [h["message_id"] for h in history]


async def test_node_gets_messages_stored_while_offline(node_client):
    async with cluster() as c:
        code, stderr, first = await _run_node(node_client, c, *_args("late"))
        assert code == 0, stderr
        [registered] = first.named("registered")
        py = await c.client("pyuser")

        reply = await py.send_private(registered["user_id"], "while you were away")
        assert reply.status == STORED
        code, stderr, node = await _run_node(node_client, c, *_args("late", "--wait-for", 1))

        assert code == 0, stderr
        [message] = node.named("message")
        assert message["text"] == "while you were away"
        assert message["sender_id"] == py.user_id
        assert message["stored"] is True
        assert message["seq"] == 1
        assert node.named("registered")[0]["created"] is False

        # The Node client acked what it printed: its next login replays none
        # of it, and the first message it prints is a new one.
        async with _node(node_client, c, *_args("late", "--wait-for", 1)) as again:
            await again.wait_for("logged_in")
            assert (await py.send_private(registered["user_id"], "and now")).status == DELIVERED
            code, stderr = await again.finish()
        assert code == 0, stderr
        assert [(m["text"], m["seq"]) for m in again.named("message")] == [("and now", 2)]


async def test_node_client_failures_exit_1_with_an_error_line(node_client):
    async with cluster() as c:
        await c.client("taken", password="python-pw")

        code, stderr, node = await _run_node(node_client, c, *_args("taken", password="other"))
        assert code == 1
        assert "ALREADY_EXISTS" in stderr
        assert node.events == []

        args = _args("lonely", "--send-to", 999, "--text", "hi")
        code, stderr, _ = await _run_node(node_client, c, *args)
        assert code == 1
        assert "NOT_FOUND" in stderr

        for args, words in (
            (_args("reader", "--history"), "--history reads a group"),
            (_args("reader", "--group-id", "g:0"), "--group-id must be a group id (g:N)"),
            (_args("reader", "--members", "2"), "--members goes with --create-group"),
            (_args("reader", "--create-group", "x", "--members", "2,x"), "--members must be"),
            (_args("reader", "--group-id", "g:1", "--page", 101), "--page must be"),
        ):
            code, stderr, node = await _run_node(node_client, c, *args)
            assert code == 1 and words in stderr, stderr
            assert node.events == []  # refused before it registers
        # A group the Node user is not in: the route refuses its history.
        args = _args("reader", "--group-id", "g:999", "--history")
        code, stderr, node = await _run_node(node_client, c, *args)
        assert code == 1
        assert "History at" in stderr and "PERMISSION_DENIED" in stderr
        assert "you are not a member of group g:999" in stderr
        assert node.events[-1] == {"event": "logged_out"}

        args = _args("waiter", "--wait-for", 1, timeout=1)
        code, stderr, node = await _run_node(node_client, c, *args)
        assert code == 1
        assert "timed out after 1 s, received 0 of 1 messages" in stderr
        assert node.named("logged_in")
        assert node.events[-1] == {"event": "logged_out"}  # logs out on failure too
