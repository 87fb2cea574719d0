import pytest

from cim.core import validation
from cim.errors import InvalidArgument


@pytest.mark.parametrize("name", ["alice", "Bob_2", "a.b-c", "x" * 32, "小明"])
def test_valid_user_names(name: str) -> None:
    assert validation.check_user_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 33, "has space", "semi;colon", "a/b", "new\nline"])
def test_invalid_user_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validation.check_user_name(name)


def test_text_must_not_be_blank_or_oversized() -> None:
    assert validation.check_text("hi", 10) == "hi"
    with pytest.raises(InvalidArgument, match="empty"):
        validation.check_text("  \n", 10)
    with pytest.raises(InvalidArgument, match="limit is 4"):
        validation.check_text("héllo", 4)  # bytes, not characters


def test_only_the_everyone_group_exists() -> None:
    assert validation.check_group("") == validation.GROUP_ALL
    assert validation.check_group("all") == validation.GROUP_ALL
    with pytest.raises(InvalidArgument, match="unknown group"):
        validation.check_group("friends")


def test_ids_and_passwords() -> None:
    with pytest.raises(InvalidArgument):
        validation.check_user_id(0)
    with pytest.raises(InvalidArgument, match="required"):
        validation.check_password("")
    with pytest.raises(InvalidArgument, match="longer than"):
        validation.check_password("x" * 2000)
    with pytest.raises(InvalidArgument, match="client_msg_id"):
        validation.check_client_msg_id("x" * 200)
