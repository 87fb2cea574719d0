"""Conversation ids: derived from two users, parsed and refused precisely."""

from __future__ import annotations

import pytest

from cim.core import conversations
from cim.errors import InvalidArgument, PermissionDenied


def test_private_id_is_the_same_from_both_sides() -> None:
    assert conversations.private_id(17, 3) == "p:3:17"
    assert conversations.private_id(3, 17) == "p:3:17"
    assert conversations.private_id(5, 5) == "p:5:5"


def test_private_id_refuses_non_positive_users() -> None:
    with pytest.raises(InvalidArgument, match="positive ids"):
        conversations.private_id(0, 4)


def test_parse_private_gives_its_members() -> None:
    parsed = conversations.parse("p:3:17")
    assert parsed.private
    assert parsed.users == (3, 17)
    assert parsed.has_member(3) and parsed.has_member(17)
    assert not parsed.has_member(4)
    assert conversations.peer(parsed, 3) == 17
    assert conversations.peer(parsed, 17) == 3


def test_parse_group() -> None:
    parsed = conversations.parse("g:42")
    assert not parsed.private
    assert parsed.group == 42
    assert not parsed.has_member(42)


@pytest.mark.parametrize(
    ("cid", "message"),
    [
        ("", "conversation id is required"),
        ("x" * 65, "65 characters; the limit is 64"),
        ("all", "must start with 'p:' (private) or 'g:' (group)"),
        ("p:3", "a private one is p:<low user id>:<high user id>"),
        ("p:3:4:5", "a private one is p:<low user id>:<high user id>"),
        ("p:17:3", "the lower user id comes first (p:3:17)"),
        ("p:03:17", "without leading zeros"),
        ("p:0:17", "without leading zeros"),
        ("p:-3:17", "the first user id must be a decimal number"),
        ("p:3:", "the second user id must be a decimal number"),
        ("p:3:\uff11\uff17", "the second user id must be a decimal number"),
        ("p:3:99999999999999999999", "out of range"),
        ("p:3:9223372036854775808", "out of range"),
        ("g:", "the group number must be a decimal number"),
        ("g:007", "without leading zeros"),
    ],
)
def test_parse_refuses_malformed_ids_precisely(cid: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        conversations.parse(cid)


def test_peer_refuses_a_stranger_and_a_group() -> None:
    with pytest.raises(PermissionDenied, match="not a member of conversation p:3:17"):
        conversations.peer(conversations.parse("p:3:17"), 4)
    with pytest.raises(PermissionDenied, match="not a member of conversation g:1"):
        conversations.peer(conversations.parse("g:1"), 1)


def test_the_id_fits_the_proto_field() -> None:
    from cim.core.limits import max_size
    from cim.proto.v1 import common_pb2

    field = common_pb2.ChatMessage.DESCRIPTOR.fields_by_name["conversation_id"]
    assert max_size(field) == conversations.MAX_CONVERSATION_ID
    longest = conversations.private_id(2**63 - 2, 2**63 - 1)
    assert conversations.parse(longest).users == (2**63 - 2, 2**63 - 1)
