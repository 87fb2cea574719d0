"""The acceptance story: two people chat through ``cim dev`` in real consoles.

Each console runs ``cim client`` in a pseudo-terminal, so it is the
prompt_toolkit console a person gets; lines are typed and the screen is read.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from .helpers import Client, Dev, StartClient

pytestmark = pytest.mark.e2e


def online_users(console: Client, count: int, label: str = "") -> set[tuple[int, str]]:
    """Reads the answer of :olu / :pu: a header and ``count`` "  id  name" rows."""
    console.expect(rf"\* {count} user\(s\) online{re.escape(label)}:\n")
    rows = set()
    for _ in range(count):
        row = console.expect(r"^ {2}(\d+) {2}(\S+)\n")
        rows.add((int(row.group(1)), row.group(2)))
    return rows


def test_two_users_chat_through_cim_dev(dev: Dev, start_client: StartClient) -> None:
    alice = start_client("alice", password="alice-pw")
    bob = start_client("bob", password="bob-pw")
    assert alice.user_id != bob.user_id

    # A plain line is a group message: everyone else online gets it.
    bob.sendline("hello everyone, bob here")
    bob.expect(r"\* sent to 1 online user\(s\)")
    alice.expect(rf"\] bob#{bob.user_id}: hello everyone, bob here\n")

    # id;;text is private: the receiver sees it marked, the sender that it arrived.
    alice.sendline(f"{bob.user_id};;psst, just between us")
    alice.expect(rf"\* to #{bob.user_id}: delivered")
    bob.expect(rf"\] alice#{alice.user_id} \(private\): psst, just between us\n")

    # Who is online: everyone, then by name prefix.
    alice.sendline(":olu")
    assert online_users(alice, 2) == {(alice.user_id, "alice"), (bob.user_id, "bob")}
    alice.sendline(":pu al")
    assert online_users(alice, 1, " whose name starts with 'al'") == {(alice.user_id, "alice")}
    alice.sendline(":info")
    info = alice.expect(rf"\* user alice \(id {alice.user_id}\), (.*)\n")
    assert info.group(1).startswith("connected to server-")
    assert dev.route_address in info.group(1)

    # Emoji: a page of the table, and an alias in a message.
    alice.sendline(":emoji 1")
    alice.expect(r"\* emoji page 1 of \d+:\n")
    alice.expect(r" {2}😄 {2}:smile:\n")
    alice.sendline("good morning :smile:")
    alice.expect(r"\* sent to 1 online user\(s\)")
    bob.expect(rf"\] alice#{alice.user_id}: good morning 😄\n")

    # A delayed private message arrives about a second later.
    alice.sendline(f":delay {bob.user_id};;later 1")
    alice.expect(r"\* will send in 1 s")
    typed_at = time.monotonic()
    bob.expect(rf"\] alice#{alice.user_id} \(private\): later\n", timeout=5)
    waited = time.monotonic() - typed_at
    assert 0.8 <= waited <= 4.0, f"the 1 s delayed message came after {waited:.2f} s"
    alice.expect(rf"\* to #{bob.user_id}: delivered")

    # :q <keyword> searches the local chat log (what bob received is in it).
    bob.sendline(":q psst")
    bob.expect(r"\* 1 line\(s\) in the chat log contain 'psst'\n")
    bob.expect(
        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "
        rf"alice#{alice.user_id} \(private\): psst, just between us\n"
    )

    # alice quits; bob's private message waits for her and comes at her next login.
    alice.sendline(":q!")
    alice.expect(r"\* bye")
    assert alice.wait_exit() == 0
    bob.sendline(f"{alice.user_id};;while you were away")
    bob.expect(rf"\* to #{alice.user_id}: stored: the user is offline")

    alice_again = start_client("alice", password="alice-pw")
    assert alice_again.user_id == alice.user_id
    assert "registered" not in alice_again.output
    alice_again.expect(
        rf"\] bob#{bob.user_id} \(private\) \(stored\): while you were away\n",
    )

    bob.sendline(":q!")
    bob.expect(r"\* bye")
    assert bob.wait_exit() == 0
    for console in (alice, alice_again, bob):
        assert "Traceback" not in console.output, console.output


def test_unknown_command_is_an_error_and_the_console_carries_on(
    start_client: StartClient,
) -> None:
    carol = start_client("carol")
    carol.sendline(":frobnicate now")
    error = carol.expect(r"! (.*)\n")
    assert ":frobnicate" in error.group(1)
    assert ":all" in error.group(1)

    carol.sendline(":all")
    carol.expect(r":olu +list online users\n")
    carol.expect(r":q! +quit\n")
    carol.sendline(":info")
    carol.expect(rf"\* user carol \(id {carol.user_id}\), connected to ")
    assert carol.alive()

    carol.sendline(":q!")
    carol.expect(r"\* bye")
    assert carol.wait_exit() == 0
    assert "Traceback" not in carol.output


def test_wrong_password_is_a_one_line_error(start_client: StartClient) -> None:
    dave = start_client("dave", password="right-password")
    dave.sendline(":q!")
    assert dave.wait_exit() == 0

    intruder = start_client("dave", password="wrong-password", wait=False)
    status = intruder.wait_exit()
    output = intruder.output
    assert status == 1, output  # click.ClickException
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    assert "dave" in lines[0], output
    assert "password" in lines[0], output


def test_password_typed_at_the_hidden_prompt(start_client: StartClient) -> None:
    typed = "typed-s3cret"
    erin = start_client("erin", password=None, wait=False)
    erin.expect(r"password for erin: ")
    erin.sendline(typed)
    erin.expect(r"\* registered erin as user (\d+)")
    erin.expect(r"\* logged in as erin \(id (\d+)\)")
    erin.expect(r"erin> ")
    assert typed not in erin.output, "the password was echoed"
    erin.sendline(":q!")
    assert erin.wait_exit() == 0

    # The typed password is the account's: it logs in again with it.
    again = start_client("erin", password=typed)
    assert "registered" not in again.output
    again.sendline(":q!")
    assert again.wait_exit() == 0


def test_a_console_killed_and_restarted_shows_only_what_it_missed(
    start_client: StartClient, tmp_path: Path
) -> None:
    """The console keeps its last seq beside its chat log: after a SIGKILL (no
    goodbye, no final ack) the new console replays only what came after it."""
    frank = start_client("frank")
    gina = start_client("gina")
    frank.sendline(f"{gina.user_id};;first, seen")
    gina.expect(rf"\] frank#{frank.user_id} \(private\): first, seen\n")
    gina.signal(signal.SIGKILL)
    gina.wait_exit()
    assert (tmp_path / "chatlog-gina" / "gina" / "last_seq").read_text() == "1\n"

    frank.sendline(f"{gina.user_id};;second, while gone")
    frank.expect(rf"\* to #{gina.user_id}: ")
    gina_again = start_client("gina")
    gina_again.expect(rf"\] frank#{frank.user_id} \(private\) \(stored\): second, while gone\n")
    screen = gina_again.settle(1.0)
    assert "first, seen" not in gina_again.output + screen
    assert gina_again.output.count("second, while gone") == 1
    frank.sendline(":q!")
    assert frank.wait_exit() == 0
