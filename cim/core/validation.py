"""Input rules shared by the route and the chat server (pure)."""

from __future__ import annotations

import re

from cim.errors import InvalidArgument

USER_NAME_PATTERN = re.compile(r"^[\w.\-]{1,32}$")
MAX_PASSWORD_BYTES = 1024
MAX_CLIENT_MSG_ID = 128
GROUP_ALL = "all"


def check_user_name(name: str) -> str:
    if not USER_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"user name must be 1-32 letters, digits, '_', '.' or '-' (got {len(name)} characters)"
            if name
            else "user name is required"
        )
    return name


def check_password(password: str, *, min_length: int = 1) -> str:
    if len(password) < min_length:
        raise InvalidArgument(
            "password is required"
            if min_length <= 1
            else f"password must be at least {min_length} characters"
        )
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidArgument(f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    return password


def check_text(text: str, max_bytes: int) -> str:
    """A message text: not blank, at most ``max_bytes`` of UTF-8."""
    if not text.strip():
        raise InvalidArgument("message text is empty")
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidArgument(f"message text is {size} bytes; the limit is {max_bytes}")
    return text


def check_user_id(user_id: int, what: str = "user id") -> int:
    if user_id <= 0:
        raise InvalidArgument(f"{what} must be a positive number (got {user_id})")
    return user_id


def check_group(group_id: str) -> str:
    """CIM's broadcast: "all" (or empty, as before groups had members). A
    group with members is ``g:<n>`` (cim.core.groups), checked apart."""
    if group_id not in ("", GROUP_ALL):
        raise InvalidArgument(
            f"unknown group {group_id!r}: a group is g:<number>, "
            f"or {GROUP_ALL!r} for everyone online"
        )
    return GROUP_ALL


def check_client_msg_id(client_msg_id: str) -> str:
    if len(client_msg_id) > MAX_CLIENT_MSG_ID:
        raise InvalidArgument(f"client_msg_id is longer than {MAX_CLIENT_MSG_ID} characters")
    return client_msg_id
