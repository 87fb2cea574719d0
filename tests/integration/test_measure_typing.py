"""scripts/measure_typing.py against a real Redis: the counts it reports are
the ones the route's typing path is built to cost (docs/design/conversations.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.fixtures.redis_server import RedisServer

SCRIPT = Path(__file__).parents[2] / "scripts" / "measure_typing.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_typing_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_measured_counts_are_the_designs(redis_server: RedisServer) -> None:
    rows = {row.scenario: row for row in await _load().run(redis_server.url, 3)}
    counts = {name: (row.round_trips, row.commands, row.receivers) for name, row in rows.items()}
    assert counts == {
        # One pipelined session read per batch, whatever its size.
        "private, 1 note": (1, 1, 1),
        "private, 20 notes": (1, 20, 20),
        # The group's version, then its members' sessions (odd ids are online).
        "group of 10, 1 note": (2, 10, 4),
        "group of 100, 1 note": (2, 100, 49),
        # Over --typing-max-members: the version alone, no session read.
        "group of 1,000 (over the limit), 1 note": (1, 1, 0),
        # A moved membership reads the group's record once more (3 commands).
        "group of 100, membership moved": (3, 103, 49),
    }
