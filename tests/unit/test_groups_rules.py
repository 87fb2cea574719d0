"""The rules of groups with membership (cim.core.groups): who may do what,
and how each refusal reads."""

from __future__ import annotations

import pytest

from cim.core import groups
from cim.core.groups import ADMIN, MEMBER, OWNER, Action, Group, Limits, Member
from cim.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted


def _group(
    owner: int = 1, admins: tuple[int, ...] = (2,), members: tuple[int, ...] = (3, 4)
) -> Group:
    roster = {owner: Member(owner, OWNER, 1)}
    roster.update({uid: Member(uid, ADMIN, 1) for uid in admins})
    roster.update({uid: Member(uid, MEMBER, 1) for uid in members})
    return Group("g:7", "team", owner, 1000, 3, False, roster)


def test_create_makes_the_creator_owner_and_drops_duplicates() -> None:
    change = groups.create(7, 1, "team", [2, 3, 2, 1], 1234, Limits())
    assert change.group_id == "g:7" and change.version == 0
    assert change.action is Action.CREATED
    assert dict(change.set_roles) == {1: OWNER, 2: MEMBER, 3: MEMBER}
    assert change.user_ids == (2, 3)
    assert change.recipients == (1, 2, 3)
    assert change.meta == {"name": "team", "owner": "1", "created": "1234"}


def test_create_refuses_more_members_than_the_limit() -> None:
    with pytest.raises(ResourceExhausted, match="group would have 4 members: the limit is 3"):
        groups.create(7, 1, "team", [2, 3, 4], 0, Limits(max_members=3))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "group name is required"),
        ("   ", "group name is required"),
        ("x" * 65, "group name is 65 characters; the limit is 64"),
        ("\U0001f600" * 64 + "", None),
        ("a\nb", r"control character \(U\+000A\)"),
        ("a\u202eb", r"control character \(U\+202E\)"),
    ],
)
def test_names_follow_the_rules(name: str, message: str | None) -> None:
    if message is None:
        assert groups.check_name(name) == name  # 64 characters, 256 bytes: the limits exactly
        return
    with pytest.raises(InvalidArgument, match=message):
        groups.check_name(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "group id is required"),
        ("all", "CIM's broadcast"),
        ("p:1:2", "is not a group id"),
        ("g:0", "positive number"),
        ("g:x", "decimal number"),
        ("g:07", "without leading zeros"),
        ("team", "must start with"),
    ],
)
def test_group_ids_are_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        groups.parse_group_id(text)
    assert groups.parse_group_id("g:12") == "g:12"


def test_non_members_are_denied_everything() -> None:
    group = _group()
    for attempt in (
        lambda: groups.add(group, 9, [10], Limits()),
        lambda: groups.remove(group, 9, [3]),
        lambda: groups.leave(group, 9),
        lambda: groups.set_admin(group, 9, 3, True),
        lambda: groups.transfer(group, 9, 3),
        lambda: groups.rename(group, 9, "x"),
        lambda: groups.delete(group, 9),
        lambda: groups.readable(group, 9),
        lambda: groups.add(None, 9, [10], Limits()),
    ):
        with pytest.raises(PermissionDenied, match="you are not a member of group"):
            attempt()


def test_plain_members_may_not_add_or_remove() -> None:
    group = _group()
    with pytest.raises(PermissionDenied, match="only the owner and admins of group g:7 may add"):
        groups.add(group, 3, [10], Limits())
    with pytest.raises(PermissionDenied, match="may remove members"):
        groups.remove(group, 3, [4])


def test_admins_add_and_remove_members_but_not_admins_or_the_owner() -> None:
    group = _group(admins=(2, 5))
    added = groups.add(group, 2, [10, 11], Limits())
    assert dict(added.set_roles) == {10: MEMBER, 11: MEMBER}
    assert set(added.recipients) == {1, 2, 3, 4, 5, 10, 11}
    removed = groups.remove(group, 2, [3])
    assert removed.drop == (3,) and 3 in removed.recipients  # the removed one hears of it
    with pytest.raises(PermissionDenied, match="only the owner of group g:7 may remove admins"):
        groups.remove(group, 2, [5])
    with pytest.raises(PermissionDenied, match="the owner of group g:7 cannot be removed"):
        groups.remove(group, 2, [1])
    assert groups.remove(group, 1, [5]).drop == (5,)


