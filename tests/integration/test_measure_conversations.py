"""scripts/measure_conversations.py against a real Redis: what it measures is
what the design's cost model says, and the design's scripts keep its rules
(claims, members only, idempotent by message id, history up to a removal)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fixtures.redis_server import RedisServer

SCRIPT = Path(__file__).parents[2] / "scripts" / "measure_conversations.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_conversations_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mc = _load()


@pytest.fixture
def conn(redis_server: RedisServer) -> Iterator[Any]:
    connection = mc.Connection("127.0.0.1", redis_server.port)
    connection.load_scripts()
    try:
        yield connection
    finally:
        connection.close()


def test_a_brief_run_measures_what_the_cost_model_says(conn: Any) -> None:
    results = mc.run_all(conn, quick=True, group_sizes=(10, 100), conversation_counts=(10, 200))
    seen = {(r.model, r.op, r.size) for r in results}
    assert ("c", "group", 100) in seen and ("b", "login", 200) in seen
    for r in results:
        slots = r.slots or 1
        assert r.round_trips == mc.round_trips(r.model, r.op), r
        assert r.commands == mc.commands(r.model, r.op, r.size, slots), r
        assert r.p50_ms <= r.p99_ms
    group = {(r.model, r.size): r for r in results if r.op == "group"}
    # the body once (b, c) instead of a copy per member (a)
    assert group["c", 100].memory_bytes < group["a", 100].memory_bytes / 2
    assert group["b", 100].memory_bytes == pytest.approx(group["b", 10].memory_bytes, rel=0.2)
    # everything the run wrote is gone again
    assert not list(conn.scan("mc*"))


def _append(w: Any, cid: str, sender: int, mid: str) -> list[Any]:
    (reply,) = w.conn.pipeline(
        [mc._conv_append(w, cid, sender, mid, b"body-" + mid.encode(), pending=True)]
    )
    return list(reply)


def test_the_conversation_append_keeps_the_send_rules(conn: Any) -> None:
    w = mc.World(conn, mc.Keys("mcrules:"))
    try:
        w.add_group("g:9", [1, 2, 3])
        first = _append(w, "g:9", 1, "m1")
        # position 1, nothing stale, and the members (the route had none cached)
        assert first[0] == 1 and first[2] == 0 and sorted(int(m) for m in first[3:]) == [1, 2, 3]
        # a retry of the same send finds its claim: nothing appended
        assert _append(w, "g:9", 1, "m1")[0] == -1
        # a non-member is refused before anything is written
        assert _append(w, "g:9", 7, "m2") == [-2]
        assert _append(w, "g:9", 2, "m3")[0] == 2
        # idempotent by message id (a crashed fan-out redone without the claim)
        conn.call("DEL", w.keys.conv_claim("g:9", 2, "c-m3"))
        assert _append(w, "g:9", 2, "m3")[0] == 2
        assert conn.call("ZCARD", w.keys.conv("g:9", "pending")) == 2
        # a fan-out left pending for over 5 s comes back with the next append;
        # one older than the id window is dropped (members may have trimmed it)
        pending = w.keys.conv("g:9", "pending")
        conn.call("ZADD", pending, mc.now_ms() - 6_000, "m1", 1, "m3")
        w.member_ver["g:9"] = first[1]
        assert _append(w, "g:9", 3, "m4")[2:] == [1, b"m1"]
        assert conn.call("ZSCORE", pending, "m3") is None
    finally:
        conn.drop("mcrules:")


def test_pointers_are_idempotent_and_history_ends_at_a_removal(conn: Any) -> None:
    w = mc.World(conn, mc.Keys("mchist:"))
    try:
        w.add_group("g:5", [1, 2, 3, 4])
        for n in range(1, 6):
            _append(w, "g:5", 1, f"m{n}")
        (row,) = conn.pipeline(mc._pointers(w, [2], "g:5", 1, "m1"))
        (again,) = conn.pipeline(mc._pointers(w, [2], "g:5", 1, "m1"))
        assert row[0] == again[0] == 1
        assert conn.call("ZCARD", w.keys.inbox(2)[1]) == 1
        # user 4 was removed at seq 3: reads up to it; user 9 never was a member
        conn.call("HDEL", w.keys.conv("g:5", "members"), 4)
        conn.call("HSET", w.keys.conv("g:5", "left"), 4, 3)
        names = [w.keys.conv("g:5", n) for n in ("members", "left", "log", "bodies")]

        def page(reader: int, before: int = 0) -> list[Any]:
            return list(conn.call("EVALSHA", conn.sha["history"], 4, *names, reader, before, 50, 1))

        assert [int(s) for s in page(2)[::2]] == [5, 4, 3, 2, 1]
        assert [int(s) for s in page(2, before=3)[::2]] == [2, 1]
        assert [int(s) for s in page(4)[::2]] == [3, 2, 1]
        assert page(9) == [-2]
        # a send moves the sender's read cursor to it, never back
        mc.send(w, "c", 1, "g:5", [2, 3])
        assert conn.call("HGET", w.keys.user(1, "read"), "g:5") == b"6"
        assert conn.call("ZSCORE", w.keys.user(3, "convs"), "g:5") is not None
    finally:
        conn.drop("mchist:")
