"""``cim status`` as a command: its flags, exit statuses and report; the
checks against real clusters are in tests/e2e/test_status.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cim.cli import main
from cim.cli.status import format_duration, render
from cim.cluster_status import ClusterStatus, MemberStatus, StoreStatus, without_credentials
from cim.processes import free_ports


def test_without_zookeeper_or_route_it_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["status"], env={"CIM_ZK": "", "CIM_ROUTES": ""})
    assert result.exit_code == 2
    assert "--zk HOST:PORT, or a route with --route" in result.output


def test_nothing_listening_is_unhealthy_and_the_json_parses() -> None:
    (port,) = free_ports(1)
    result = CliRunner().invoke(
        main, ["status", "--route", f"127.0.0.1:{port}", "--timeout", "0.5", "--json"]
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["healthy"] is False
    assert report["routes"][0]["health"].startswith("unreachable")
    assert report["servers"] is None  # wired by address, none given: not listed


def test_unreachable_zookeeper_is_one_reason_not_a_traceback() -> None:
    (port,) = free_ports(1)
    result = CliRunner().invoke(
        main, ["status", "--zk", f"127.0.0.1:{port}", "--zk-connect-timeout", "0.5"]
    )
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith("UNHEALTHY: registry: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_report_shows_members_store_and_verdict() -> None:
    status = ClusterStatus(
        registry="ZooKeeper zk:2181/cim",
        routes=[MemberStatus("route", "r1", "h:1", "0.1.0", 1000.0, None, "serving")],
        servers=[
            MemberStatus("server", "s1", "h:2", "0.1.0", 1000.0, 3, "serving"),
            MemberStatus(
                "server", "s2", "h:3", None, None, None, "unreachable (UNAVAILABLE: refused)"
            ),
        ],
        store=StoreStatus("redis://h:6379/0", True, online_users=3),
        checked_at=1000.0 + 3725,
    )
    text = render(status)
    assert "  r1  h:1      0.1.0    1h02m   no metrics  serving" in text
    assert "  s1  h:2      0.1.0    1h02m   3        no metrics   serving" in text
    assert "store: ok (redis://h:6379/0); users online: 3" in text
    assert "rates: metrics not enabled" in text
    assert (
        text.splitlines()[-1]
        == "UNHEALTHY: chat server s2 at h:3: unreachable (UNAVAILABLE: refused)"
    )


def test_report_shows_message_rates_from_members_metrics() -> None:
    status = ClusterStatus(
        registry="ZooKeeper zk:2181/cim",
        routes=[
            MemberStatus(
                "route", "r1", "h:1", "0.1.0", 1000.0, None, "serving", metrics="h:9", rate=12.5
            )
        ],
        servers=[
            MemberStatus("server", "s1", "h:2", "0.1.0", 1000.0, 3, "serving", "h:8", 7.0),
            MemberStatus("server", "s2", "h:3", "0.1.0", 1000.0, 2, "serving", "h:7", 5.5),
            # Serves metrics, but the scrape failed: no rate, and not a health problem.
            MemberStatus("server", "s3", "h:4", "0.1.0", 1000.0, 0, "serving", "h:6", None),
        ],
        checked_at=1000.0 + 60,
    )
    text = render(status)
    assert "ACCEPTED/S" in text and "DELIVERED/S" in text
    assert "  r1  h:1      0.1.0    1m00s   12.5        serving" in text
    assert "  s3  h:4      0.1.0    1m00s   0        -            serving" in text
    assert "rates: 12.5 msgs/s accepted, 12.5 msgs/s delivered" in text
    assert status.to_dict()["rates"] == {"accepted_per_second": 12.5, "delivered_per_second": 12.5}
    assert status.healthy


def test_no_chat_server_registered_is_unhealthy() -> None:
    status = ClusterStatus(
        registry="ZooKeeper zk:2181/cim",
        routes=[MemberStatus("route", "r1", "h:1", "0.1.0", 1.0, None, "serving")],
    )
    assert status.problems() == ["no chat server registered"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (75, "1m15s"), (3725, "1h02m"), (90061, "1d1h01m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_store_password_is_not_shown() -> None:
    assert without_credentials("redis://:s3cret@h:6379/0") == "redis://h:6379/0"
    assert without_credentials("redis://h:6379/0") == "redis://h:6379/0"
