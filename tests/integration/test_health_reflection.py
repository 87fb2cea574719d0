"""Standard services: gRPC health checking and server reflection on every process."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


async def _check(raw, address: str, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(raw.channel(address))
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def _list_services(raw, address: str) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(raw.channel(address))
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    reply = await call.read()
    assert reply is not grpc.aio.EOF
    assert reply.WhichOneof("message_response") == "list_services_response", reply
    return {service.name for service in reply.list_services_response.service}


async def _file_containing(
    raw, address: str, symbol: str
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(raw.channel(address))
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    await call.done_writing()
    return await call.read()


@pytest.mark.parametrize(
    "service",
    ["", "cim.v1.Route", "cim.v1.Groups", "cim.admin.v1.Admin", "cim.internal.v1.RouteInternal"],
)
async def test_route_reports_serving(rr, raw, service):
    assert await _check(raw, rr.route_address, service) == SERVING


@pytest.mark.parametrize("service", ["", "cim.v1.Chat", "cim.internal.v1.ChatInternal"])
async def test_chat_servers_report_serving(rr, raw, service):
    for server in rr.embedded.servers:
        assert await _check(raw, server.address, service) == SERVING


async def test_health_of_an_unknown_service_is_not_found(rr, raw, fails):
    stub = health_pb2_grpc.HealthStub(raw.channel(rr.route_address))
    err = await fails(stub.Check(health_pb2.HealthCheckRequest(service="cim.v1.Nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_route_reflection_lists_only_its_public_services(rr, raw):
    services = await _list_services(raw, rr.route_address)
    # The admin API is listed (admins use grpcurl) even where it is off.
    assert services == {"cim.v1.Route", "cim.v1.Groups", "cim.admin.v1.Admin", HEALTH, REFLECTION}


async def test_chat_server_reflection_lists_only_its_public_services(rr, raw):
    for server in rr.embedded.servers:
        services = await _list_services(raw, server.address)
        assert services == {"cim.v1.Chat", HEALTH, REFLECTION}


@pytest.mark.parametrize(
    ("target", "symbol"),
    [
        ("route", "cim.internal.v1.RouteInternal"),
        ("route", "cim.internal.v1.SubmitBatchRequest"),
        ("server", "cim.internal.v1.ChatInternal"),
        ("server", "cim.internal.v1.ChatInternal.DeliverStream"),
    ],
)
async def test_reflection_does_not_describe_internal_services(rr, raw, target, symbol):
    address = rr.route_address if target == "route" else rr.embedded.servers[0].address
    reply = await _file_containing(raw, address, symbol)
    assert reply.WhichOneof("message_response") == "error_response", reply
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize(
    ("target", "symbol"),
    [
        ("route", "cim.v1.Route"),
        ("route", "cim.v1.Route.Login"),
        ("route", "cim.v1.Route.History"),
        ("route", "cim.v1.HistoryRequest"),
        ("route", "cim.admin.v1.Admin"),
        ("route", "cim.admin.v1.Admin.DisableUser"),
        ("server", "cim.v1.Chat"),
    ],
)
async def test_reflection_serves_the_service_descriptors(rr, raw, target, symbol):
    address = rr.route_address if target == "route" else rr.embedded.servers[0].address
    reply = await _file_containing(raw, address, symbol)
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    assert reply.file_descriptor_response.file_descriptor_proto


async def test_draining_server_turns_not_serving(rr, raw):
    server = rr.embedded.servers[0]
    stub = health_pb2_grpc.HealthStub(raw.channel(server.address))
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="cim.v1.Chat"))
    try:
        async with asyncio.timeout(5):
            assert (await watch.read()).status == SERVING
            drain = asyncio.create_task(server.drain(0.2))
            assert (await watch.read()).status == NOT_SERVING
            await drain
    finally:
        watch.cancel()
    # The other server keeps serving.
    assert await _check(raw, rr.embedded.servers[1].address, "cim.v1.Chat") == SERVING


async def test_reflection_serves_the_protos_comments(rr, raw):
    """So that grpcurl describe shows who may call what and how it fails."""
    reply = await _file_containing(raw, rr.route_address, "cim.v1.Route")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in reply.file_descriptor_response.file_descriptor_proto
    ]
    route = next(f for f in files if f.name == "cim/proto/v1/route.proto")
    comments = " ".join(
        location.leading_comments + " ".join(location.leading_detached_comments)
        for location in route.source_code_info.location
    )
    assert "Who may call" in comments
    assert "Creates an account" in comments  # Register's own comment
    common = next(f for f in files if f.name == "cim/proto/v1/common.proto")
    assert common.source_code_info.location


async def test_reflection_serves_the_admin_protos_comments(rr, raw):
    reply = await _file_containing(raw, rr.route_address, "cim.admin.v1.Admin.KickUser")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in reply.file_descriptor_response.file_descriptor_proto
    ]
    admin = next(f for f in files if f.name == "cim/proto/admin/v1/admin.proto")
    comments = " ".join(location.leading_comments for location in admin.source_code_info.location)
    assert "Who may call" in comments and "cim-admin-key" in comments
    assert "PERMISSION_DENIED" in comments and "UNAUTHENTICATED" in comments
    assert "Ends the user's session" in comments  # KickUser's own comment
