"""The harness's child processes, and the one protocol those that talk speak.

Every process of a run (ZooKeeper, Redis, ``cim route`` and ``cim server``, the
bare-gRPC servers and loads of :mod:`cim.bench.ceiling`, the load generators
of :mod:`cim.bench.load`) is a :class:`Child`: started with
:func:`cim.processes.spawn` (it dies with the harness), its stderr in a log
file, stopped in order.

A child that talks (``talk=True``) follows one protocol:

- it writes **events** on stdout, one JSON object a line with an ``"event"``
  key: ``{"event": "port", "port": 4242}``, ``{"event": "phase", ...}``,
  ``{"event": "result", "result": {...}}``;
- where it waits for the harness, it reads one line (``go``) on stdin;
- when its stdin closes, it ends (the harness is done with it, or gone).

The child side of the protocol is :func:`emit`, :func:`open_stdin`,
:func:`wait_go`, :func:`until_eof` and :func:`exit_on_eof`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import cim
from cim import processes
from cim.processes import log_tail

Event = dict[str, Any]
# The directory that holds the cim package this harness runs: Python children
# import the same code (from a checkout too, where cim is not installed).
_CODE_ROOT = str(Path(cim.__file__).resolve().parents[1])


class ChildError(RuntimeError):
    """A child process ended, said something unexpected, or did not answer in time."""


class Child:
    """One process of a benchmark run (see the module doc)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        talk: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self.talk = talk
        self._log: IO[bytes]
        if log_path is None:  # a temporary file, kept for error messages until stop()
            self.log_path: Path | None = None
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        else:
            self.log_path = log_path
            self._log = log_path.open("ab")
        self.popen = processes.spawn(
            args,
            stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
            stdout=subprocess.PIPE if talk else self._log,
            stderr=self._log,
            env=env,
            # A Ctrl-C at the terminal reaches only the harness, which stops
            # its children in order.
            new_session=True,
        )
        self._buffer = b""
        self._terminated = False

    @classmethod
    def python(
        cls,
        name: str,
        module: str,
        args: list[str],
        log_path: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        talk: bool = True,
    ) -> Child:
        """``python -m module args`` with this harness's code and interpreter."""
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            part for part in (_CODE_ROOT, child_env.get("PYTHONPATH", "")) if part
        )
        child_env["PYTHONUNBUFFERED"] = "1"
        return cls(name, [sys.executable, "-m", module, *args], log_path, env=child_env, talk=talk)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ChildError(
                f"{self.name} exited with status {self.popen.returncode}{self.log_excerpt()}"
            )

    # --- the protocol, parent side ---------------------------------------------------
    def next_event(self, deadline: float) -> Event:
        """The next event on the child's stdout (wall clock ``deadline``, as
        ``time.monotonic()``); ChildError if it ends, is late or is unreadable."""
        line = self._readline(deadline)
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            raise ChildError(f"{self.name}: unreadable line {line[:200]!r}{self.log_excerpt()}")
        return event

    def expect(self, kind: str, deadline: float) -> Event:
        """The next event, which must be a ``kind`` one."""
        event = self.next_event(deadline)
        if event["event"] != kind:
            raise ChildError(f"{self.name}: expected a {kind} event, got {str(event)[:200]}")
        return event

    def go(self) -> None:
        """Lets the child carry on where it waits for the harness."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(b"go\n")
        self.popen.stdin.flush()

    def _readline(self, deadline: float) -> bytes:
        stdout = self.popen.stdout
        assert stdout is not None, f"{self.name} does not talk"
        with selectors.DefaultSelector() as selector:
            selector.register(stdout.fileno(), selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildError(f"{self.name}: no answer in time{self.log_excerpt()}")
                if not selector.select(min(left, 1.0)):
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.popen.wait(5.0)
                    raise ChildError(
                        f"{self.name} ended (status {self.popen.returncode}) without "
                        f"answering{self.log_excerpt()}"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    # --- the end ---------------------------------------------------------------------
    def signal_stop(self) -> None:
        """Starts stopping it without waiting: stdin closed, SIGTERM."""
        self._close_stdin()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            self._terminated = True

    def stop(self, timeout: float = 10.0, *, grace: float = 0.0) -> None:
        """Closes its stdin (a talking child then ends by itself) and waits up
        to ``grace``; then SIGTERM (once), and SIGKILL after ``timeout``.
        Always reaped."""
        try:
            self._close_stdin()
            if grace > 0:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace)
            processes.stop(self.popen, timeout, terminated=self._terminated)
        finally:
            if self.popen.stdout is not None:
                self.popen.stdout.close()
            self._log.close()

    def _close_stdin(self) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def log_excerpt(self) -> str:
        """The end of its log, for an error message (starts with "; ")."""
        if self.log_path is not None:
            return f"; log {self.log_path}:\n{log_tail(self.log_path)}"
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            text = self._log.read()[-2000:].decode(errors="replace")
            return f"; stderr:\n{text}" if text else ""
        return ""


# --- the protocol, child side -------------------------------------------------------------
def emit(event: str, **fields: Any) -> None:
    """Writes one event for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def open_stdin() -> asyncio.StreamReader:
    """This process's stdin, read on the running loop."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_go(stdin: asyncio.StreamReader) -> None:
    """Until the harness says go; ends this process if it closed our stdin instead."""
    if not await stdin.readline():
        sys.stdout.flush()
        os._exit(0)


async def until_eof(stdin: asyncio.StreamReader) -> None:
    """Until the harness closes our stdin."""
    while await stdin.readline():
        pass


_BACKGROUND: set[asyncio.Task[None]] = set()


def exit_on_eof(stdin: asyncio.StreamReader) -> None:
    """Ends this process at once when the harness closes our stdin."""
    task = asyncio.create_task(until_eof(stdin))
    task.add_done_callback(lambda _: os._exit(3))
    _BACKGROUND.add(task)
