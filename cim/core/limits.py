"""The size limit of every string and repeated field, as the protos declare
them (``[(cim.v1.max_size) = N]``), checked on a request as it arrives.

A string's limit is in UTF-8 bytes, a repeated field's in items. The check
walks only what could break a limit: a serialized message no longer than
the smallest limit below its type cannot hold anything too large (a string
takes at least its own bytes, a repeated field at least a byte an item), so
most requests cost one comparison.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from cim.errors import InvalidArgument
from cim.proto.v1 import options_pb2

_TEXT = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
_NONE = 1 << 62


@dataclass(frozen=True)
class _Field:
    name: str
    limit: int  # 0: no limit of its own
    text: bool
    repeated: bool
    nested: _Plan | None


@dataclass(frozen=True)
class _Plan:
    name: str
    fields: tuple[_Field, ...]
    # Serialized sizes up to this cannot break any limit below this type.
    free_below: int


def max_size(field: FieldDescriptor) -> int:
    """The field's declared limit (0: none)."""
    return int(field.GetOptions().Extensions[options_pb2.max_size])


@functools.cache
def plan(descriptor: Descriptor) -> _Plan:
    """What to check in messages of this type (built once per type)."""
    fields = []
    free_below = _NONE
    for field in descriptor.fields:
        limit = max_size(field)
        text = field.type in _TEXT
        nested = plan(field.message_type) if field.message_type is not None else None
        if nested is not None and not nested.fields:
            nested = None
        if not limit and nested is None:
            continue
        fields.append(_Field(field.name, limit, text, field.is_repeated, nested))
        if limit:
            free_below = min(free_below, limit)
        if nested is not None:
            free_below = min(free_below, nested.free_below)
    return _Plan(descriptor.name, tuple(fields), free_below)


def check(message: Message, size: int | None = None) -> None:
    """InvalidArgument naming the first field over its limit, if any.
    ``size`` is the message's serialized size when the caller knows it."""
    checks = plan(message.DESCRIPTOR)
    if not checks.fields:
        return
    if (message.ByteSize() if size is None else size) <= checks.free_below:
        return
    _walk(message, checks, checks.name)


def _walk(message: Any, checks: _Plan, path: str) -> None:
    for field in checks.fields:
        value = getattr(message, field.name)
        where = f"{path}.{field.name}"
        if field.repeated:
            if field.limit and len(value) > field.limit:
                raise InvalidArgument(f"{where} has {len(value)} items; the limit is {field.limit}")
            if field.nested is not None:
                for index, item in enumerate(value):
                    _walk(item, field.nested, f"{where}[{index}]")
        elif field.text:
            _check_text(value, field.limit, where)
        elif field.nested is not None and message.HasField(field.name):
            _walk(value, field.nested, where)


def _check_text(value: str | bytes, limit: int, where: str) -> None:
    # A str of n characters is n to 4n bytes: encode only when it matters.
    if not limit or len(value) * 4 <= limit:
        return
    size = len(value) if isinstance(value, bytes) else len(value.encode())
    if size > limit:
        raise InvalidArgument(f"{where} is {size} bytes; the limit is {limit}")
