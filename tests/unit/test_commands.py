from __future__ import annotations

import pytest

from cim.client.commands import (
    COMMANDS,
    CommandError,
    DelayedMessage,
    GroupMessage,
    ListConversations,
    ListOnline,
    PrivateMessage,
    Quit,
    SearchLog,
    ShowEmoji,
    ShowHelp,
    ShowHistory,
    ShowInfo,
    ShowReaders,
    parse,
)


@pytest.mark.parametrize("line", ["", "   ", "\t\n"])
def test_blank_line_is_nothing(line: str) -> None:
    assert parse(line) is None


def test_plain_text_is_group_message_stripped() -> None:
    assert parse("  hello world \n") == GroupMessage("hello world")


def test_private_message() -> None:
    assert parse("42;;hi there") == PrivateMessage(receiver_id=42, text="hi there")


def test_private_message_text_is_stripped_and_may_contain_separator() -> None:
    assert parse("7;;  a;;b  ") == PrivateMessage(receiver_id=7, text="a;;b")


@pytest.mark.parametrize("line", ["42;;", "42;;   "])
def test_private_message_without_text_is_error(line: str) -> None:
    with pytest.raises(CommandError, match="empty"):
        parse(line)


def test_private_message_to_zero_is_error() -> None:
    with pytest.raises(CommandError, match="positive"):
        parse("0;;hi")


@pytest.mark.parametrize("line", ["abc;;hi", "-3;;hi", "4 2;;hi", ";;hi"])
def test_non_numeric_receiver_is_group_message(line: str) -> None:
    assert parse(line) == GroupMessage(line)


@pytest.mark.parametrize("line", [":all", ":help", "  :help  ", ":ALL"])
def test_help(line: str) -> None:
    assert parse(line) == ShowHelp()


def test_online_users() -> None:
    assert parse(":olu") == ListOnline(prefix="")


def test_online_users_with_argument_points_to_pu() -> None:
    with pytest.raises(CommandError, match=":pu"):
        parse(":olu bob")


def test_prefix_users() -> None:
    assert parse(":pu  bo ") == ListOnline(prefix="bo")


def test_prefix_users_tab_separated() -> None:
    assert parse(":pu\tbo") == ListOnline(prefix="bo")


def test_prefix_users_requires_prefix() -> None:
    with pytest.raises(CommandError, match=r"usage: :pu <name prefix>"):
        parse(":pu")


def test_info() -> None:
    assert parse(":info") == ShowInfo()


def test_info_with_arguments_is_error() -> None:
    with pytest.raises(CommandError, match="no arguments"):
        parse(":info me")


def test_quit() -> None:
    assert parse(":q!") == Quit()


def test_search_takes_rest_of_line() -> None:
    assert parse(":q  hello   world ") == SearchLog(keyword="hello   world")


def test_search_without_keyword_mentions_quit() -> None:
    with pytest.raises(CommandError) as info:
        parse(":q")
    assert ":q!" in str(info.value)
    assert "usage" in str(info.value)


def test_emoji_default_page() -> None:
    assert parse(":emoji") == ShowEmoji(page=1)


def test_emoji_page() -> None:
    assert parse(":emoji 3") == ShowEmoji(page=3)


@pytest.mark.parametrize("line", [":emoji 0", ":emoji -1", ":emoji two", ":emoji 1 2"])
def test_emoji_bad_page(line: str) -> None:
    with pytest.raises(CommandError, match="usage: :emoji"):
        parse(line)


def test_delay_group_message() -> None:
    assert parse(":delay hello world 5") == DelayedMessage(GroupMessage("hello world"), 5.0)


def test_delay_private_message() -> None:
    assert parse(":delay 42;;hi 5") == DelayedMessage(PrivateMessage(42, "hi"), 5.0)


def test_delay_fractional_seconds() -> None:
    assert parse(":delay hi 0.5") == DelayedMessage(GroupMessage("hi"), 0.5)


def test_delay_maximum() -> None:
    assert parse(":delay hi 86400") == DelayedMessage(GroupMessage("hi"), 86400.0)


def test_delay_text_starting_with_colon_is_a_message() -> None:
    assert parse(":delay :smile: 1") == DelayedMessage(GroupMessage(":smile:"), 1.0)


@pytest.mark.parametrize(
    "line",
    [":delay", ":delay 5", ":delay hi", ":delay hi 0", ":delay hi -1", ":delay hi 86401"],
)
def test_delay_bad_input(line: str) -> None:
    with pytest.raises(CommandError, match=r"usage: :delay <text> <seconds>"):
        parse(line)


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf"])
def test_delay_non_finite_seconds(seconds: str) -> None:
    with pytest.raises(CommandError, match="usage: :delay"):
        parse(f":delay hi {seconds}")


def test_delay_empty_private_text_is_error() -> None:
    with pytest.raises(CommandError, match="empty"):
        parse(":delay 42;; 5")


