"""Typing notes between two real consoles (``cim client`` in pseudo-terminals
on ``cim dev``): what one types to the other shows there before it is sent,
and the line being typed on the receiving side is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Client, Dev, Procs, StartClient, cim_env, tty_child

pytestmark = pytest.mark.e2e


def test_a_console_shows_who_is_typing_to_it(dev: Dev, start_client: StartClient) -> None:
    alice = start_client("alice", password="alice-pw")
    bob = start_client("bob", password="bob-pw")
    # Bob has a line half typed (to everyone: no note for it).
    bob.child.send("my draft")
    # Alice types to bob, without sending yet: bob's console says so.
    alice.child.send(f"{bob.user_id};;hel")
    bob.expect(rf"\* alice#{alice.user_id} is typing to you\n")
    alice.settle(0.3)
    assert "is typing" not in alice.output  # not to the typist herself
    # Sent, the message arrives as usual.
    alice.sendline("lo")
    alice.expect(rf"\* to #{bob.user_id}: delivered")
    bob.expect(rf"\] alice#{alice.user_id} \(private\): hello\n")
    # Bob's half-typed line was not disturbed: finished and sent, it is whole.
    bob.sendline(" goes on")
    bob.expect(r"\* sent to 1 online user\(s\)")
    alice.expect(rf"\] bob#{bob.user_id}: my draft goes on\n")


def test_a_full_terminal_shows_typing_in_its_bottom_toolbar(
    dev: Dev, start_client: StartClient, procs: Procs, tmp_path: Path
) -> None:
    """A terminal that can redraw (not TERM=dumb) gets no line for a note:
    the note is in the bottom toolbar, under the line being typed."""
    alice = start_client("alice", password="alice-pw")
    args = ["client", "--user", "bob", "--route", dev.route_address]
    env = cim_env(CIM_PASSWORD="bob-pw", TERM="xterm-256color")
    bob = procs.track(
        Client(tty_child([*args, "--log-dir", str(tmp_path / "bob")], env), "bob", "bob")
    )
    match = bob.expect(r"\* logged in as bob \(id (\d+)\);")
    bob.user_id = int(match.group(1))
    bob.settle(0.5)
    # The toolbar is drawn only once the terminal says where the cursor is
    # (pexpect does not answer prompt_toolkit's question: we do).
    bob.child.send("\x1b[30;1R")
    bob.settle(0.3)
    bob.child.send("my draft")
    alice.child.send(f"{bob.user_id};;hel")
    bob.expect(r"\nalice is typing to you")
    assert f"alice#{alice.user_id} is typing" not in bob.output  # no line for it
    alice.sendline("lo")
    bob.expect(rf"\] alice#{alice.user_id} \(private\): hello")
    bob.sendline(" goes on")
    alice.expect(rf"\] bob#{bob.user_id}: my draft goes on\n")
