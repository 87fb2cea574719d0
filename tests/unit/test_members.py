"""Unit tests for cim.core.members: registry records of cluster processes."""

from __future__ import annotations

import json
import time

import pytest

import cim
from cim.core.members import Member, MemberKind


@pytest.mark.parametrize(
    "member",
    [
        Member(MemberKind.SERVER, "server-1", "127.0.0.1:7001"),
        Member(MemberKind.SERVER, "server-2", "[::1]:7002", connections=1234),
        Member(MemberKind.ROUTE, "route-a", "route.example:8000", connections=0),
        Member(MemberKind.ROUTE, "rüte-ü 🚀", "hôst:1", connections=7),
    ],
    ids=["server", "server-ipv6-connections", "route", "unicode"],
)
def test_json_round_trip(member: Member) -> None:
    raw = member.to_json()
    assert isinstance(raw, bytes)
    restored = Member.from_json(raw)
    assert restored == member
    assert restored.kind is member.kind


def test_to_json_is_plain_json_with_kind_as_string() -> None:
    raw = Member(MemberKind.ROUTE, "r1", "h:1", 3, "1.2.3", 1700000000.5, metrics="h:9").to_json()
    assert json.loads(raw) == {
        "kind": "route",
        "member_id": "r1",
        "address": "h:1",
        "connections": 3,
        "version": "1.2.3",
        "started_at": 1700000000.5,
        "metrics": "h:9",
    }


def test_members_report_this_process_version_and_start() -> None:
    member = Member(MemberKind.SERVER, "s", "h:1")
    assert member.version == cim.__version__
    assert 0 < member.started_at <= time.time()


def test_to_json_is_deterministic() -> None:
    member = Member(MemberKind.SERVER, "s", "h:1", 2)
    assert member.to_json() == Member(MemberKind.SERVER, "s", "h:1", 2).to_json()


def test_entries_written_before_a_field_existed_still_read() -> None:
    raw = json.dumps({"kind": "server", "member_id": "s", "address": "h:1"}).encode()
    assert Member.from_json(raw) == Member(MemberKind.SERVER, "s", "h:1", 0, "", 0.0)


def test_from_json_ignores_unknown_fields() -> None:
    raw = json.dumps(
        {"kind": "route", "member_id": "r", "address": "h:2", "connections": 1, "extra": 9}
    ).encode()
    assert Member.from_json(raw) == Member(MemberKind.ROUTE, "r", "h:2", 1, "", 0.0)


def test_from_json_rejects_unknown_kind() -> None:
    raw = json.dumps({"kind": "client", "member_id": "x", "address": "h:1"}).encode()
    with pytest.raises(ValueError):
        Member.from_json(raw)


def test_from_json_rejects_missing_required_field() -> None:
    raw = json.dumps({"kind": "server", "address": "h:1"}).encode()
    with pytest.raises(KeyError):
        Member.from_json(raw)
