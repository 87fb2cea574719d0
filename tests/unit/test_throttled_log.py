"""The throttled warning behind malformed-request logging: one line per
interval, and the next line counts what was held back."""

from __future__ import annotations

import logging

import pytest

from cim.grpcutil import Throttled


def test_one_line_per_interval_counting_what_it_held(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttled = Throttled(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="cim.grpcutil"):
        for _ in range(50):
            throttled.warning("bad request")
            now[0] += 0.1  # 5 s in all: within the interval
        now[0] = 111.0
        throttled.warning("bad request")
        now[0] = 122.0
        throttled.warning("bad request")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request",
        "bad request (49 more since the last report)",
        "bad request",
    ]
