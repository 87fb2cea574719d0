"""Groups with members as people use them: consoles in a group through ``cim dev``.

Each console runs ``cim client`` in a pseudo-terminal (the prompt_toolkit
console a person gets); lines are typed and the screen is read. What one
console does shows on the others' screens: a message, a membership event, a
refusal.
"""

from __future__ import annotations

import re

import pytest

from .helpers import Client, StartClient

pytestmark = pytest.mark.e2e


def create_group(owner: Client, name: str, *members: Client) -> str:
    """``:gcreate`` by ``owner``; the new group's id (g:N), once every member's
    console shows the "created" event."""
    ids = " ".join(str(member.user_id) for member in members)
    whom = ", ".join(member.user_name for member in members)
    event = rf"\* \[(g:\d+)\] {owner.user_name} created group '{re.escape(name)}' with {whom}\n"
    owner.sendline(f":gcreate {name};;{ids}")
    made, seen = owner.expect_all(
        rf"\* created group (g:\d+) '{re.escape(name)}' with {len(members) + 1} member\(s\)\n",
        event,
    )
    group_id = made.group(1)
    assert seen.group(1) == group_id
    for member in members:
        assert member.expect(event).group(1) == group_id
    return group_id


def expect_change(actor: Client, group_id: str, text: str, *others: Client) -> None:
    """The actor's answer to a membership command and the event every
    member's console shows (the actor's too, in either order)."""
    event = re.escape(f"* [{group_id}] {text}\n")
    actor.expect_all(re.escape(f"* {group_id}: {text}\n"), event)
    for console in others:
        console.expect(event)


def group_line(sender: Client, group_id: str, text: str) -> str:
    """The regex of a group message as a member's console shows it."""
    return (
        rf"\] {re.escape(sender.user_name)}#{sender.user_id} "
        rf"\[{re.escape(group_id)}\]: {re.escape(text)}\n"
    )


def test_a_group_chat_a_newcomer_and_a_removed_member(start_client: StartClient) -> None:
    ann = start_client("ann")
    ben = start_client("ben")
    cat = start_client("cat")
    group_id = create_group(ann, "climbers", ben)

    # Both members see each other's messages; the sender is told how many it was stored for.
    ann.sendline(f"{group_id};;rope check at nine")
    ann.expect_exact(f"* to {group_id}: stored for 1 member(s)\n")
    ben.expect(group_line(ann, group_id, "rope check at nine"))
    ben.sendline(f"{group_id};;bringing the quickdraws")
    ben.expect_exact(f"* to {group_id}: stored for 1 member(s)\n")
    ann.expect(group_line(ben, group_id, "bringing the quickdraws"))

    # A newcomer: every member, the newcomer too, sees the event; the next
    # message reaches both others.
    ann.sendline(f":gadd {group_id} {cat.user_id}")
    expect_change(ann, group_id, "ann added cat", ben, cat)
    cat.sendline(f"{group_id};;hi all, cat here")
    cat.expect_exact(f"* to {group_id}: stored for 2 member(s)\n")
    ann.expect(group_line(cat, group_id, "hi all, cat here"))
    ben.expect(group_line(cat, group_id, "hi all, cat here"))

    # Members list members; each member lists the group among theirs.
    cat.sendline(f":gmembers {group_id}")
    cat.expect_exact(f"* group {group_id} 'climbers': 3 member(s)\n")
    rows = [cat.expect(r"^ {2}(\d+) {2}(owner|admin|member)\n") for _ in range(3)]
    assert {(int(row.group(1)), row.group(2)) for row in rows} == {
        (ann.user_id, "owner"),
        (ben.user_id, "member"),
        (cat.user_id, "member"),
    }
    ben.sendline(":groups")
    ben.expect_exact("* 1 group(s)\n")
    ben.expect_exact(f"  {group_id}  climbers  3\n")

    # ben is removed: his console shows it, and his next message is refused
    # with one line (no traceback); the others never get it.
    ann.sendline(f":gremove {group_id} {ben.user_id}")
    expect_change(ann, group_id, "ann removed ben", ben, cat)
    ben.sendline(f"{group_id};;wait, am I out?")
    ben.expect_exact(f"! you are not a member of group {group_id}\n")
    ben.sendline(":groups")
    ben.expect_exact("* 0 group(s)\n")
    assert ben.alive()

    # The group carries on without him: a later message reaches cat only.
    ann.sendline(f"{group_id};;see you at the crag")
    ann.expect_exact(f"* to {group_id}: stored for 1 member(s)\n")
    cat.expect(group_line(ann, group_id, "see you at the crag"))
    for console in (ann, ben, cat):
        console.sendline(":q!")
        console.expect(r"\* bye")
        assert console.wait_exit() == 0
    assert "am I out?" not in ann.output + cat.output
    assert "see you at the crag" not in ben.output
    for console in (ann, ben, cat):
        assert "Traceback" not in console.output, console.output


