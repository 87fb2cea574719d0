"""What the registry knows about each process of the cluster."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import StrEnum

from cim import __version__

# When this process started (as near as cim can tell): what every member it
# registers reports as ``started_at``, so an operator sees its uptime.
PROCESS_STARTED_AT = time.time()


class MemberKind(StrEnum):
    SERVER = "server"
    ROUTE = "route"


@dataclass(frozen=True)
class Member:
    """One registered chat server or route.

    ``address`` is what clients dial (a chat server's Chat service); routes
    and servers dial each other at ``address`` too (one port serves both the
    public and the internal service, guarded by the cluster secret).
    ``version`` and ``started_at`` (seconds since the epoch) tell operators
    what runs where and for how long; entries written before they existed
    read as ``""`` and ``0.0``. ``metrics`` is where it serves Prometheus
    metrics (``host:port``), ``""`` when it does not.
    """

    kind: MemberKind
    member_id: str
    address: str
    connections: int = 0
    version: str = __version__
    started_at: float = PROCESS_STARTED_AT
    metrics: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Member:
        data = json.loads(raw)
        return cls(
            kind=MemberKind(data["kind"]),
            member_id=str(data["member_id"]),
            address=str(data["address"]),
            connections=int(data.get("connections", 0)),
            version=str(data.get("version", "")),
            started_at=float(data.get("started_at", 0.0)),
            metrics=str(data.get("metrics", "")),
        )
