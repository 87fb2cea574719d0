"""An operator administers a running ``cim dev`` with the ``cim admin``
command, as printed at its start, while people chat in real consoles."""

from __future__ import annotations

import json
import subprocess

import pytest

from .helpers import CIM, Dev, StartClient, cim_env

pytestmark = pytest.mark.e2e


def cim_admin(dev: Dev, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CIM, "admin", *args, "--route", dev.route_address, "--admin-key", key or dev.admin_key],
        env=cim_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_an_operator_sends_notices_and_disables_a_user(dev: Dev, start_client: StartClient) -> None:
    # What cim dev printed is a command that works as shown.
    printed = f"cim admin user alice --route {dev.route_address} --admin-key {dev.admin_key}"
    assert printed in dev.proc.output
    alice = start_client("alice", password="alice-pw")
    bob = start_client("bob", password="bob-pw")

    to_all = cim_admin(dev, "notice", "--all", "maintenance at 22:00")
    assert to_all.returncode == 0, to_all.stderr
    assert "reached 2 online user(s)" in to_all.stdout
    for console in (alice, bob):
        console.expect(
            r"\*\*\* NOTICE from the administrators \(to everyone online\): maintenance at 22:00"
        )

    to_alice = cim_admin(dev, "notice", "--user", "alice", "your quota is low")
    assert to_alice.returncode == 0, to_alice.stderr
    assert f"to alice (#{alice.user_id}): delivered" in to_alice.stdout
    alice.expect(r"NOTICE from the administrators \(to you\): your quota is low")

    disabled = cim_admin(dev, "disable", "bob", "--reason", "spam")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() == f"bob (#{bob.user_id}) disabled: 1 session(s) ended"
    bob.expect(r"account disabled by an administrator: spam")
    bob.expect(r"disconnected for good")
    shown = cim_admin(dev, "user", "bob", "--json")
    assert shown.returncode == 0, shown.stderr
    reply = json.loads(shown.stdout)
    assert reply["account"]["disabled"] is True and reply["sessions"] == []
    # bob is refused at once; alice chats on.
    alice.sendline("still here")
    alice.expect(r"\* sent to 0 online user\(s\)")

    wrong = cim_admin(dev, "enable", "bob", key="dev:not-the-secret-0123456789")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        "Error: unknown admin key id or wrong secret (check --admin-key id:secret)"
    ]
    enabled = cim_admin(dev, "enable", "bob")
    assert enabled.returncode == 0 and "enabled" in enabled.stdout
    back = start_client("bob", password="bob-pw")
    assert back.user_id == bob.user_id
