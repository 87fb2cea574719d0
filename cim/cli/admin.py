"""``cim admin``: the route's Admin API from the shell (``cim.client.admin``).

Each subcommand takes the route (``--route``), the admin key (``--admin-key
id:secret``, ``CIM_ADMIN_KEY``), the client's TLS options and ``--json``.
Failures are one ``Error:`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from cim.cli import configs, runtime
from cim.cli.options import ClientTlsFlags, client_tls_options, option_group
from cim.client.admin import AdminClient, User, parse_user
from cim.config import DEFAULT_ROUTE_ADDRESS, TlsConfig
from cim.errors import CimError, PermissionDenied, Unauthenticated, Unavailable
from cim.proto.admin.v1 import admin_pb2
from cim.proto.v1 import common_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class AdminFlags:
    route: str
    admin_key: str | None
    timeout: float
    as_json: bool


admin_call_options = option_group(
    "call",
    AdminFlags,
    click.option(
        "--route",
        envvar="CIM_ROUTE",
        default=DEFAULT_ROUTE_ADDRESS,
        help="Route address HOST:PORT.",
    ),
    click.option(
        "--admin-key",
        envvar="CIM_ADMIN_KEY",
        default=None,
        help="One of the route's admin keys, 'id:secret' (see cim route --admin-keys).",
    ),
    click.option(
        "--timeout",
        envvar="CIM_ADMIN_TIMEOUT",
        default=10.0,
        type=click.FloatRange(min=0.1),
        help="Seconds the call may take.",
    ),
    click.option(
        "--json", "as_json", is_flag=True, default=False, help="The reply as JSON on stdout."
    ),
)

USER_ARGUMENT = click.argument("user", metavar="NAME|ID")


@click.group()
def admin() -> None:
    """Administer users through a route's Admin API: look up, kick, disable,
    enable, send notices. Needs one of the route's admin keys."""


def _call(flags: AdminFlags, tls: ClientTlsFlags, work: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Runs ``work`` against the route; any failure is one line, exit 1."""
    if not flags.admin_key:
        raise click.UsageError("give the admin key with --admin-key id:secret (or CIM_ADMIN_KEY)")
    with runtime.user_errors():
        tls_config = configs.client_tls(tls)

    async def run() -> T:
        async with AdminClient(flags.route, flags.admin_key or "", tls_config, flags.timeout) as c:
            return await work(c)

    try:
        return asyncio.run(run())
    except CimError as exc:
        runtime.fail(_explain(exc, flags.route, tls_config))


def _explain(exc: CimError, route: str, tls: TlsConfig | None) -> str:
    text = exc.message
    if isinstance(exc, Unauthenticated):
        return f"{text} (check --admin-key id:secret)"
    if isinstance(exc, PermissionDenied):
        return text
    if isinstance(exc, Unavailable):
        hint = " over TLS?" if tls is None else ""
        return f"route {route} unreachable: {text} (is it running{hint})"
    return text


def _user(text: str) -> User:
    return parse_user(text)


def _out(flags: AdminFlags, reply: Message, human: str) -> None:
    if flags.as_json:
        data = MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(human)


def _who(account: admin_pb2.Account) -> str:
    return f"{account.user_name} (#{account.user_id})"


STATES = {
    admin_pb2.SESSION_STATE_PENDING: "pending",
    admin_pb2.SESSION_STATE_CONNECTED: "connected",
}


def render_user(reply: admin_pb2.GetUserResponse) -> str:
    account = reply.account
    state = "enabled"
    if account.disabled:
        state = "DISABLED" + (f": {account.disabled_reason}" if account.disabled_reason else "")
    lines = [f"user {account.user_id} {account.user_name} ({state})"]
    if not reply.sessions:
        lines.append("sessions: none (offline)")
    for session in reply.sessions:
        where = session.server_id + (
            f" ({session.server_address})" if session.server_address else ""
        )
        device = session.device_id or "default"
        lines.append(
            f"session {session.session_id}: {STATES.get(session.state, 'unknown')}, "
            f"device {device}, chat server {where}"
        )
    return "\n".join(lines)


@admin.command()
@USER_ARGUMENT
@admin_call_options
@client_tls_options
def user(user: str, call: AdminFlags, tls: ClientTlsFlags) -> None:
    """Show a user's account and sessions (NAME|ID: a number is a user id)."""
    reply = _call(call, tls, lambda c: c.get_user(_user(user)))
    _out(call, reply, render_user(reply))


@admin.command()
@USER_ARGUMENT
@click.option("--device", "device_id", default="", help="Only the session of this device.")
@click.option("--reason", default="", help="Shown to the user as they are disconnected.")
@admin_call_options
@client_tls_options
def kick(user: str, device_id: str, reason: str, call: AdminFlags, tls: ClientTlsFlags) -> None:
    """End a user's session: disconnected at once, they may log in again."""
    ended = _call(call, tls, lambda c: c.kick(_user(user), device_id, reason))
    _out(
        call,
        admin_pb2.KickUserResponse(sessions_ended=ended),
        f"kicked {user}: {ended} session(s) ended",
    )


@admin.command()
@USER_ARGUMENT
@click.option("--reason", default="", help="Kept with the account and shown to the user.")
@admin_call_options
@client_tls_options
def disable(user: str, reason: str, call: AdminFlags, tls: ClientTlsFlags) -> None:
    """Disable an account: disconnected at once, logins refused until enabled."""
    reply = _call(call, tls, lambda c: c.disable(_user(user), reason))
    what = "disabled" if reply.changed else "was disabled already"
    _out(call, reply, f"{_who(reply.account)} {what}: {reply.sessions_ended} session(s) ended")


@admin.command()
@USER_ARGUMENT
@admin_call_options
@client_tls_options
def enable(user: str, call: AdminFlags, tls: ClientTlsFlags) -> None:
    """Let a disabled account log in again."""
    reply = _call(call, tls, lambda c: c.enable(_user(user)))
    _out(call, reply, f"{_who(reply.account)} {'enabled' if reply.changed else 'was not disabled'}")


@admin.command()
@click.argument("text")
@click.option(
    "--user", "to_user", metavar="NAME|ID", default=None, help="One user: stored in their inbox."
)
@click.option(
    "--all", "to_all", is_flag=True, default=False, help="Everyone online now: not stored."
)
@admin_call_options
@client_tls_options
def notice(
    text: str, to_user: str | None, to_all: bool, call: AdminFlags, tls: ClientTlsFlags
) -> None:
    """Send a system notice to one user (--user: they get it when they come
    back if offline) or to everyone online (--all)."""
    if (to_user is None) == (not to_all):
        raise click.UsageError("give either --user NAME|ID or --all")
    if to_user is not None:
        target = to_user
        sent = _call(call, tls, lambda c: c.notice(_user(target), text))
        outcome = (
            "delivered"
            if sent.status == common_pb2.DELIVERY_STATUS_DELIVERED
            else "stored: they get it at their next login"
        )
        _out(call, sent, f"notice {sent.message_id} to {to_user} (#{sent.user_id}): {outcome}")
        return
    reply = _call(call, tls, lambda c: c.broadcast(text))
    stamp = time.strftime("%H:%M:%S", time.localtime(reply.server_time_ms / 1000))
    _out(
        call,
        reply,
        f"notice {reply.message_id} reached {reply.recipients} online user(s) at {stamp}",
    )
