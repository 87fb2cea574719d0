"""Login and message round-trip times in embedded mode (numbers for docs/benchmarks.md).

Runs a route and two chat servers in this process (uvloop when installed) and
measures, with the real client library over loopback gRPC:
  * login: Route.Login + opening the Chat stream (until LoginOk);
  * private round trip: alice sends to bob on her stream, bob's reply to alice
    arrives on hers (two one-way trips, timed at alice);
  * send result: time from alice's send until its result frame comes back;
  * unary send: Route.SendPrivate until bob has the message.
Usage: .venv/bin/python scripts/measure_latency.py [rounds] [ROUTE,ROUTE...]
With route addresses it measures a running cluster (e.g. `make cluster`)
instead of an embedded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import sys
import time
from typing import Any

from cim import testing
from cim.client import CimClient
from cim.config import ClientConfig
from cim.core.passwords import ScryptParams


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return (
        f"{name:<28} n={len(ms):<5} p50={p(0.5):6.2f} ms  p90={p(0.9):6.2f} ms  "
        f"p99={p(0.99):6.2f} ms  mean={statistics.fmean(ms):6.2f} ms"
    )


class External:
    """A running cluster at the given routes, with the TestCluster calls used here."""

    def __init__(self, routes: tuple[str, ...]) -> None:
        self.config = ClientConfig(routes=routes)
        self.tag = secrets.token_hex(3)

    async def client(self, name: str, connect: bool = True) -> CimClient:
        client = CimClient(f"{name}-{self.tag}", "measure-pw", self.config)
        await client.register()
        if connect:
            await client.login()
            await client.connect()
        return client


async def main(rounds: int, routes: tuple[str, ...]) -> None:
    config = testing.fast_route_config(scrypt=ScryptParams(), routing="round-robin")
    async with contextlib.AsyncExitStack() as stack:
        if routes:
            c: Any = External(routes)
        else:
            c = await stack.enter_async_context(testing.cluster(route_config=config))
        logins = []
        for i in range(min(rounds, 100)):
            client = await c.client(f"user{i}", connect=False)
            started = time.perf_counter()
            await client.login()
            await client.connect()
            logins.append(time.perf_counter() - started)
            await client.close()
        alice, bob = await c.client("alice"), await c.client("bob")
        assert alice.server and bob.server
        print(f"alice on {alice.server.server_id}, bob on {bob.server.server_id}")
        bob_inbox = bob.messages().__aiter__()
        alice_inbox = alice.messages().__aiter__()
        round_trips, results, unary = [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            await alice.send_private(bob.user_id, "ping")
            results.append(time.perf_counter() - started)
            await anext(bob_inbox)
            await bob.send_private(alice.user_id, "pong")
            await anext(alice_inbox)
            round_trips.append(time.perf_counter() - started)
        for _ in range(rounds):
            started = time.perf_counter()
            await alice.route.send_private(bob.user_id, "unary")
            await anext(bob_inbox)
            unary.append(time.perf_counter() - started)
        print(summary("login (scrypt n=2^14) + connect", logins))
        print(summary("stream send -> result", results))
        print(summary("private round trip (2 hops)", round_trips))
        print(summary("unary send -> received", unary))
        if routes:
            await alice.close()
            await bob.close()


if __name__ == "__main__":
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 500
        routes = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ()
        runner.run(main(rounds, routes))
