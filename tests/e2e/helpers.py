"""Helpers of the end-to-end suite: running ``cim`` processes and reading their output.

Every test here runs the installed ``cim`` console script (and ``grpcurl``) as
child processes on free loopback ports. Consoles run in a pseudo-terminal
(``pexpect.spawn``), so they take the interactive prompt_toolkit path that a
person at a terminal gets; ``PopenSpawn`` children read plain pipes instead
(the console's scriptable, non-tty mode).

Output is matched after stripping ANSI escape sequences and carriage returns,
since prompt_toolkit styles each fragment of a line separately. Every process a
test starts is ended in teardown (SIGINT, then SIGKILL), whatever the outcome.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pexpect
import pexpect.popen_spawn

from cim.processes import free_ports

BIN_DIR = os.path.dirname(sys.executable)
CIM = shutil.which("cim", path=BIN_DIR) or shutil.which("cim") or "cim"
GRPCURL = shutil.which("grpcurl", path=BIN_DIR) or shutil.which("grpcurl") or "grpcurl"

EXPECT_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0
TERMINAL_SIZE = (40, 200)

# CSI (colours, cursor movement, modes), OSC (titles), and two-byte escapes.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[@-Z\\-_=>78]"
)


def strip_ansi(text: str) -> str:
    """``text`` without escape sequences and carriage returns (a trailing,
    still incomplete escape sequence is cut off too)."""
    cleaned = _ANSI.sub("", text).replace("\r", "")
    cut = cleaned.rfind("\x1b")
    if cut != -1 and len(cleaned) - cut < 32:
        cleaned = cleaned[:cut]
    return cleaned


def cim_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no inherited ``CIM_*`` settings, UTF-8 I/O,
    a dumb terminal (prompt_toolkit then draws a plain prompt and asks no
    cursor-position questions a pseudo-terminal cannot answer)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CIM_")}
    env.update(
        TERM="dumb",
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        PYTHONIOENCODING="utf-8",
        PYTHONUNBUFFERED="1",
    )
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


class Proc:
    """One child process with regex matching on its (escape-free) output."""

    def __init__(self, child: Any, name: str) -> None:
        self.child = child
        self.name = name
        self.raw = ""
        self.pos = 0
        self.eof = False
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return int(self.child.pid)

    @property
    def is_tty(self) -> bool:
        return isinstance(self.child, pexpect.spawn)

    @property
    def output(self) -> str:
        """Everything the process printed so far, escape sequences removed."""
        return strip_ansi(self.raw)

    def _pump(self, timeout: float) -> None:
        if self.eof:
            time.sleep(min(timeout, 0.05))
            return
        try:
            self.raw += self.child.read_nonblocking(65536, max(timeout, 0.01))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.eof = True

    def expect(self, pattern: str, timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """Waits for ``pattern`` (a regex, ``^`` and ``$`` at line ends) in the output
        after the last match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.pos)
            if match is not None:
                self.pos = match.end()
                return match
            remaining = deadline - time.monotonic()
            if self.eof or remaining <= 0:
                why = "the process ended" if self.eof else f"{timeout:g} s passed"
                raise AssertionError(
                    f"{self.name}: {pattern!r} did not appear ({why}); output after the "
                    f"last match:\n{self.output[self.pos :][-4000:]}"
                )
            self._pump(min(remaining, 0.2))

    def expect_exact(self, text: str, timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        return self.expect(re.escape(text), timeout)

    def expect_all(self, *patterns: str, timeout: float = EXPECT_TIMEOUT) -> list[re.Match[str]]:
        """Waits for every pattern after the last match, in any order (a push
        and the answer to a command race each other), and moves past them all."""
        start = self.pos
        found: list[re.Match[str]] = []
        deadline = time.monotonic() + timeout
        for pattern in patterns:
            self.pos = start
            found.append(self.expect(pattern, max(0.0, deadline - time.monotonic())))
        self.pos = max(match.end() for match in found)
        return found

    def sendline(self, line: str) -> None:
        self.child.sendline(line)

    def settle(self, seconds: float) -> str:
        """Reads for ``seconds``; returns what arrived after the last match."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, 0.1))
        return self.output[self.pos :]

    def alive(self) -> bool:
        if self.returncode is not None:
            return False
        if self.is_tty:
            return bool(self.child.isalive())
        return self.child.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Waits for the process to end (reading its output meanwhile) and
        returns its status like subprocess does: the exit code, or minus the
        signal that ended it. Raises AssertionError if it is still running."""
        if self.returncode is not None:
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} still running {timeout:g} s later; output:\n{self.output[-4000:]}"
                )
            self._pump(0.05)
        # Read what is left (the exit message may still be in the pipe).
        end = time.monotonic() + 2.0
        while not self.eof and time.monotonic() < end:
            self._pump(0.05)
        self.returncode = self._reap()
        return self.returncode

    def _reap(self) -> int:
        if self.is_tty:
            self.child.close(force=True)
            if self.child.signalstatus is not None:
                return -int(self.child.signalstatus)
            return int(self.child.exitstatus)
        status = int(self.child.wait())
        self._close_pipes()
        return status

    def _close_pipes(self) -> None:
        if self.is_tty:
            return
        thread = getattr(self.child, "_read_thread", None)
        if thread is not None:
            thread.join(2.0)
        for stream in (self.child.proc.stdin, self.child.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop(self, timeout: float = 5.0) -> int:
        """Ctrl-C (SIGINT), and SIGKILL if that does not end it in ``timeout``."""
        if self.returncode is not None:
            return self.returncode
        self.signal(signal.SIGINT)
        try:
            return self.wait_exit(timeout)
        except AssertionError:
            self.signal(signal.SIGKILL)
            return self.wait_exit(timeout)


P = TypeVar("P", bound=Proc)


def tty_child(args: Sequence[str], env: dict[str, str] | None = None) -> pexpect.spawn:
    return pexpect.spawn(
        CIM,
        list(args),
        env=env or cim_env(),
        encoding="utf-8",
        codec_errors="replace",
        dimensions=TERMINAL_SIZE,
        timeout=EXPECT_TIMEOUT,
    )


def piped_child(
    args: Sequence[str], env: dict[str, str] | None = None
) -> pexpect.popen_spawn.PopenSpawn:
    return pexpect.popen_spawn.PopenSpawn(
        [CIM, *args],
        env=env or cim_env(),
        encoding="utf-8",
        codec_errors="replace",
        timeout=EXPECT_TIMEOUT,
    )


class Procs:
    """Starts children and ends them all at teardown."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def track(self, proc: P) -> P:
        """Ends ``proc`` at teardown."""
        self.started.append(proc)
        return proc

    def tty(self, args: Sequence[str], name: str, env: dict[str, str] | None = None) -> Proc:
        """A ``cim`` subcommand in a pseudo-terminal (stdin is a tty)."""
        return self.track(Proc(tty_child(args, env), name))

    def piped(self, args: Sequence[str], name: str, env: dict[str, str] | None = None) -> Proc:
        """A ``cim`` subcommand on pipes (stdin is not a tty; stderr joins stdout)."""
        return self.track(Proc(piped_child(args, env), name))

    def stop_all(self) -> None:
        # Clients first, the processes they talk to last.
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    proc.signal(signal.SIGKILL)
                    proc.wait_exit(5.0)
            proc._close_pipes()


class Dev:
    """A running ``cim dev``: a route and two chat servers in one process."""

    def __init__(
        self, proc: Proc, route_port: int, server_ports: list[int], admin_key: str = ""
    ) -> None:
        self.proc = proc
        self.route_port = route_port
        self.server_ports = server_ports
        # The admin key it made and printed ("id:secret").
        self.admin_key = admin_key

    @property
    def route_address(self) -> str:
        return f"127.0.0.1:{self.route_port}"

    def server_address(self, index: int = 0) -> str:
        return f"127.0.0.1:{self.server_ports[index]}"


def start_dev(procs: Procs) -> Dev:
    route_port, *server_ports = free_ports(3)
    proc = procs.tty(
        [
            "dev",
            "--route-port",
            str(route_port),
            "--server-ports",
            ",".join(map(str, server_ports)),
        ],
        "cim dev",
    )
    proc.expect(rf"cim dev: route on 127\.0\.0\.1:{route_port}; chat servers on ")
    key = proc.expect(r"--admin-key (\S+)\n")
    proc.expect(r"Press Ctrl-C to stop\.")
    return Dev(proc, route_port, server_ports, key.group(1))


class Client(Proc):
    """A ``cim client`` console of ``user_name``; ``user_id`` once logged in."""

    def __init__(self, child: Any, name: str, user_name: str) -> None:
        super().__init__(child, name)
        self.user_name = user_name
        self.user_id = 0


StartClient = Callable[..., Client]


def _client_args(name: str, route: str, log_dir: Path) -> list[str]:
    return ["client", "--user", name, "--route", route, "--log-dir", str(log_dir)]


def launch_client(
    procs: Procs,
    name: str,
    route: str,
    log_dir: Path,
    *,
    password: str | None = None,
    tty: bool = True,
    wait: bool = True,
) -> Client:
    """Starts ``cim client --user NAME``; with ``wait`` returns once it is
    logged in (and, in a terminal, shows its prompt). ``password=None``
    leaves CIM_PASSWORD unset, so the client asks for it."""
    extra = {} if password is None else {"CIM_PASSWORD": password}
    args = _client_args(name, route, log_dir)
    child = (tty_child if tty else piped_child)(args, cim_env(**extra))
    client = procs.track(Client(child, f"client {name}", name))
    if wait:
        wait_logged_in(client)
    return client


def wait_logged_in(client: Client) -> None:
    match = client.expect(rf"\* logged in as {re.escape(client.user_name)} \(id (\d+)\);")
    client.user_id = int(match.group(1))
    if client.is_tty:
        # Typing before prompt_toolkit reads the terminal is fine too, but
        # waiting for the prompt keeps the echo in a predictable place.
        client.expect(rf"{re.escape(client.user_name)}> ")
