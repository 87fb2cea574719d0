"""scripts/measure_sends.py against a real Redis: the commands a private send
makes are the ones its script is built to make (docs/design/conversations.md,
"What that one script costs Redis")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.redis_server import RedisServer

SCRIPT = Path(__file__).parents[2] / "scripts" / "measure_sends.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_sends_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_a_private_send_makes_the_designed_redis_calls(
    redis_server: RedisServer, key_prefix: str
) -> None:
    result = await _load().measure(redis_server.url, 3200, 20, key_prefix)
    commands = result["commands"]
    # One script call per batch of 20; inside it, per send: the claim, the
    # log's and the sequence's heads, the log, the pointer and both lists
    # (ZADD), the body, the last message, the pointer's entry and the
    # sender's cursor (HSET), both count checks, the session, the overdue scan.
    assert commands.pop("evalsha") == 0.05
    assert {name: commands.pop(name) for name in ("set", "hincrby", "zadd", "hset")} == {
        "set": 1,
        "hincrby": 2,
        "zadd": 4,
        "hset": 4,
    }
    assert {name: commands.pop(name) for name in ("zcard", "hmget", "zrangebyscore")} == {
        "zcard": 2,
        "hmget": 1,
        "zrangebyscore": 1,
    }
    # The age bound: the oldest entry and its body on every 16th entry of a
    # log and of a sequence (2 calls / 16, twice).
    assert commands.pop("zrange") == pytest.approx(2 / 16, abs=0.02)
    assert commands.pop("hget") == pytest.approx(2 / 16, abs=0.02)
    assert commands == {}  # nothing else: no look-up of a fresh id, no acked-pointer trim
    assert result["sends"] == 3200 and result["redis_cpu_us_per_send"] > 0
