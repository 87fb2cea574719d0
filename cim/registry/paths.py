"""Every ZooKeeper path cim uses, in one place.

    <root>                      default "/cim"
    ├── servers/<member id>     ephemeral, Member JSON of a chat server
    └── routes/<member id>      ephemeral, Member JSON of a route

A node is named after its member id, url-quoted: ids such as
"127.0.0.1:7201" or ones with "/" in them become one valid node name.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from cim.core.members import MemberKind
from cim.errors import InvalidArgument

DEFAULT_ROOT = "/cim"

_KIND_DIRS: dict[MemberKind, str] = {
    MemberKind.SERVER: "servers",
    MemberKind.ROUTE: "routes",
}


def node_name(member_id: str) -> str:
    """The node name of a member id (reversible with :func:`member_id_of`)."""
    if not member_id:
        raise InvalidArgument("a member id must not be empty")
    name = quote(member_id, safe="")
    # ZooKeeper reserves "." and ".." as names; quote leaves dots alone.
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    return name


def member_id_of(name: str) -> str:
    return unquote(name)


@dataclass(frozen=True)
class RegistryPaths:
    """The paths under one root, so that several clusters (or tests) can share
    one ZooKeeper."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not self.root.startswith("/") or "//" in self.root:
            raise InvalidArgument(
                f"ZooKeeper root must be an absolute path like {DEFAULT_ROOT!r}, got {self.root!r}"
            )
        # "/cim/" and "/cim" are one root; "/" alone becomes "" (children at "/servers").
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def servers(self) -> str:
        return self.kind_dir(MemberKind.SERVER)

    @property
    def routes(self) -> str:
        return self.kind_dir(MemberKind.ROUTE)

    def kind_dir(self, kind: MemberKind) -> str:
        """The parent of every member of one kind."""
        return f"{self.root}/{_KIND_DIRS[kind]}"

    def member(self, kind: MemberKind, member_id: str) -> str:
        return f"{self.kind_dir(kind)}/{node_name(member_id)}"

    def child(self, kind: MemberKind, name: str) -> str:
        """The path of a child node listed under ``kind_dir(kind)``."""
        return f"{self.kind_dir(kind)}/{name}"
