"""Bytes that are not a valid request, sent to every method of every service.

gRPC's default answer to a request that does not decode is UNKNOWN
("Unexpected DecodeError") and a traceback in the server's log, before any
auth check: cim answers INVALID_ARGUMENT instead, logs one short throttled
line, and keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import common_pb2, route_pb2
from cim.route.app import SERVICES as ROUTE_SERVICES
from cim.server.app import SERVICES as SERVER_SERVICES

# Every service each process serves, as the apps list them: a new one is in.
SERVICES: list[tuple[str, ServiceDescriptor]] = [
    *(("route", service) for service in ROUTE_SERVICES),
    *(("server", service) for service in SERVER_SERVICES),
]
METHODS = [(where, method) for where, service in SERVICES for method in service.methods]

# Field 1 claims 5 bytes and 2 follow: no message type decodes it.
TRUNCATED = b"\x0a\x05ab"
# Field 1 with wire type 7, which does not exist.
BAD_WIRE_TYPE = b"\x0f\x01"
# The issue's example: field 1 varint 3, field 2 a string of invalid UTF-8.
ISSUE_EXAMPLE = bytes.fromhex("08031203fffefd")


def _bad_utf8(message: Any) -> bytes | None:
    """The message's first string field (top level) holding invalid UTF-8."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return bytes([field.number << 3 | 2, 3]) + b"\xff\xfe\xfd"
    return None


def _cases() -> Iterator[Any]:
    for where, method in METHODS:
        name = f"{method.containing_service.name}.{method.name}"
        yield pytest.param(where, method, TRUNCATED, id=f"{name}-truncated")
        yield pytest.param(where, method, BAD_WIRE_TYPE, id=f"{name}-bad-wire-type")
        utf8 = _bad_utf8(method.input_type)
        if utf8 is not None:
            yield pytest.param(where, method, utf8, id=f"{name}-invalid-utf8")


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def _status(
    channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes, metadata: Any = None
) -> Any:
    """The call's error for ``payload`` sent raw (no credentials unless given)."""
    try:
        if method.client_streaming:
            call = channel.stream_stream(_path(method))(
                iter([payload]), metadata=metadata, timeout=5
            )
            async for _ in call:
                pass
        else:
            await channel.unary_unary(_path(method))(payload, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"{_path(method)} accepted {payload!r}")


def _no_tracebacks(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()


@pytest.mark.parametrize(("where", "method", "payload"), list(_cases()))
async def test_a_request_that_does_not_decode_is_invalid_argument(
    rr, raw, caplog, where, method, payload
):
    """No credentials are needed to be told so, except on an internal stream,
    whose secret is checked (from its metadata) before any message is read."""
    address = rr.route_address if where == "route" else rr.embedded.servers[0].address
    internal_stream = method.client_streaming and "Internal" in method.containing_service.name
    metadata = raw.secret(rr) if internal_stream else None
    with caplog.at_level(logging.WARNING):
        err = await _status(raw.channel(address), method, payload, metadata)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details().startswith(f"malformed request to {_path(method)}"), err.details()
    _no_tracebacks(caplog.records)


@pytest.mark.parametrize(
    ("where", "method"),
    [(w, m) for w, m in METHODS if m.client_streaming and "Internal" in m.containing_service.name],
    ids=lambda v: getattr(v, "full_name", v),
)
async def test_an_internal_stream_without_the_secret_is_refused_before_reading(
    rr, raw, caplog, where, method
):
    address = rr.route_address if where == "route" else rr.embedded.servers[0].address
    with caplog.at_level(logging.WARNING):
        err = await _status(raw.channel(address), method, TRUNCATED)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    _no_tracebacks(caplog.records)


async def test_the_issue_example_to_send_private_without_a_token(rr, raw, caplog):
    method = route_pb2.DESCRIPTOR.services_by_name["Route"].methods_by_name["SendPrivate"]
    with caplog.at_level(logging.WARNING):
        err = await _status(raw.channel(rr.route_address), method, ISSUE_EXAMPLE)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    _no_tracebacks(caplog.records)


async def test_repeated_bad_input_logs_one_line_and_the_server_keeps_serving(rr, raw, caplog):
    method = route_pb2.DESCRIPTOR.services_by_name["Route"].methods_by_name["Register"]
    channel = raw.channel(rr.route_address)
    with caplog.at_level(logging.WARNING):
        for _ in range(200):
            err = await _status(channel, method, TRUNCATED)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    malformed = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(malformed) <= 1, [r.getMessage() for r in malformed]
    _no_tracebacks(caplog.records)
    # Well-formed requests on the same channel are served as ever.
    reply = await raw.route(rr).Register(
        route_pb2.RegisterRequest(user_name="after-garbage", password="pw"), timeout=5
    )
    assert reply.created


async def test_a_bad_frame_in_a_well_formed_stream_ends_only_that_stream(rr, raw):
    """A route's push stream with one frame that does not decode ends with
    INVALID_ARGUMENT; the chat server serves the next stream as ever."""
    address = rr.embedded.servers[0].address
    good = chat_internal_pb2.DeliverRequest().SerializeToString()
    deliver = raw.channel(address).stream_stream("/cim.internal.v1.ChatInternal/DeliverStream")
    call = deliver(iter([good, TRUNCATED, good]), metadata=raw.secret(rr), timeout=5)
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in call:
            replies.append(reply)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(replies) == 1  # the good frame before it was answered
    answered = await raw.deliver(address, chat_internal_pb2.DeliverRequest(), raw.secret(rr))
    assert list(answered.delivered) == []


async def test_a_megabyte_device_id_is_refused_before_login(rr, raw, caplog, fails):
    """It used to log in and return a 1.4 MB token that every RPC refused."""
    await raw.register(rr, "dana")
    with caplog.at_level(logging.WARNING):
        err = await fails(
            raw.route(rr).Login(
                route_pb2.LoginRequest(
                    user_name="dana", password="secret-pw", device_id="d" * 2**20
                ),
                timeout=5,
            )
        )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "request to /cim.v1.Route/Login too large: "
        "LoginRequest.device_id is 1048576 bytes; the limit is 64"
    )
    _no_tracebacks(caplog.records)


async def test_an_oversized_field_in_a_batch_ends_the_internal_stream(rr, raw, fails):
    oversized = route_internal_pb2.SubmitBatchRequest(
        messages=[
            route_internal_pb2.SubmittedMessage(
                sender_id=1, sender_name="n" * 129, private=common_pb2.SendPrivateRequest(text="hi")
            )
        ]
    )
    err = await fails(raw.submit(rr, oversized, raw.secret(rr)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().endswith(
        "SubmitBatchRequest.messages[0].sender_name is 129 bytes; the limit is 128"
    )
