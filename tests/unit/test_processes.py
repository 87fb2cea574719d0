"""Children started with ``cim.processes.spawn`` die with the process that
started them, however it ends, and whichever thread started them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from cim import processes
from tests.fixtures.children import gone, kill_and_reap, start_parent, wait_gone


def test_a_child_dies_when_its_parent_is_killed() -> None:
    parent, child = start_parent(
        "from cim import processes\nprint(processes.spawn(['sleep', '60']).pid, flush=True)"
    )
    assert not gone(child)
    kill_and_reap(parent)
    assert wait_gone(child), f"pid {child} outlived its parent"


def test_a_child_started_by_a_short_lived_thread_outlives_that_thread() -> None:
    """The kernel signals when the forking *thread* ends: children are forked
    by one thread that lives as long as the process."""
    parent, child = start_parent(
        "import threading\n"
        "from cim import processes\n"
        "found = []\n"
        "worker = threading.Thread(target=lambda: found.append(processes.spawn(['sleep', '60'])))\n"
        "worker.start(); worker.join()\n"
        "import time; time.sleep(0.5)\n"
        "print(found[0].pid if found[0].poll() is None else 'dead', flush=True)"
    )
    assert not gone(child)
    kill_and_reap(parent)
    assert wait_gone(child), f"pid {child} outlived its parent"


def test_stop_terminates_then_kills() -> None:
    polite = processes.spawn(["sleep", "60"])
    assert processes.stop(polite, timeout=5.0) == -signal.SIGTERM
    stubborn = processes.spawn(
        [sys.executable, "-c", "import signal, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert processes.stop(stubborn, timeout=0.3) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    stubborn.stdout.close()


def test_spawn_from_any_thread_here() -> None:
    children: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: children.append(processes.spawn(["sleep", "60"])))
    thread.start()
    thread.join()
    time.sleep(0.2)
    assert children[0].poll() is None  # its thread ended, it did not
    assert processes.stop(children[0]) == -signal.SIGTERM
