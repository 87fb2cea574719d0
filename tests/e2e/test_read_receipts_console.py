"""Issue 13 in real consoles: two people see unread counts fall and "read"
appear on their own messages (``cim client`` in pseudo-terminals on ``cim dev``)."""

from __future__ import annotations

import re

import pytest

from .helpers import StartClient

pytestmark = pytest.mark.e2e


def test_unread_counts_fall_and_read_appears(start_client: StartClient) -> None:
    alice = start_client("alice")
    bob = start_client("bob")
    assert "* no unread messages" in bob.output
    bob.sendline(":q!")
    bob.expect(r"\* bye")
    assert bob.wait_exit() == 0
    cid = f"p:{min(alice.user_id, bob.user_id)}:{max(alice.user_id, bob.user_id)}"

    # Two messages wait for bob; alice's own are never unread to her.
    alice.sendline(f"{bob.user_id};;first")
    alice.expect(rf"\* to #{bob.user_id}: stored")
    alice.sendline(f"{bob.user_id};;second")
    alice.expect(rf"\* to #{bob.user_id}: stored")
    alice.sendline(":convs")
    alice.expect(r"\* 1 conversation\(s\), latest first:\n")
    alice.expect(rf"  bob#{bob.user_id} \({cid}\)  read  \[[^\]]+\] me: second\n")

    # bob logs in: the unread count first, then the messages, shown and so read.
    bob = start_client("bob")
    assert "* 2 unread message(s) in 1 conversation(s):" in bob.output, bob.output
    assert f"  2 unread in alice#{alice.user_id} ({cid})" in bob.output, bob.output
    bob.expect(rf"alice#{alice.user_id} \(private\) \(stored\): second\n")
    # alice sees "read" on her messages, without typing anything.
    alice.expect(rf"\u2713 read by bob#{bob.user_id}: second \(and 1 before it\)\n")
    bob.sendline(":convs")
    bob.expect(rf"  alice#{alice.user_id} \({cid}\)  read  \[[^\]]+\] alice: second\n")
    alice.sendline(":convs")
    alice.expect(re.escape("(read by them up to #2)") + r"\n")

    # Live: bob answers, alice's console shows it, bob sees it read.
    bob.sendline(f"{alice.user_id};;got them")
    bob.expect(rf"\* to #{alice.user_id}: delivered")
    alice.expect(rf"bob#{bob.user_id} \(private\): got them\n")
    bob.expect(rf"\u2713 read by alice#{alice.user_id}: got them\n")

    for console in (alice, bob):
        console.sendline(":q!")
        console.expect(r"\* bye")
        assert console.wait_exit() == 0
        assert "Traceback" not in console.output, console.output
