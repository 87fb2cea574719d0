"""The proto compatibility check: the protos against the committed baseline,
and each kind of break it must catch, made by editing a copy of the baseline."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2, text_format

ROOT = Path(__file__).resolve().parents[2]
FDS = descriptor_pb2.FileDescriptorSet


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_compat", ROOT / "scripts/proto_compat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compat = _load()


def baseline() -> FDS:
    return text_format.Parse((ROOT / "protos/baseline.txtpb").read_text(), FDS())


def message(fds: FDS, full_name: str) -> descriptor_pb2.DescriptorProto:
    package, _, name = full_name.rpartition(".")
    for file in fds.file:
        if file.package == package:
            for candidate in file.message_type:
                if candidate.name == name:
                    return candidate
    raise KeyError(full_name)


def field(fds: FDS, full_name: str, name: str) -> descriptor_pb2.FieldDescriptorProto:
    return next(f for f in message(fds, full_name).field if f.name == name)


def test_the_protos_match_the_committed_baseline() -> None:
    assert compat.compare(baseline(), compat.current()) == []


def test_adding_a_field_or_message_is_compatible() -> None:
    new = baseline()
    msg = message(new, "cim.v1.ChatMessage")
    msg.field.add(name="edited", number=99, type=8, label=1, json_name="edited")
    new.file[0].message_type.add(name="Brand")
    assert compat.compare(baseline(), new) == []


def _renumber(new: FDS) -> None:
    field(new, "cim.v1.ChatMessage", "text").number = 70


def _retype(new: FDS) -> None:
    field(
        new, "cim.v1.SendPrivateRequest", "receiver_id"
    ).type = descriptor_pb2.FieldDescriptorProto.TYPE_STRING


def _repeat(new: FDS) -> None:
    field(
        new, "cim.v1.ChatMessage", "seq"
    ).label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _remove_field(new: FDS) -> None:
    msg = message(new, "cim.v1.LoginRequest")
    kept = [f for f in msg.field if f.name != "resume_token"]
    del msg.field[:]
    msg.field.extend(kept)


def _remove_message(new: FDS) -> None:
    for file in new.file:
        kept = [m for m in file.message_type if m.name != "UserInfo"]
        del file.message_type[:]
        file.message_type.extend(kept)


def _remove_method(new: FDS) -> None:
    for file in new.file:
        for service in file.service:
            if service.name == "Route":
                kept = [m for m in service.method if m.name != "Logout"]
                del service.method[:]
                service.method.extend(kept)


def _stream_method(new: FDS) -> None:
    for file in new.file:
        for service in file.service:
            for method in service.method:
                if method.name == "Login":
                    method.server_streaming = True


def _remove_enum_value(new: FDS) -> None:
    for file in new.file:
        for enum in file.enum_type:
            if enum.name == "DeliveryStatus":
                kept = [v for v in enum.value if v.name != "DELIVERY_STATUS_STORED"]
                del enum.value[:]
                enum.value.extend(kept)


BREAKS: dict[str, tuple[Callable[[FDS], None], str]] = {
    "renumbered": (_renumber, "cim.v1.ChatMessage.text = 7 was renumbered to 70"),
    "retyped": (_retype, "cim.v1.SendPrivateRequest.receiver_id = 1 changed type"),
    "made repeated": (_repeat, "cim.v1.ChatMessage.seq = 10 changed type or label"),
    "field removed": (_remove_field, "cim.v1.LoginRequest.resume_token = 5 was removed"),
    "message removed": (_remove_message, "message cim.v1.UserInfo was removed"),
    "method removed": (_remove_method, "method cim.v1.Route.Logout was removed"),
    "streaming changed": (_stream_method, "method cim.v1.Route.Login changed"),
    "enum value removed": (_remove_enum_value, "DELIVERY_STATUS_STORED = 2 was removed"),
}


@pytest.mark.parametrize("kind", BREAKS)
def test_a_break_is_reported(kind: str) -> None:
    change, expected = BREAKS[kind]
    new = baseline()
    change(new)
    problems = compat.compare(baseline(), new)
    assert any(expected in problem for problem in problems), problems


def test_a_removed_field_with_its_number_and_name_reserved_is_compatible() -> None:
    new = baseline()
    _remove_field(new)
    msg = message(new, "cim.v1.LoginRequest")
    msg.reserved_range.add(start=5, end=6)
    msg.reserved_name.append("resume_token")
    assert compat.compare(baseline(), new) == []


def test_reserving_only_the_number_is_not_enough() -> None:
    new = baseline()
    _remove_field(new)
    message(new, "cim.v1.LoginRequest").reserved_range.add(start=5, end=6)
    assert compat.compare(baseline(), new) == [
        "cim.v1.LoginRequest.resume_token = 5 was removed without reserving its number and name"
    ]
