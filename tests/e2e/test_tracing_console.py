"""``cim dev --tracing console``: the spans of a message, route's and chat
server's, are printed on stdout as one trace whose id the message carries."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cim.client.client import CimClient
from cim.config import ClientConfig
from cim.core.liveness import Backoff
from cim.processes import free_ports

from .helpers import CIM, cim_env
from .test_json_logs import wait_for

pytestmark = pytest.mark.e2e


def printed_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed between other lines."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (start := text.find("\n{", index)) != -1:
        span, index = decoder.raw_decode(text, start + 1)
        spans.append(span)
    return spans


def start_traced_dev(
    route_port: int, server_port: int, stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    """``cim dev`` with console tracing (from CIM_TRACING)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(
            [CIM, "dev", "--route-port", str(route_port), "--server-ports", str(server_port)],
            env=cim_env(CIM_TRACING="console"),
            stdout=out,
            stderr=err,
        )


async def test_console_tracing_prints_one_trace_per_message(tmp_path: Path) -> None:
    route_port, server_port = free_ports(2)
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    proc = start_traced_dev(route_port, server_port, stdout, stderr)
    try:
        wait_for(stdout, "Press Ctrl-C to stop.", proc)
        config = ClientConfig(
            routes=(f"127.0.0.1:{route_port}",),
            backoff=Backoff(base=0.05, cap=0.2, retries=20),
            rpc_timeout=5.0,
        )
        alice, bob = CimClient("alice", "pw-alice", config), CimClient("bob", "pw-bob", config)
        await alice.start()
        await bob.start()
        await alice.send_private(bob.user_id, "traced hello")
        async with asyncio.timeout(5.0):
            message = await anext(bob.messages().__aiter__())
        await alice.close()
        await bob.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15.0) == 0, stderr.read_text()

    # Stopping flushes the batch processor: every span is printed by now.
    spans = [
        span
        for span in printed_spans(stdout.read_text())
        if span["context"]["trace_id"] == f"0x{message.trace_id}"
    ]
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {"cim.accept", "cim.store", "cim.push", "cim.deliver"}, spans
    services = {
        name: span["resource"]["attributes"]["service.name"] for name, span in by_name.items()
    }
    assert services == {
        "cim.accept": "cim-route",
        "cim.store": "cim-route",
        "cim.push": "cim-route",
        "cim.deliver": "cim-server",
    }
    assert by_name["cim.deliver"]["parent_id"] == by_name["cim.push"]["context"]["span_id"]
    assert "traced hello" not in stdout.read_text()
