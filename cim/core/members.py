"""What the registry knows about each process of the cluster."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class MemberKind(StrEnum):
    SERVER = "server"
    ROUTE = "route"


@dataclass(frozen=True)
class Member:
    """One registered chat server or route.

    ``address`` is what clients dial (a chat server's Chat service); routes
    and servers dial each other at ``address`` too (one port serves both the
    public and the internal service, guarded by the cluster secret).
    """

    kind: MemberKind
    member_id: str
    address: str
    connections: int = 0

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
        )
