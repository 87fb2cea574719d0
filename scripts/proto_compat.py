#!/usr/bin/env python3
"""Checks that the protos stay wire-compatible with the committed baseline.

    scripts/proto_compat.py            compare protos/ with protos/baseline.txtpb
    scripts/proto_compat.py --update   rewrite the baseline (a deliberate break)

The baseline is the FileDescriptorSet of every proto, in text format so that
a change to it reads as a diff in review. Against it, a change fails when it:
  - removes a message, enum, service or method (moving one to another
    package counts as removing it);
  - removes a field or enum value whose number (and name) is not reserved;
  - gives a field number another type, label or message type, or gives a
    field name another number (renumbering);
  - changes a method's request or response type, or its streaming.
Adding anything is fine. buf's breaking-change check would do this, but it
resolves imports from the directory layout, and cim's protos live under
protos/ while importing as cim/proto/... (protoc's -Icim/proto=protos).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, text_format

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BASELINE = PROTOS / "baseline.txtpb"

Field = descriptor_pb2.FieldDescriptorProto
Message = descriptor_pb2.DescriptorProto
Enum = descriptor_pb2.EnumDescriptorProto


def current() -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set of protos/ as protoc builds it today."""
    files = sorted(str(p.relative_to(ROOT)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-Icim/proto=protos",
                f"--descriptor_set_out={out}",
                *files,
            ],
            cwd=ROOT,
            check=True,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _messages(
    prefix: str, messages: list[Message] | object, out: dict[str, Message], enums: dict[str, Enum]
) -> None:
    for message in messages:  # type: ignore[attr-defined]
        name = f"{prefix}.{message.name}"
        out[name] = message
        for enum in message.enum_type:
            enums[f"{name}.{enum.name}"] = enum
        _messages(name, message.nested_type, out, enums)


def index(
    fds: descriptor_pb2.FileDescriptorSet,
) -> tuple[dict[str, Message], dict[str, Enum], dict[str, descriptor_pb2.ServiceDescriptorProto]]:
    messages: dict[str, Message] = {}
    enums: dict[str, Enum] = {}
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
    for file in fds.file:
        prefix = f".{file.package}" if file.package else ""
        _messages(prefix, file.message_type, messages, enums)
        for enum in file.enum_type:
            enums[f"{prefix}.{enum.name}"] = enum
        for service in file.service:
            services[f"{prefix}.{service.name}"] = service
    return messages, enums, services


def _reserved(numbers: object, names: object, number: int, name: str) -> bool:
    in_range = any(r.start <= number < r.end for r in numbers)  # type: ignore[attr-defined]
    return in_range and name in names  # type: ignore[operator]


def _field_shape(field: Field) -> tuple[int, int, str, bool]:
    return (field.type, field.label, field.type_name, field.proto3_optional)


def compare(
    old: descriptor_pb2.FileDescriptorSet, new: descriptor_pb2.FileDescriptorSet
) -> list[str]:
    """Every break of ``new`` against ``old``, one line each."""
    problems: list[str] = []
    old_messages, old_enums, old_services = index(old)
    new_messages, new_enums, new_services = index(new)
    for name, before in old_messages.items():
        after = new_messages.get(name)
        if after is None:
            problems.append(f"message {name[1:]} was removed")
            continue
        by_number = {f.number: f for f in after.field}
        by_name = {f.name: f for f in after.field}
        for field in before.field:
            where = f"{name[1:]}.{field.name} = {field.number}"
            now = by_number.get(field.number)
            moved = by_name.get(field.name)
            if moved is not None and moved.number != field.number:
                problems.append(f"{where} was renumbered to {moved.number}")
            elif now is None and not _reserved(
                after.reserved_range, after.reserved_name, field.number, field.name
            ):
                problems.append(f"{where} was removed without reserving its number and name")
            if now is not None and _field_shape(now) != _field_shape(field):
                problems.append(f"{where} changed type or label")
    for name, before_enum in old_enums.items():
        after_enum = new_enums.get(name)
        if after_enum is None:
            problems.append(f"enum {name[1:]} was removed")
            continue
        numbers = {v.number for v in after_enum.value}
        for value in before_enum.value:
            if value.number not in numbers and not _reserved(
                after_enum.reserved_range, after_enum.reserved_name, value.number, value.name
            ):
                problems.append(f"{name[1:]}.{value.name} = {value.number} was removed unreserved")
    for name, before_service in old_services.items():
        after_service = new_services.get(name)
        if after_service is None:
            problems.append(f"service {name[1:]} was removed")
            continue
        methods = {m.name: m for m in after_service.method}
        for method in before_service.method:
            now_method = methods.get(method.name)
            where = f"{name[1:]}.{method.name}"
            if now_method is None:
                problems.append(f"method {where} was removed")
                continue
            shape = ("input_type", "output_type", "client_streaming", "server_streaming")
            if any(getattr(now_method, a) != getattr(method, a) for a in shape):
                problems.append(f"method {where} changed its request, response or streaming")
    return problems


def _without_source_info(fds: descriptor_pb2.FileDescriptorSet) -> descriptor_pb2.FileDescriptorSet:
    for file in fds.file:
        file.ClearField("source_code_info")
    return fds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline")
    args = parser.parse_args()
    now = _without_source_info(current())
    if args.update:
        BASELINE.write_text(
            "# The protos' descriptor set: the baseline of scripts/proto_compat.py.\n"
            "# Rewrite it only for a deliberate break: scripts/proto_compat.py --update\n"
            + text_format.MessageToString(now)
        )
        print(f"proto compatibility: baseline written to {BASELINE.relative_to(ROOT)}")
        return 0
    baseline = text_format.Parse(BASELINE.read_text(), descriptor_pb2.FileDescriptorSet())
    problems = compare(baseline, now)
    for problem in problems:
        print(f"proto compatibility: {problem}", file=sys.stderr)
    if problems:
        print(
            f"proto compatibility: {len(problems)} breaking change(s) against "
            f"{BASELINE.relative_to(ROOT)}; reserve removed numbers and names, or, for a "
            "deliberate break, run scripts/proto_compat.py --update",
            file=sys.stderr,
        )
        return 1
    print("proto compatibility: no breaking change against the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
