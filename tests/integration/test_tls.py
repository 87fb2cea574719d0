"""TLS on every listener, and mutual TLS between routes and chat servers, with
certificates made in the test (``tests/fixtures/pki.py``, the README's openssl
commands).

Route and chat servers serve TLS with one "node" certificate (SANs 127.0.0.1
and localhost, the host they advertise) and present it as client certificate
on their calls to each other; clients verify them with the CA.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from cim.cli import main as cli
from cim.client.client import CimClient
from cim.config import ServerConfig, TlsConfig
from cim.errors import Unavailable
from cim.grpcutil import secret_metadata
from cim.proto.internal.v1 import (
    chat_internal_pb2,
    chat_internal_pb2_grpc,
    route_internal_pb2,
    route_internal_pb2_grpc,
)
from cim.proto.v1 import route_pb2, route_pb2_grpc
from cim.testing import TestCluster, cluster
from cim.testing import fast_route_config as route_config
from cim.tls import TlsError, is_loopback
from cim.tls import load as load_tls
from tests.fixtures.pki import Cert, Pki, make_ca


@dataclass(frozen=True)
class Certs:
    pki: Pki
    node: Cert  # route and chat servers: SANs 127.0.0.1, localhost
    user: Cert  # a user's client certificate
    named: Cert  # SAN DNS:cim.internal only
    other_ca: Pki  # a CA nobody in the cluster trusts
    stranger: Cert  # a node certificate from other_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("pki")
    pki = make_ca(root / "ca")
    other = make_ca(root / "other", "other-ca")
    return Certs(
        pki=pki,
        node=pki.node(),
        user=pki.user(),
        named=pki.node("named", "DNS:cim.internal"),
        other_ca=other,
        stranger=other.node("stranger"),
    )


def node_tls(certs: Certs, *, client_auth: bool = False, cert: Cert | None = None) -> TlsConfig:
    cert = cert or certs.node
    return TlsConfig(cert.cert, cert.key, certs.pki.ca, require_client_cert=client_auth)


@contextlib.asynccontextmanager
async def tls_cluster(tls: TlsConfig, servers: int = 2) -> AsyncIterator[TestCluster]:
    # The embedded cluster gives route and servers a secret of its own.
    async with cluster(
        servers=servers,
        route_config=route_config(tls=tls, routing="round-robin"),
        server_config=server_config(tls=tls),
    ) as c:
        yield c


def server_config(**overrides: object) -> ServerConfig:
    """A chat server config with the secret of a test route config."""
    route = route_config()
    secret = {f.name: getattr(route, f.name) for f in fields(ServerConfig) if "secret" in f.name}
    return ServerConfig(**secret, **overrides)  # type: ignore[arg-type]


def client_tls(certs: Certs, **overrides: object) -> TlsConfig:
    return TlsConfig(**{"ca_file": certs.pki.ca, **overrides})  # type: ignore[arg-type]


async def chat(c: TestCluster, tls: TlsConfig | None, names: tuple[str, str]) -> None:
    """Two users with ``tls`` register, log in (on different chat servers),
    connect, and exchange a private and a group message."""
    alice = await c.client(names[0], config=c.client_config(tls=tls))
    bob = await c.client(names[1], config=c.client_config(tls=tls))
    assert alice.server is not None and bob.server is not None
    assert alice.server.server_id != bob.server.server_id  # round-robin: both servers in play
    await alice.send_private(bob.user_id, "over tls")
    message = await c.next_message(bob)
    assert (message.sender_id, message.text) == (alice.user_id, "over tls")
    await bob.send_group("hello all")
    message = await c.next_message(alice)
    assert (message.sender_id, message.text) == (bob.user_id, "hello all")


def secure_channel(address: str, ca: str, cert: Cert | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(cert.key).read_bytes() if cert else None,
        certificate_chain=Path(cert.cert).read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def register_status(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status of a Register over ``channel`` (OK when it succeeds)."""
    try:
        await route_pb2_grpc.RouteStub(channel).Register(
            route_pb2.RegisterRequest(user_name="probe", password="probe-pw"), timeout=5
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# --- TLS, server certificates only ------------------------------------------------


async def test_clients_with_the_ca_chat_end_to_end_over_tls(certs: Certs) -> None:
    async with tls_cluster(node_tls(certs)) as c:
        # Logins, streams, the route's Deliver to chat servers and their
        # submits to the route: all over TLS (a plaintext call would fail).
        await chat(c, client_tls(certs), ("alice", "bob"))


async def test_plaintext_callers_get_unavailable(certs: Certs) -> None:
    async with tls_cluster(node_tls(certs)) as c:
        async with grpc.aio.insecure_channel(c.route_address) as channel:
            assert await register_status(channel) == grpc.StatusCode.UNAVAILABLE
        server_address = c.embedded.servers[0].address
        async with grpc.aio.insecure_channel(server_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat_internal_pb2_grpc.ChatInternalStub(channel).Presence(
                    chat_internal_pb2.PresenceRequest(), metadata=_secret(c), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        plain = CimClient("plain", "pw", c.client_config())
        try:
            with pytest.raises(Unavailable):
                await plain.register()
        finally:
            await plain.close()


async def test_a_client_with_the_wrong_ca_gets_unavailable(certs: Certs) -> None:
    async with tls_cluster(node_tls(certs)) as c:
        async with secure_channel(c.route_address, certs.other_ca.ca) as channel:
            assert await register_status(channel) == grpc.StatusCode.UNAVAILABLE
        wrong = CimClient(
            "wrong", "pw", c.client_config(tls=client_tls(certs, ca_file=certs.other_ca.ca))
        )
        try:
            with pytest.raises(Unavailable):
                await wrong.register()
        finally:
            await wrong.close()
        # The same cluster answers a client with the right CA.
        async with secure_channel(c.route_address, certs.pki.ca) as channel:
            assert await register_status(channel) == grpc.StatusCode.OK


async def test_server_certificates_are_checked_against_the_name(certs: Certs) -> None:
    """Certificates for another name than the advertised host are refused,
    unless ``server_name`` says which name to expect."""
    named = TlsConfig(certs.named.cert, certs.named.key, certs.pki.ca, server_name="cim.internal")
    async with tls_cluster(named) as c:
        # Addresses are 127.0.0.1, which the certificate does not carry.
        mismatch = CimClient("mismatch", "pw", c.client_config(tls=client_tls(certs)))
        try:
            with pytest.raises(Unavailable):
                await mismatch.register()
        finally:
            await mismatch.close()
        # With the name given (the cluster members give it too), it all works.
        await chat(c, client_tls(certs, server_name="cim.internal"), ("nina", "nick"))


# --- mutual TLS -------------------------------------------------------------------


async def test_mutual_tls_cluster_chats_with_client_certificates(certs: Certs) -> None:
    """Routes and chat servers require client certificates: their calls to
    each other present the node certificate, users present theirs."""
    async with tls_cluster(node_tls(certs, client_auth=True)) as c:
        user = client_tls(certs, cert_file=certs.user.cert, key_file=certs.user.key)
        await chat(c, user, ("carol", "dave"))


async def test_mutual_tls_refuses_callers_without_a_client_certificate(certs: Certs) -> None:
    async with tls_cluster(node_tls(certs, client_auth=True)) as c:
        server_address = c.embedded.servers[0].address

        async def internal_statuses(cert: Cert | None, ca: str) -> list[grpc.StatusCode]:
            """Statuses of an internal call to the route and to a chat server
            (with the real cluster secret) by a caller presenting ``cert``."""
            statuses = []
            async with secure_channel(c.route_address, ca, cert) as channel:
                try:
                    await route_internal_pb2_grpc.RouteInternalStub(channel).RefreshSessions(
                        route_internal_pb2.RefreshSessionsRequest(server_id="server-1"),
                        metadata=_secret(c),
                        timeout=5,
                    )
                    statuses.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    statuses.append(exc.code())
            async with secure_channel(server_address, ca, cert) as channel:
                try:
                    await chat_internal_pb2_grpc.ChatInternalStub(channel).Presence(
                        chat_internal_pb2.PresenceRequest(), metadata=_secret(c), timeout=5
                    )
                    statuses.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    statuses.append(exc.code())
            return statuses

        unavailable = [grpc.StatusCode.UNAVAILABLE] * 2
        # No client certificate, though it trusts the right CA: refused in the handshake.
        assert await internal_statuses(None, certs.pki.ca) == unavailable
        # A certificate from a CA the cluster does not trust: refused too.
        assert await internal_statuses(certs.stranger, certs.pki.ca) == unavailable
        # A member's certificate gets through.
        assert await internal_statuses(certs.node, certs.pki.ca) == [grpc.StatusCode.OK] * 2
        # Users, too, need a certificate: without one, not even Register.
        async with secure_channel(c.route_address, certs.pki.ca) as channel:
            assert await register_status(channel) == grpc.StatusCode.UNAVAILABLE
        anonymous = CimClient("anon", "pw", c.client_config(tls=client_tls(certs)))
        try:
            with pytest.raises(Unavailable):
                await anonymous.register()
        finally:
            await anonymous.close()


async def test_mutual_tls_keeps_the_cluster_secret(certs: Certs) -> None:
    """A client certificate is not a cluster membership: internal RPCs still
    need the secret (a user's certificate is from the same CA)."""
    async with (
        tls_cluster(node_tls(certs, client_auth=True)) as c,
        secure_channel(c.route_address, certs.pki.ca, certs.user) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await route_internal_pb2_grpc.RouteInternalStub(channel).RefreshSessions(
                route_internal_pb2.RefreshSessionsRequest(server_id="server-1"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- configuration, loading and the CLI --------------------------------------------


def test_bad_files_are_named_in_the_error(certs: Certs, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(TlsError, match=r"cannot read certificate .*missing\.pem"):
        load_tls(TlsConfig(str(tmp_path / "missing.pem"), certs.node.key))
    with pytest.raises(TlsError, match=r"private key .*not\.pem is not a PEM file"):
        load_tls(TlsConfig(certs.node.cert, str(not_pem)))
    with pytest.raises(TlsError, match="do not load as a pair"):
        load_tls(TlsConfig(certs.node.cert, certs.user.key))
    with pytest.raises(TlsError, match="CA certificate"):
        load_tls(TlsConfig(certs.node.cert, certs.node.key, certs.node.key))
    with pytest.raises(ValueError, match="both a certificate and its private key"):
        TlsConfig(cert_file=certs.node.cert)
    with pytest.raises(ValueError, match="needs the CA"):
        TlsConfig(certs.node.cert, certs.node.key, require_client_cert=True)
    with pytest.raises(ValueError, match="listener needs a certificate"):
        server_config(tls=TlsConfig(ca_file=certs.pki.ca))


def test_the_cli_reports_tls_mistakes_in_one_line(certs: Certs, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["server", "--cluster-secret", "s", "--route", "127.0.0.1:1"]
    cases = {
        "does not exist": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", certs.node.key],
        "both --tls-cert and --tls-key": ["--tls-cert", certs.node.cert],
        "--tls-client-auth needs --tls-ca": [
            "--tls-cert", certs.node.cert, "--tls-key", certs.node.key, "--tls-client-auth",
        ],
        "do not load as a pair": ["--tls-cert", certs.node.cert, "--tls-key", certs.user.key],
        "need --tls-cert and --tls-key": ["--tls-ca", certs.pki.ca],
    }  # fmt: skip
    for expected, flags in cases.items():
        result = runner.invoke(cli, base + flags)
        assert result.exit_code != 0, (flags, result.output)
        assert expected in result.output, (flags, result.output)
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, TlsError | ValueError), result.exception
    result = runner.invoke(
        cli, ["client", "--user", "u", "--password", "p", "--tls-cert", certs.user.cert]
    )
    assert result.exit_code != 0 and "both --tls-cert and --tls-key" in result.output
    result = runner.invoke(
        cli,
        ["route", "--cluster-secret", "s", "--token-keys", "k:0123456789abcdef", "--server",
         "127.0.0.1:1", "--tls-cert", certs.node.cert, "--tls-key", str(tmp_path / "gone.key")],
    )  # fmt: skip
    assert result.exit_code != 0 and "does not exist" in result.output


def test_plaintext_beyond_loopback_needs_an_explicit_flag() -> None:
    runner = CliRunner()
    for command in (
        ["server", "--cluster-secret", "s", "--route", "127.0.0.1:1", "--host", "0.0.0.0"],
        ["route", "--cluster-secret", "s", "--token-keys", "k:0123456789abcdef",
         "--server", "127.0.0.1:1", "--host", "10.0.0.5"],
    ):  # fmt: skip
        result = runner.invoke(cli, command)
        assert result.exit_code != 0, result.output
        assert "without TLS" in result.output and "--insecure-plaintext" in result.output
        assert "Traceback" not in result.output
    from cim.tls import listener_tls

    assert listener_tls(None, None, None, False, "0.0.0.0", insecure_plaintext=True) is None
    assert listener_tls(None, None, None, False, "127.0.0.1", insecure_plaintext=False) is None


async def test_plaintext_beyond_loopback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from cim.tls import warn_if_exposed

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    with caplog.at_level(logging.WARNING, logger="cim.tls"):
        warn_if_exposed("route r1", "127.0.0.1", None)
        assert not caplog.records
        warn_if_exposed("route r1", "0.0.0.0", None)
    assert "without TLS" in caplog.text and "0.0.0.0" in caplog.text


def _secret(c: TestCluster) -> tuple[tuple[str, str], ...]:
    return secret_metadata(c.embedded.route.config.cluster_secret)
