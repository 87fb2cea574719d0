"""The route's pure parts of conversation lists and read marks
(cim.route.conversation_list): unread counts, previews, list lines, checks."""

from __future__ import annotations

import pytest

from cim.errors import InvalidArgument, PermissionDenied
from cim.proto.v1 import common_pb2
from cim.route.conversation_list import PREVIEW_CHARS, check_mark, preview, summary, unread
from cim.store.base import ConversationLine, ReadMark


@pytest.mark.parametrize(
    ("head", "read", "joined", "expected"),
    [
        (10, 4, 0, 6),  # a private conversation: after the cursor
        (10, 10, 0, 0),
        (0, 0, 0, 0),
        (10, 0, 8, 3),  # a group joined at 8: its own event and the two after it
        (10, 9, 8, 1),  # read past joining: the cursor counts
        (10, 12, 0, 0),  # never negative
    ],
)
def test_unread_counts_after_the_cursor_and_from_joining(
    head: int, read: int, joined: int, expected: int
) -> None:
    assert unread(head, read, joined) == expected


def test_a_preview_keeps_short_texts_and_cuts_long_ones() -> None:
    assert preview("hello") == "hello"
    exact = "x" * PREVIEW_CHARS
    assert preview(exact) == exact
    cut = preview("é" * 500)
    assert len(cut) == PREVIEW_CHARS and cut.endswith("\u2026")


def test_a_private_line_names_the_peer_and_their_read_position() -> None:
    last = common_pb2.ChatMessage(
        message_id="m9", sender_id=3, sender_name="cat", text="hey", server_time_ms=77
    )
    line = ConversationLine("p:3:8", 1234, 2, 5, last.SerializeToString(), peer_read=4)
    out = summary(8, line, {3: "cat"})
    assert (out.conversation_id, out.title, out.peer_id) == ("p:3:8", "cat", 3)
    assert (out.head_position, out.read_position, out.unread) == (5, 2, 3)
    assert (out.peer_read_position, out.last_activity_ms) == (4, 1234)
    assert (out.last_message.sender_name, out.last_message.preview) == ("cat", "hey")
    assert (out.last_message.position, out.last_message.server_time_ms) == (5, 77)


def test_a_group_line_has_its_name_and_no_last_message_once_dropped() -> None:
    out = summary(8, ConversationLine("g:4", 1, 0, 9, None, group_name="team", joined=7), {})
    assert (out.title, out.peer_id, out.unread) == ("team", 0, 3)
    assert not out.HasField("last_message")


def test_a_mark_is_checked_and_names_whom_to_tell() -> None:
    assert check_mark(3, "p:3:8", 2).store_mark() == ReadMark(3, "p:3:8", 2, notify_id=8)
    assert check_mark(3, "p:3:3", 2).store_mark() == ReadMark(3, "p:3:3", 2)  # nobody else
    assert check_mark(3, "g:5", 9).store_mark() == ReadMark(3, "g:5", 9, group=True)
    with pytest.raises(PermissionDenied, match="not a member of conversation p:4:8"):
        check_mark(3, "p:4:8", 1)
    with pytest.raises(InvalidArgument, match="position must be at least 1"):
        check_mark(3, "g:5", 0)
    with pytest.raises(InvalidArgument, match="conversation id is required"):
        check_mark(3, "", 1)
