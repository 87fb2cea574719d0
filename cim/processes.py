"""Child processes that die with this one, for the benchmark harness and the
test suite's servers (Redis, ZooKeeper, cim processes, load generators).

A child started with :func:`spawn` is sent SIGKILL by the kernel as soon as
this process ends, however it ends: SIGKILL, a CI timeout, a crash
(``PR_SET_PDEATHSIG``, Linux). The kernel sends that signal when the *thread*
that forked the child ends, not the process; a caller may well be a worker
thread that ends soon after (``asyncio.to_thread``), so every child is forked
by one thread kept for the life of this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

Stream = int | IO[Any] | None

# Runs in the child, a fresh single-threaded interpreter, then becomes the
# program: asks for SIGKILL when its parent ends (kept across exec), unless
# that parent has already ended. Not preexec_fn: Python code between fork and
# exec in a process with gRPC's threads runs gRPC's fork handlers, and crashes.
_LAUNCHER = """\
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""

_forker: ThreadPoolExecutor | None = None
_forker_lock = threading.Lock()


def _fork_thread() -> ThreadPoolExecutor:
    global _forker
    with _forker_lock:
        if _forker is None:
            _forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cim-children")
        return _forker


def spawn(
    args: Sequence[str],
    *,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Starts ``args``; the child is killed when this process ends. With
    ``new_session`` a Ctrl-C at the terminal reaches only this process, which
    then stops its children in order. ``FileNotFoundError`` if the program is
    not found."""
    program = shutil.which(args[0], path=(env or os.environ).get("PATH"))
    if program is None:
        raise FileNotFoundError(f"{args[0]}: not found")
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), program]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*launcher, *args[1:]],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
        )

    return _fork_thread().submit(start).result()


def stop(
    popen: subprocess.Popen[bytes], timeout: float = 10.0, *, terminated: bool = False
) -> int | None:
    """SIGTERM (unless already ``terminated``), then SIGKILL if it has not
    ended within ``timeout``; always reaped, even through a Ctrl-C meanwhile
    (which kills it at once). Returns its exit status."""
    try:
        if popen.poll() is None:
            if not terminated:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.0f s: killing it", popen.pid, timeout)
        kill(popen)
    except KeyboardInterrupt:
        kill(popen)
    return popen.returncode


def kill(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash or a power cut would; reaped."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` of a child's log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