def history_lines(console: Client, header: str, count: int) -> list[str]:
    """Reads the answer of ``:his``: its header, then ``count`` lines, each
    "position date time" and what was said or done; returns
    "position what" for each, oldest first."""
    console.expect_exact(f"* {header}:\n")
    lines = []
    for _ in range(count):
        line = console.expect(r"^ +(\d+) \d{4}-\d\d-\d\d \d\d:\d\d (.*)\n")
        lines.append(f"{line.group(1)} {line.group(2)}")
    return lines


def test_a_member_added_later_pages_back_through_the_group_history(
    start_client: StartClient,
) -> None:
    ann = start_client("ann")
    ben = start_client("ben")
    cat = start_client("cat")
    group_id = create_group(ann, "climbers", ben)
    ann.sendline(f"{group_id};;rope check at nine")
    ben.expect(group_line(ann, group_id, "rope check at nine"))
    ben.sendline(f"{group_id};;bringing the quickdraws")
    ann.expect(group_line(ben, group_id, "bringing the quickdraws"))
    ann.sendline(f":gadd {group_id} {cat.user_id}")
    expect_change(ann, group_id, "ann added cat", ben, cat)

    # cat joined last but reads what was said before, in order, then the
    # event that added them.
    cat.sendline(f":his {group_id}")
    assert history_lines(cat, f"group {group_id}, messages 1-4 of 4", 4) == [
        "1 * ann created group 'climbers' with ben",
        "2 ann: rope check at nine",
        "3 ben: bringing the quickdraws",
        "4 * ann added cat",
    ]
    cat.expect_exact("* that is the beginning of the conversation\n")
    # Paging back from a position shows only what came before it.
    cat.sendline(f":his {group_id} 3")
    assert history_lines(cat, f"group {group_id}, messages 1-2 of 4", 2) == [
        "1 * ann created group 'climbers' with ben",
        "2 ann: rope check at nine",
    ]
    cat.expect_exact("* that is the beginning of the conversation\n")

    # Their own messages show as "me"; a removed member reads up to their
    # removal and nothing said after it, not even how much was.
    cat.sendline(f"{group_id};;hi all")
    ben.expect(group_line(cat, group_id, "hi all"))
    ann.sendline(f":gremove {group_id} {ben.user_id}")
    expect_change(ann, group_id, "ann removed ben", ben, cat)
    ann.sendline(f"{group_id};;just us now")
    cat.expect(group_line(ann, group_id, "just us now"))
    cat.sendline(f":his {group_id}")
    assert history_lines(cat, f"group {group_id}, messages 1-7 of 7", 7)[4:] == [
        "5 me: hi all",
        "6 * ann removed ben",
        "7 ann: just us now",
    ]
    ben.sendline(f":his {group_id}")
    assert history_lines(ben, f"group {group_id}, messages 1-6 of 6", 6)[2:] == [
        "3 me: bringing the quickdraws",
        "4 * ann added cat",
        "5 cat: hi all",
        "6 * ann removed ben",
    ]
    ben.expect_exact("* that is the beginning of the conversation\n")
    for console in (ann, ben, cat):
        console.sendline(":q!")
        assert console.wait_exit() == 0
        assert "Traceback" not in console.output, console.output
