"""Fixtures of the CLI suite: ``cim`` invoked in this process through click's
``CliRunner``, and a ``cim dev`` process for the client to talk to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cim.cli import main, runtime
from cim.processes import free_ports

CIM = shutil.which("cim", path=os.path.dirname(sys.executable)) or "cim"


def invoke(*args: str, env: dict[str, str | None] | None = None, stdin: str = "") -> Result:
    """``cim ARGS`` in this process, without any inherited CIM_* setting."""
    clean: dict[str, str | None] = {key: None for key in os.environ if key.startswith("CIM_")}
    return CliRunner().invoke(main, list(args), env={**clean, **(env or {})}, input=stdin)


def assert_fails(result: Result, exit_code: int, *expected: str) -> None:
    """A one-line ``Error: ...`` (the last line) naming ``expected``, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.output.rstrip().endswith(errors[0]), result.output
    for text in expected:
        assert text in errors[0], result.output


async def serving(address: str, ca: str | None = None) -> bool:
    """The health service at ``address`` says SERVING (over TLS with ``ca``)."""
    roots = Path(ca).read_bytes() if ca else None  # noqa: ASYNC240 - a small file, once
    channel = (
        grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(roots))
        if roots
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5.0
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


StartAndStop = Callable[..., Result]
Then = Callable[[], Awaitable[None]]


@pytest.fixture
def start_and_stop(monkeypatch: pytest.MonkeyPatch) -> StartAndStop:
    """``start_and_stop(*args, ports=[...])``: runs a long-running command
    which, once started, checks that every port in ``ports`` answers health
    SERVING (over TLS with ``ca``) and runs ``then`` (in the command's event
    loop) instead of waiting for SIGINT or SIGTERM, then stops as on a signal.
    Returns the result of a command that exited 0 after all that."""

    def run(
        *args: str, ports: list[int], ca: str | None = None, then: Then | None = None
    ) -> Result:
        checked: list[int] = []

        async def instead_of_a_signal() -> None:
            for port in ports:
                assert await serving(f"127.0.0.1:{port}", ca), port
                checked.append(port)
            if then is not None:
                await then()
                checked.append(0)

        monkeypatch.setattr(runtime, "wait_for_signal", instead_of_a_signal)
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert checked == ports + ([0] if then else []), result.output
        return result

    return run


@dataclass
class DevProcess:
    route_address: str
    # The admin key `cim dev` made and printed ("id:secret").
    admin_key: str


@pytest.fixture
def dev_process() -> Iterator[DevProcess]:
    """``cim dev`` as a process on free ports (for the client, which runs its own loop)."""
    route_port, *server_ports = free_ports(3)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CIM_")}
    process = subprocess.Popen(
        [CIM, "dev", "--route-port", str(route_port), "--server-ports",
         ",".join(map(str, server_ports)), "--log-level", "warning"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        output = ""
        while "Press Ctrl-C to stop." not in output:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail(f"cim dev did not start:\n{output}{line}")
            output += line
        found = re.search(r"--admin-key (\S+)", output)
        assert found, f"cim dev printed no admin key:\n{output}"
        yield DevProcess(f"127.0.0.1:{route_port}", found.group(1))
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