def test_adds_and_removes_name_who_is_in_the_way() -> None:
    group = _group()
    with pytest.raises(FailedPrecondition, match="already members of group g:7: 3"):
        groups.add(group, 1, [3, 10], Limits())
    with pytest.raises(FailedPrecondition, match="not members of group g:7: 10"):
        groups.remove(group, 1, [10])
    with pytest.raises(FailedPrecondition, match="leave the group instead"):
        groups.remove(group, 2, [2])
    with pytest.raises(ResourceExhausted, match="group would have 5 members: the limit is 4"):
        groups.add(group, 1, [10], Limits(max_members=4))


def test_the_owner_leaves_only_after_handing_over() -> None:
    group = _group()
    with pytest.raises(FailedPrecondition, match="hand it over to another member or delete it"):
        groups.leave(group, 1)
    left = groups.leave(group, 3)
    assert left.action is Action.LEFT and left.drop == (3,)
    handed = groups.transfer(group, 1, 3)
    assert dict(handed.set_roles) == {3: OWNER, 1: ADMIN}
    assert handed.meta == {"owner": "3"}


def test_only_the_owner_changes_roles_renames_and_deletes() -> None:
    group = _group()
    for attempt in (
        lambda: groups.set_admin(group, 2, 3, True),
        lambda: groups.transfer(group, 2, 3),
        lambda: groups.rename(group, 2, "x"),
        lambda: groups.delete(group, 2),
    ):
        with pytest.raises(PermissionDenied, match="only the owner of group g:7"):
            attempt()
    assert dict(groups.set_admin(group, 1, 3, True).set_roles) == {3: ADMIN}
    assert dict(groups.set_admin(group, 1, 2, False).set_roles) == {2: MEMBER}
    with pytest.raises(FailedPrecondition, match="already an admin"):
        groups.set_admin(group, 1, 2, True)
    with pytest.raises(FailedPrecondition, match="not a member of group g:7"):
        groups.set_admin(group, 1, 10, True)
    assert groups.rename(group, 1, "new").meta == {"name": "new"}
    assert groups.delete(group, 1).meta == {"deleted": "1"}


def test_a_deleted_group_takes_no_changes_but_can_be_read() -> None:
    group = Group("g:7", "team", 1, 0, 9, True, {1: Member(1, OWNER, 1), 3: Member(3, MEMBER, 1)})
    with pytest.raises(FailedPrecondition, match="group g:7 was deleted"):
        groups.add(group, 1, [5], Limits())
    assert groups.readable(group, 3) is group


def test_limits_are_checked_when_configured() -> None:
    with pytest.raises(ValueError, match="between 2 and 10,000"):
        Limits(max_members=10_001)
    with pytest.raises(ValueError, match="at least 1"):
        Limits(creations_per_minute=0)


def test_a_fan_out_done_again_goes_to_the_members_at_its_position_still_in_the_group() -> None:
    # Owner 1 and 2 since position 1, 5 since 6; 3 removed at 4, 4 left at 7.
    roster = {
        1: Member(1, OWNER, 1),
        2: Member(2, MEMBER, 1),
        5: Member(5, MEMBER, 6),
    }
    group = Group("g:7", "team", 1, 1000, 5, False, roster, {3: 4, 4: 7})
    # A message of 2 at position 5: not to its sender, nor to 5 (joined
    # later), nor to 4 (removed since: no pointer after their own removal).
    assert groups.fan_out_again(group, 5, 2, event=False) == (1,)
    assert groups.fan_out_again(group, 6, 2, event=False) == (1, 5)
    # An event goes to its actor too, and to whoever it removed.
    assert groups.fan_out_again(group, 4, 1, event=True) == (1, 2, 3)
    assert groups.fan_out_again(group, 7, 4, event=True) == (1, 2, 4, 5)
    assert groups.fan_out_again(group, 6, 1, event=True) == (1, 2, 5)
