"""``grpcurl`` against ``cim dev``: reflection, health and a unary session.

This is how an operator pokes at a running cluster without a cim client, so
server reflection must describe the API and the Route service must be usable
with nothing but JSON and an authorization header.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import GRPCURL, Dev

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

REFLECTION = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext ARGS...`` (its exit status is left to the caller)."""
    return subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def grpcurl_ok(*args: str) -> str:
    result = grpcurl(*args)
    assert result.returncode == 0, f"grpcurl {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def grpcurl_json(*args: str) -> Any:
    return json.loads(grpcurl_ok(*args))


def listed(address: str) -> set[str]:
    return {line.strip() for line in grpcurl_ok(address, "list").splitlines() if line.strip()}


def test_route_lists_its_services(dev: Dev) -> None:
    services = listed(dev.route_address)
    assert {"cim.v1.Route", "grpc.health.v1.Health"} <= services
    assert services & set(REFLECTION), services
    # Internal services are served (behind the cluster secret) but not listed.
    assert not {s for s in services if "Internal" in s or s == "cim.v1.Chat"}, services


def test_chat_servers_list_the_chat_service(dev: Dev) -> None:
    for index in range(len(dev.server_ports)):
        services = listed(dev.server_address(index))
        assert {"cim.v1.Chat", "grpc.health.v1.Health"} <= services
        assert services & set(REFLECTION), services
        assert not {s for s in services if "Internal" in s}, services
        assert "cim.v1.Route" not in services


def test_describe_the_route_service(dev: Dev) -> None:
    out = grpcurl_ok(dev.route_address, "describe", "cim.v1.Route")
    assert "cim.v1.Route is a service:" in out
    assert "rpc Login ( .cim.v1.LoginRequest ) returns ( .cim.v1.LoginResponse );" in out
    out = grpcurl_ok(dev.route_address, "describe", "cim.v1.LoginRequest")
    assert "cim.v1.LoginRequest is a message:" in out
    # Each field's limit, and the comments, reach grpcurl users.
    assert "string user_name = 1 [(.cim.v1.max_size) = 128];" in out
    assert "// Instead of the password, after a lost connection" in out


def test_describe_a_method(dev: Dev) -> None:
    out = grpcurl_ok(dev.route_address, "describe", "cim.v1.Route.Login")
    assert "cim.v1.Route.Login is a method:" in out
    # The proto's comment reaches grpcurl users through reflection.
    assert "Checks the account, picks a chat server" in out
    assert "rpc Login ( .cim.v1.LoginRequest ) returns ( .cim.v1.LoginResponse );" in out


def test_unary_session_with_grpcurl(dev: Dev) -> None:
    route = dev.route_address
    credentials = json.dumps({"user_name": "gina", "password": "pw"})

    # grpcurl prints fields in protobuf's JSON form (lowerCamelCase), as for
    # any server whose reflection carries full descriptors; it reads both forms.
    registered = grpcurl_json("-d", credentials, route, "cim.v1.Route/Register")
    assert registered["userName"] == "gina"
    assert registered["created"] is True
    user_id = registered["userId"]  # int64: a JSON string

    login = grpcurl_json("-d", credentials, route, "cim.v1.Route/Login")
    assert login["userId"] == user_id
    assert login["server"]["address"] in {dev.server_address(i) for i in range(2)}
    token = login["sessionToken"]
    assert token

    auth = f"authorization: Bearer {token}"
    sent = grpcurl_json(
        "-H", auth, "-d", json.dumps({"text": "hi from grpcurl"}), route, "cim.v1.Route/SendGroup"
    )
    assert sent["messageId"]
    assert int(sent["serverTimeMs"]) > 0

    online = grpcurl_json("-H", auth, "-d", "{}", route, "cim.v1.Route/ListOnlineUsers")
    assert isinstance(online.get("users", []), list)

    # Without the token every Route RPC but Register and Login is refused.
    refused = grpcurl("-d", "{}", route, "cim.v1.Route/ListOnlineUsers")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stdout + refused.stderr
    refused = grpcurl(
        "-H", "authorization: Bearer not-a-token", "-d", "{}", route, "cim.v1.Route/SendGroup"
    )
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stdout + refused.stderr

    grpcurl_ok("-H", auth, "-d", "{}", route, "cim.v1.Route/Logout")


def test_health_checks_say_serving(dev: Dev) -> None:
    assert grpcurl_json(dev.route_address, "grpc.health.v1.Health/Check") == {"status": "SERVING"}
    for service in ("cim.v1.Route", "cim.internal.v1.RouteInternal"):
        reply = grpcurl_json(
            "-d", json.dumps({"service": service}), dev.route_address, "grpc.health.v1.Health/Check"
        )
        assert reply == {"status": "SERVING"}, service
    for index in range(len(dev.server_ports)):
        reply = grpcurl_json(
            "-d",
            json.dumps({"service": "cim.v1.Chat"}),
            dev.server_address(index),
            "grpc.health.v1.Health/Check",
        )
        assert reply == {"status": "SERVING"}


