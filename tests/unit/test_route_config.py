"""RouteConfig's own checks of the settings that have no flag."""

from __future__ import annotations

import pytest

from cim.testing import fast_route_config as make_route_config


@pytest.mark.parametrize("delay", [0.0, -1.0, float("nan"), 600.0, 601.0])
def test_the_fan_out_repair_delay_is_positive_and_below_the_dedup_window(delay: float) -> None:
    # At or past the window a fan-out left undone would be dropped, never repaired.
    with pytest.raises(ValueError, match="fan-out repair delay must be positive and below"):
        make_route_config(fanout_repair_after=delay, send_dedup_window=600.0)
    assert make_route_config(fanout_repair_after=0.2).retention.repair_after == 0.2
