"""Every flag of every ``cim`` command, its ``CIM_*`` variable, default, type
and help text stay as they were before the CLI became a package: the snapshot
``data/cli_options.json`` was taken from the single-module CLI (regenerate it
with ``python -m tests.cli.test_cli_options`` only for a change meant to be
seen). A command may only gain options, listed in ``ADDED``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from cim.cli import main

SNAPSHOT = Path(__file__).parent / "data" / "cli_options.json"
HOME = str(Path.home())
WIDTH = 100

# Options a command has gained since the snapshot.
ADDED: dict[str, set[str]] = {
    # Every route and chat server option that means something in one process.
    "dev": {
        "--advertise-host",
        "--max-text-bytes",
        "--max-msgs-per-sec",
        "--msg-burst",
        "--max-logins-per-sec",
        "--login-burst",
        "--session-ttl",
        "--inbox-max-messages",
        "--inbox-max-age",
        "--history-max-messages",
        "--history-max-age",
        "--broadcast",
        "--group-max-members",
        "--typing-max-members",
        "--heartbeat-interval",
        "--idle-timeout",
        "--tls-cert",
        "--tls-key",
        "--tls-ca",
        "--tls-client-auth",
        "--insecure-plaintext",
        "--log-format",
        "--metrics-port",
        "--metrics-host",
        "--tracing",
        "--otlp-endpoint",
        # The Admin API (cim admin): a random key when none is given.
        "--admin-keys",
    },
    # JSON logs for every process; metrics and tracing for the server processes;
    # the Admin API's keys.
    "route": {
        # History per conversation, who may broadcast, group sizes (issue 12).
        "--history-max-messages",
        "--history-max-age",
        "--broadcast",
        "--group-max-members",
        # Which groups get typing notes (issue 13).
        "--typing-max-members",
        "--log-format",
        "--metrics-port",
        "--metrics-host",
        "--tracing",
        "--otlp-endpoint",
        "--admin-keys",
    },
    "server": {"--log-format", "--metrics-port", "--metrics-host", "--tracing", "--otlp-endpoint"},
    "client": {"--log-format"},
}
# Options a command has gained that no route or server has (no twin to match).
NEW: dict[str, set[str]] = {
    # The cost of metrics, measured; the sizes of the groups and history scenarios (issue 12);
    # issue 13's list.
    "bench": {"--metrics", "--group-sizes", "--history-messages", "--list-conversations"},
}
# Commands added since the snapshot (their lines in ``cim --help`` too).
ADDED_COMMANDS = {"status", "admin"}
# Added options whose help says what they do in that command.
OWN_HELP = {("dev", "--advertise-host"), ("dev", "--admin-keys")}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True).replace(HOME, "~"))


def describe_option(param: click.Parameter) -> dict[str, Any]:
    """What ``--help`` and the parser make of an option (its rendering is
    checked on the help text itself)."""
    info: dict[str, Any] = _jsonable(param.to_info_dict())
    return info


def help_text(command: str) -> str:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(main, args, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output.replace(HOME, "~")


def describe() -> dict[str, Any]:
    """Each command's options by their first flag, and its rendered --help."""
    commands: dict[str, click.Command] = {"": main, **main.commands}
    return {
        name: {
            "options": {
                param.opts[0]: describe_option(param)
                for param in command.params
                if isinstance(param, click.Option)
            },
            "help": help_text(name),
        }
        for name, command in commands.items()
    }


def without_options(text: str, flags: set[str]) -> str:
    """``--help`` text less the entries of ``flags`` (an entry: its line and
    the indented lines that continue it)."""
    kept: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        entry = re.match(r"  (-\w, )?(--[\w-]+)", line)
        if entry:
            dropping = entry.group(2) in flags
        elif not line.startswith("      "):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


def _snapshot() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return data


def test_every_command_is_still_there() -> None:
    assert set(main.commands) - ADDED_COMMANDS == set(_snapshot()) - {""}


def test_every_option_keeps_its_flag_variable_default_and_help() -> None:
    before, now = _snapshot(), describe()
    for command, old in before.items():
        options = now[command]["options"]
        added = ADDED.get(command, set()) | NEW.get(command, set())
        assert set(options) - added == set(old["options"]), command
        for flag, description in old["options"].items():
            assert options[flag] == description, (command, flag)


def test_help_text_is_unchanged_but_for_added_options() -> None:
    before, now = _snapshot(), describe()
    for command, old in before.items():
        added = ADDED.get(command, set()) | NEW.get(command, set())
        text = without_options(now[command]["help"], added)
        if command == "":
            text = "".join(
                line
                for line in text.splitlines(keepends=True)
                if not any(line.startswith(f"  {name}  ") for name in ADDED_COMMANDS)
            )
        assert text == old["help"], command


def test_added_options_are_those_of_route_or_server() -> None:
    now = describe()
    for command, flags in ADDED.items():
        for flag in flags:
            twin = now["route"]["options"].get(flag) or now["server"]["options"][flag]
            option = dict(now[command]["options"][flag])
            if (command, flag) in OWN_HELP:
                option["help"] = twin["help"]
            assert option == twin, (command, flag)


if __name__ == "__main__":  # python -m tests.cli.test_cli_options: rewrites the snapshot
    SNAPSHOT.write_text(json.dumps(describe(), indent=1, sort_keys=True) + "\n")
