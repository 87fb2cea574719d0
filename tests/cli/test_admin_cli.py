"""``cim admin`` through click's ``CliRunner``, against a ``cim dev`` process:
human and JSON output, one-line errors and exit statuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cim.cli import main
from cim.client.client import CimClient
from cim.config import ClientConfig
from cim.proto.v1 import common_pb2

from .conftest import DevProcess, assert_fails, invoke


def admin(dev: DevProcess, *args: str, key: str | None = None) -> list[str]:
    return ["admin", *args, "--route", dev.route_address, "--admin-key", key or dev.admin_key]


def chat(dev: DevProcess, name: str, tmp_path: Path) -> str:
    """Registers ``name`` (and logs in and out) with ``cim client``; its output."""
    result = invoke(
        "client", "--user", name, "--password", "pw-" + name, "--route", dev.route_address,
        "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


async def next_message(dev: DevProcess, name: str) -> common_pb2.ChatMessage:
    config = ClientConfig(routes=(dev.route_address,), rpc_timeout=5.0)
    async with CimClient(name, "pw-" + name, config) as client:
        await client.start(register=False)
        async with asyncio.timeout(5):
            async for message in client.messages():
                return message
    raise AssertionError("no message")


def test_every_subcommand_takes_the_route_the_key_tls_and_json() -> None:
    group = main.commands["admin"]
    assert set(group.commands) == {"user", "kick", "disable", "enable", "notice"}  # type: ignore[attr-defined]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        options = {
            param.opts[0]: param for param in command.params if param.opts[0].startswith("-")
        }
        for flag in ("--route", "--admin-key", "--json", "--timeout", "--tls", "--tls-ca"):
            assert flag in options, (name, flag)
        assert options["--admin-key"].envvar == "CIM_ADMIN_KEY", name


def test_a_call_without_an_admin_key_is_a_usage_error() -> None:
    assert_fails(invoke("admin", "user", "ann"), 2, "--admin-key id:secret")


def test_a_notice_needs_one_user_or_all() -> None:
    key = ["--admin-key", "ops:0123456789abcdef"]
    assert_fails(invoke("admin", "notice", "hi", *key), 2, "--user NAME|ID or --all")
    assert_fails(invoke("admin", "notice", "hi", "--user", "ann", "--all", *key), 2, "--all")


def test_an_unreachable_route_is_one_line() -> None:
    result = invoke(
        "admin", "user", "ann", "--route", "127.0.0.1:1", "--admin-key", "a:b", "--timeout", "2"
    )
    assert_fails(result, 1, "route 127.0.0.1:1 unreachable")


def test_look_up_disable_enable_and_notices(dev_process: DevProcess, tmp_path: Path) -> None:
    chat(dev_process, "ann", tmp_path)

    shown = invoke(*admin(dev_process, "user", "ann"))
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[0].endswith("ann (enabled)")
    assert "sessions: none (offline)" in shown.output
    as_json = invoke(*admin(dev_process, "user", "ann"), "--json")
    account = json.loads(as_json.output)["account"]
    assert (account["user_name"], account["disabled"]) == ("ann", False)
    by_id = invoke(*admin(dev_process, "user", account["user_id"]), "--json")
    assert json.loads(by_id.output)["account"] == account

    disabled = invoke(*admin(dev_process, "disable", "ann", "--reason", "spam"))
    assert disabled.exit_code == 0, disabled.output
    assert disabled.output.strip() == f"ann (#{account['user_id']}) disabled: 0 session(s) ended"
    assert "DISABLED: spam" in invoke(*admin(dev_process, "user", "ann")).output
    refused = invoke(
        "client", "--user", "ann", "--password", "pw-ann", "--route", dev_process.route_address,
        "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert_fails(refused, 1, "account disabled")
    enabled = invoke(*admin(dev_process, "enable", "ann"), "--json")
    assert json.loads(enabled.output)["changed"] is True
    assert "* logged in as ann" in chat(dev_process, "ann", tmp_path)

    stored = invoke(*admin(dev_process, "notice", "--user", "ann", "welcome back"))
    assert stored.exit_code == 0, stored.output
    assert "stored: they get it at their next login" in stored.output
    message = asyncio.run(next_message(dev_process, "ann"))
    assert (message.kind, message.sender_id, message.text) == (
        common_pb2.MESSAGE_KIND_SYSTEM,
        0,
        "welcome back",
    )
    to_all = invoke(*admin(dev_process, "notice", "--all", "hello all"), "--json")
    assert json.loads(to_all.output)["recipients"] == 0
    kicked = invoke(*admin(dev_process, "kick", "ann", "--reason", "r"))
    assert kicked.output.strip() == "kicked ann: 0 session(s) ended"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("dev:not-the-secret-at-all", "unknown admin key id or wrong secret (check --admin-key"),
        ("nobody:not-the-secret-at-all", "unknown admin key id or wrong secret"),
    ],
)
def test_a_wrong_admin_key_is_one_line(dev_process: DevProcess, key: str, expected: str) -> None:
    assert_fails(invoke(*admin(dev_process, "user", "ann", key=key)), 1, expected)


def test_an_unknown_user_is_one_line_and_the_key_reads_its_variable(
    dev_process: DevProcess,
) -> None:
    result = invoke(
        "admin", "kick", "zed", "--route", dev_process.route_address,
        env={"CIM_ADMIN_KEY": dev_process.admin_key},
    )  # fmt: skip
    assert_fails(result, 1, "no user 'zed'")
