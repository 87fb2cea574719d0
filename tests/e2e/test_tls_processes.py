"""``cim route``, ``cim server``, ``cim client`` and ``grpcurl`` over mutual TLS,
as separate processes, with certificates made by the README's openssl commands.

The route takes its TLS flags on the command line, the chat server from
``CIM_TLS_*`` variables.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.pki import Cert, Pki, make_ca

from .helpers import GRPCURL, Client, Proc, Procs, cim_env, free_ports, piped_child, wait_logged_in

pytestmark = pytest.mark.e2e

CLUSTER_SECRET = "e2e-tls-cluster-secret"
TOKEN_KEYS = "k1:0123456789abcdef0123"


@dataclass
class TlsDeployment:
    pki: Pki
    node: Cert
    user: Cert
    route: Proc
    server: Proc
    route_address: str
    log_root: Path
    procs: Procs

    def client(self, name: str, *flags: str, wait: bool = True) -> Client:
        args = ["client", "--user", name, "--route", self.route_address]
        args += ["--log-dir", str(self.log_root / f"chatlog-{name}"), *flags]
        child = piped_child(args, cim_env(CIM_PASSWORD=f"{name}-pw"))
        client = self.procs.track(Client(child, f"client {name}", name))
        if wait:
            wait_logged_in(client)
        return client

    def user_flags(self) -> tuple[str, ...]:
        return ("--tls-ca", self.pki.ca, "--tls-cert", self.user.cert, "--tls-key", self.user.key)


@pytest.fixture
def mtls(procs: Procs, tmp_path: Path) -> Iterator[TlsDeployment]:
    pki = make_ca(tmp_path / "pki")
    node, user = pki.node(), pki.user("alice")
    route_port, server_port = free_ports(2)
    route_address, server_address = f"127.0.0.1:{route_port}", f"127.0.0.1:{server_port}"
    route = procs.piped(
        ["route", "--server", server_address, "--cluster-secret", CLUSTER_SECRET,
         "--token-keys", TOKEN_KEYS, "--port", str(route_port),
         "--tls-cert", node.cert, "--tls-key", node.key, "--tls-ca", pki.ca, "--tls-client-auth"],
        "cim route",
    )  # fmt: skip
    server = procs.piped(
        ["server", "--route", route_address, "--cluster-secret", CLUSTER_SECRET,
         "--port", str(server_port)],
        "cim server",
        env=cim_env(
            CIM_TLS_CERT=node.cert,
            CIM_TLS_KEY=node.key,
            CIM_TLS_CA=pki.ca,
            CIM_TLS_CLIENT_AUTH="1",
        ),
    )  # fmt: skip
    route.expect(r"listening on .*\(TLS, client certificates required\)")
    server.expect(r"listening on .*\(TLS, client certificates required\)")
    route.expect(rf"^cim route \S+ on {route_address};")
    server.expect(rf"^cim server \S+ on {server_address};")
    yield TlsDeployment(pki, node, user, route, server, route_address, tmp_path, procs)
    for proc in (server, route):
        status = proc.stop(timeout=10.0)
        assert status == 0, f"{proc.name} exited with {status}; output:\n{proc.output[-4000:]}"
        assert "Traceback" not in proc.output, proc.output[-4000:]


def test_consoles_chat_over_mutual_tls(mtls: TlsDeployment) -> None:
    alice = mtls.client("alice", *mtls.user_flags())
    bob = mtls.client("bob", *mtls.user_flags())
    alice.sendline(f"{bob.user_id};;hello over mTLS")
    alice.expect(rf"^\* to #{bob.user_id}: delivered$")
    bob.expect(rf"alice#{alice.user_id} \(private\): hello over mTLS$")
    for console in (alice, bob):
        console.sendline(":q!")
        console.expect(r"^\* bye$")
        assert console.wait_exit() == 0


def test_clients_without_tls_or_without_a_certificate_are_told_why(
    mtls: TlsDeployment,
) -> None:
    plain = mtls.client("plain", wait=False)
    plain.expect(r"^Error: .*\(does the cluster use TLS\? then give --tls-ca\)")
    assert plain.wait_exit() == 1
    anonymous = mtls.client("anon", "--tls-ca", mtls.pki.ca, wait=False)
    anonymous.expect(r"^Error: .*give --tls-cert and --tls-key\)")
    assert anonymous.wait_exit() == 1
    for proc in (plain, anonymous):
        assert "Traceback" not in proc.output


def test_grpcurl_with_the_readme_flags(mtls: TlsDeployment) -> None:
    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GRPCURL, "-max-time", "5", *args, mtls.route_address, "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    listed = grpcurl("-cacert", mtls.pki.ca, "-cert", mtls.user.cert, "-key", mtls.user.key)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^cim\.v1\.Route$", listed.stdout, re.M)
    assert grpcurl("-cacert", mtls.pki.ca).returncode != 0  # no client certificate
    assert grpcurl("-plaintext").returncode != 0