def _readme_tour() -> str:
    """The README's grpcurl tour: the first sh block of its section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A tour with grpcurl", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_tour_works_as_pasted(dev: Dev) -> None:
    """Each command of the README's tour, run by bash as a user pastes it
    (only the addresses are those of this test's cim dev)."""
    script = (
        _readme_tour()
        .replace("localhost:7100", dev.route_address)
        .replace("localhost:7201", dev.server_address(0))
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert "cim.v1.Route.SendPrivate is a method:" in out
    assert "// One message to one user" in out  # the proto's comment
    assert '"userName": "gina"' in out
    assert '"status": "DELIVERY_STATUS_NO_RECIPIENTS"' in out  # nobody else online
    # FetchOffline: gina's inbox is empty, and grpcurl leaves zero fields out.
    assert "\n{\n  \n}\n" in out
    assert '"status": "SERVING"' in out
    # The group part: ListMembers, the send to the group and its History.
    members = _reply_at(out, '{\n  "group": {')
    group = members["group"]
    gid = group["groupId"]
    assert group["name"] == "team" and group["myRole"] == "GROUP_ROLE_OWNER"
    assert group["memberCount"] == 2
    assert [(m["role"], m["joinedPosition"]) for m in members["members"]] == [
        ("GROUP_ROLE_OWNER", "1"),
        ("GROUP_ROLE_MEMBER", "1"),
    ]
    gina, hal = (m["userId"] for m in members["members"])
    assert group["ownerId"] == gina
    sent = _reply_at(out, '{\n  "messageId"', after='"groupId": "')
    assert sent["status"] == "DELIVERY_STATUS_STORED" and sent["recipients"] == 1  # hal is away
    history = _reply_at(out, '{\n  "messages": [')
    assert history["headPosition"] == "2" and "more" not in history
    said, created = history["messages"]
    assert (said["position"], said["kind"], said["text"]) == ("2", "MESSAGE_KIND_GROUP", "hi team")
    assert said["messageId"] == sent["messageId"] and said["conversationId"] == gid
    assert (created["position"], created["kind"]) == ("1", "MESSAGE_KIND_MEMBERSHIP")
    assert created["text"] == "gina created group 'team' with hal"
    assert created["membership"] == {
        "action": "MEMBERSHIP_ACTION_CREATED",
        "actorId": gina,
        "userIds": [hal],
        "groupName": "team",
    }


def _reply_at(out: str, start: str, after: str = "") -> Any:
    """The JSON reply that begins with ``start`` in grpcurl's output (the
    first one after the text ``after``)."""
    offset = out.index(start, out.index(after) if after else 0)
    reply, _ = json.JSONDecoder().raw_decode(out, offset)
    return reply


def test_groups_and_history_the_grpcurl_way(dev: Dev) -> None:
    """Described with their comments; a member reads, a stranger is refused."""
    route = dev.route_address
    described = grpcurl_ok(route, "describe", "cim.v1.Route.History")
    assert "removed or who left, who read up to and including their removal" in described
    assert "cim.v1.Groups" in listed(route)
    tokens = {}
    for name in ("ivy", "kim"):
        credentials = json.dumps({"user_name": name, "password": "pw"})
        grpcurl_ok("-d", credentials, route, "cim.v1.Route/Register")
        tokens[name] = grpcurl_json("-d", credentials, route, "cim.v1.Route/Login")["sessionToken"]

    def as_user(name: str) -> tuple[str, str]:
        return ("-H", f"authorization: Bearer {tokens[name]}")

    made = grpcurl_json(
        *as_user("ivy"), "-d", '{"name":"pair"}', route, "cim.v1.Groups/CreateGroup"
    )
    gid = made["group"]["groupId"]
    assert made["event"]["kind"] == "MESSAGE_KIND_MEMBERSHIP"
    request = json.dumps({"conversation_id": gid, "limit": 1})
    page = grpcurl_json(*as_user("ivy"), "-d", request, route, "cim.v1.Route/History")
    assert [m["text"] for m in page["messages"]] == ["ivy created group 'pair'"]
    refused = grpcurl(*as_user("kim"), "-d", request, route, "cim.v1.Route/History")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "Code: PermissionDenied" in out and f"you are not a member of group {gid}" in out


def test_a_refused_stream_fails_for_grpcurl(dev: Dev) -> None:
    """A stream refused at login ends with the real status, not OK: a generic
    client (grpcurl here) sees the failure, after the error notice frame."""
    login = json.dumps({"login": {"user_id": "1", "session_token": "not-a-token"}})
    result = grpcurl("-d", login, dev.server_address(0), "cim.v1.Chat/Connect")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert '"kind": "KIND_ERROR"' in out  # the notice, for clients that read frames
    assert "Code: Unauthenticated" in out, out


def test_the_admin_api_the_grpcurl_way(dev: Dev) -> None:
    """The README's admin calls: listed, described, and keyed."""
    route = dev.route_address
    assert "cim.admin.v1.Admin" in listed(route)
    described = grpcurl_ok(route, "describe", "cim.admin.v1.Admin")
    assert "cim.admin.v1.Admin is a service:" in described
    assert "cim-admin-key" in described  # the comments say how to call it
    grpcurl_ok(
        "-d", json.dumps({"user_name": "gil", "password": "pw"}), route, "cim.v1.Route/Register"
    )
    key = f"cim-admin-key: {dev.admin_key}"
    user = grpcurl_json("-H", key, "-d", '{"user_name":"gil"}', route, "cim.admin.v1.Admin/GetUser")
    assert user["account"]["userName"] == "gil"
    disabled = grpcurl_json(
        "-H", key, "-d", json.dumps({"user_id": user["account"]["userId"], "reason": "spam"}),
        route, "cim.admin.v1.Admin/DisableUser",
    )  # fmt: skip
    assert disabled["account"]["disabled"] is True
    sent = grpcurl_json(
        "-H", key, "-d", '{"text":"restart at 22:00"}', route, "cim.admin.v1.Admin/BroadcastNotice"
    )
    assert sent["messageId"]
    refused = grpcurl("-d", '{"user_name":"gil"}', route, "cim.admin.v1.Admin/GetUser")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stdout + refused.stderr
