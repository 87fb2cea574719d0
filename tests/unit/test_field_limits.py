"""Field limits: every string and repeated field of every message declares
one, and each is enforced with an error naming the field, its size and the limit."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from cim.core import limits
from cim.errors import InvalidArgument
from cim.proto.admin.v1 import admin_pb2
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2

MODULES = (common_pb2, route_pb2, chat_pb2, admin_pb2, route_internal_pb2, chat_internal_pb2)


def _messages() -> list[Descriptor]:
    found: list[Descriptor] = []
    for module in MODULES:
        found.extend(module.DESCRIPTOR.message_types_by_name.values())
    return found


def _limited_fields() -> list[tuple[Descriptor, FieldDescriptor]]:
    return [
        (message, field)
        for message in _messages()
        for field in message.fields
        if field.is_repeated or field.type in (field.TYPE_STRING, field.TYPE_BYTES)
    ]


FIELDS = _limited_fields()


def test_every_string_and_repeated_field_declares_a_limit() -> None:
    missing = [f"{m.full_name}.{f.name}" for m, f in FIELDS if not limits.max_size(f)]
    assert missing == []


def _fill(message: Message, field: FieldDescriptor, count: int) -> None:
    """Puts ``count`` bytes (a string) or items (a repeated field) in ``field``."""
    if not field.is_repeated:
        setattr(message, field.name, "x" * count)
        return
    target = getattr(message, field.name)
    if field.message_type is not None:
        for _ in range(count):
            target.add()
    elif field.type == field.TYPE_BOOL:
        target.extend([True] * count)
    else:
        target.extend([1] * count)


def _cls(descriptor: Descriptor) -> Any:
    module = next(m for m in MODULES if m.DESCRIPTOR.name == descriptor.file.name)
    return getattr(module, descriptor.name)


@pytest.mark.parametrize(
    ("message", "field"), FIELDS, ids=[f"{m.name}.{f.name}" for m, f in FIELDS]
)
def test_each_limit_holds_at_the_limit_and_fails_past_it(
    message: Descriptor, field: FieldDescriptor
) -> None:
    limit = limits.max_size(field)
    at_limit = _cls(message)()
    _fill(at_limit, field, limit)
    limits.check(at_limit)
    past = _cls(message)()
    _fill(past, field, limit + 1)
    with pytest.raises(InvalidArgument) as caught:
        limits.check(past)
    if field.is_repeated:
        expected = f"{message.name}.{field.name} has {limit + 1} items; the limit is {limit}"
    else:
        expected = f"{message.name}.{field.name} is {limit + 1} bytes; the limit is {limit}"
    assert caught.value.message == expected


def test_a_nested_field_is_named_by_its_path() -> None:
    batch = route_internal_pb2.SubmitBatchRequest(
        messages=[
            route_internal_pb2.SubmittedMessage(
                private=common_pb2.SendPrivateRequest(receiver_id=2, text="fine")
            ),
            route_internal_pb2.SubmittedMessage(
                group=common_pb2.SendGroupRequest(text="hi", client_msg_id="c" * 129)
            ),
        ]
    )
    with pytest.raises(InvalidArgument) as caught:
        limits.check(batch)
    assert caught.value.message == (
        "SubmitBatchRequest.messages[1].group.client_msg_id is 129 bytes; the limit is 128"
    )


def test_limits_count_utf8_bytes_not_characters() -> None:
    # 20 four-byte characters: 80 bytes against a limit of 64.
    login = chat_pb2.LoginFrame(user_id=1, session_token="t", device_id="\U0001f600" * 20)
    with pytest.raises(InvalidArgument) as caught:
        limits.check(login)
    assert caught.value.message == "LoginFrame.device_id is 80 bytes; the limit is 64"
    limits.check(chat_pb2.LoginFrame(device_id="\U0001f600" * 16))  # exactly 64 bytes


def test_the_issue_case_a_megabyte_device_id() -> None:
    request = route_pb2.LoginRequest(user_name="a", password="p", device_id="d" * 1_048_576)
    with pytest.raises(InvalidArgument) as caught:
        limits.check(request, request.ByteSize())
    assert caught.value.message == "LoginRequest.device_id is 1048576 bytes; the limit is 64"


def test_small_messages_are_not_walked() -> None:
    checks = limits.plan(route_pb2.LoginRequest.DESCRIPTOR)
    assert checks.free_below == 64  # the device id's limit is the smallest