@pytest.mark.parametrize("line", [":nope", ":", ":q!x", ":olux"])
def test_unknown_command(line: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(line)
    message = str(info.value)
    assert "unknown command" in message
    assert ":all" in message


def test_command_error_is_value_error() -> None:
    assert issubclass(CommandError, ValueError)


def test_help_rows_cover_every_command() -> None:
    syntaxes = [syntax for syntax, _ in COMMANDS]
    for expected in ("text", "userId;;text", ":all", ":olu", ":info", ":q!"):
        assert expected in syntaxes
    for prefix in (":pu", ":q <", ":emoji", ":delay", ":his"):
        assert any(s.startswith(prefix) for s in syntaxes)
    assert all(description for _, description in COMMANDS)


def test_history_of_a_conversation_from_the_newest() -> None:
    assert parse(":his 42") == ShowHistory(42)
    assert parse(":HIS 42 17") == ShowHistory(42, 17)


def test_history_of_a_group() -> None:
    assert parse(":his g:5") == ShowHistory(0, 0, "g:5")
    assert parse(":his  g:5  17 ") == ShowHistory(0, 17, "g:5")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (":his", "whole numbers"),
        (":his bob", "whole numbers"),
        (":his 42 17 3", "whole numbers"),
        (":his -1", "whole numbers"),
        (":his 0", "positive"),
        (":his 42 0", "positive"),
        (":his 99999999999999999999", "too large"),
        (":his g:5 0", "positive"),
        (":his g:5 x", "whole numbers"),
        (":his g:5 1 2", "whole numbers"),
        (":his g:5 99999999999999999999", "too large"),
    ],
)
def test_history_needs_a_user_id_and_maybe_a_position(line: str, why: str) -> None:
    usage = "usage: :his <userId\\|g:N> \\[before position\\]"
    with pytest.raises(CommandError, match=f"{usage}.*{why}"):
        parse(line)


@pytest.mark.parametrize("line", [":his g:0", ":his g:", ":his g:05", ":his g:x 3"])
def test_history_of_a_malformed_group_id(line: str) -> None:
    with pytest.raises(CommandError, match="is not a group id"):
        parse(line)


# --- groups with members ----------------------------------------------------------


def test_group_messages_name_their_group() -> None:
    from cim.client.commands import MemberGroupMessage

    assert parse("g:5;; hi there ") == MemberGroupMessage("g:5", "hi there")
    with pytest.raises(CommandError, match="text must not be empty"):
        parse("g:5;;  ")
    with pytest.raises(CommandError, match="not a group id"):
        parse("g:05;;hi")


def test_group_commands_parse() -> None:
    from cim.client.commands import ChangeGroup, CreateGroup, ListGroups, ListMembers

    assert parse(":gcreate the team;;2 3") == CreateGroup("the team", (2, 3))
    assert parse(":gcreate solo") == CreateGroup("solo")
    assert parse(":gadd g:7 2 3") == ChangeGroup("AddMembers", "g:7", (2, 3))
    assert parse(":gremove g:7 3") == ChangeGroup("RemoveMembers", "g:7", (3,))
    assert parse(":gleave g:7") == ChangeGroup("LeaveGroup", "g:7")
    assert parse(":gdelete g:7") == ChangeGroup("DeleteGroup", "g:7")
    assert parse(":grename g:7 new name") == ChangeGroup("RenameGroup", "g:7", name="new name")
    assert parse(":gmembers g:7") == ListMembers("g:7")
    assert parse(":gmembers g:7 12") == ListMembers("g:7", 12)
    assert parse(":groups") == ListGroups()
    assert parse(":gadmin g:7 3") == ChangeGroup("SetAdmin", "g:7", (3,), admin=True)
    assert parse(":gadmin g:7 3 off") == ChangeGroup("SetAdmin", "g:7", (3,), admin=False)
    assert parse(":gowner g:7 3") == ChangeGroup("TransferOwnership", "g:7", (3,))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (":gcreate", r"usage: :gcreate <name>\[;;userId ...\]"),
        (":gcreate x;;2 bob", "user ids are numbers from 1, got 'bob'"),
        (":gadd g:7", r"usage: :gadd g:N <userId> \.\.\."),
        (":gadd all 2", "'all' is not a group id"),
        (":gremove g:7 0", "got '0'"),
        (":gleave g:7 extra", "nothing after the group id"),
        (":grename g:7", "usage: :grename"),
        (":gmembers g:7 1 2", "usage: :gmembers"),
        (":groups mine", "no arguments"),
        (":gadmin g:7", r"usage: :gadmin g:N <userId> \[off\]"),
        (":gadmin g:7 3 on", "usage: :gadmin"),
        (":gadmin g:7 3 4", "usage: :gadmin"),
        (":gowner g:7", "usage: :gowner"),
        (":gowner g:7 x", "got 'x'"),
    ],
)
def test_group_commands_refuse_bad_input(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse(line)


def test_every_group_command_is_listed() -> None:
    listed = " ".join(syntax for syntax, _ in COMMANDS)
    for name in (
        ":gcreate",
        ":gadd",
        ":gremove",
        ":gleave",
        ":gadmin",
        ":gowner",
        ":gmembers",
        ":groups",
        "g:N;;",
    ):
        assert name in listed


# --- conversations and receipts ---------------------------------------------------


def test_the_conversation_list_and_its_next_page() -> None:
    assert parse(":convs") == ListConversations()
    assert parse(":CONVS more") == ListConversations(more=True)
    with pytest.raises(CommandError, match=r"usage: :convs \[more\]"):
        parse(":convs 3")


def test_who_read_a_group_or_a_private_conversation() -> None:
    assert parse(":reads g:4") == ShowReaders("g:4")
    assert parse(":reads g:4 17") == ShowReaders("g:4", 17)
    assert parse(":reads 42") == ShowReaders("42")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (":reads", "usage: :reads"),
        (":reads g:4 1 2", "usage: :reads"),
        (":reads bob", "a group id g:N or a user id"),
        (":reads 0", "a group id g:N or a user id"),
        (":reads g:0", "is not a group id"),
        (":reads g:4 0", "the position is a number from 1"),
        (":reads g:4 x", "the position is a number from 1"),
    ],
)
def test_who_read_refuses_bad_input(line: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        parse(line)


def test_the_new_commands_are_listed() -> None:
    listed = " ".join(syntax for syntax, _ in COMMANDS)
    assert ":convs" in listed and ":reads" in listed
