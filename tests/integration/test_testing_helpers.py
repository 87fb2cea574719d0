"""cim.testing as a program built on cim uses it: in its own pytest suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_SUITE = textwrap.dedent(
    """
    from cim.testing import cluster, fast_route_config


    async def test_uses_cluster():
        async with cluster(servers=1, route_config=fast_route_config()) as c:
            alice = await c.client("alice")
            await alice.send_private(alice.user_id, "hi")
            assert (await c.next_message(alice)).text == "hi"
    """
)


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    (tmp_path / "test_user_suite.py").write_text(USER_SUITE)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_documented_helpers_adds_no_tests(tmp_path):
    """Only the suite's own test is collected: helpers named test_* must opt out
    of collection, as TestCluster does with ``__test__ = False``."""
    result = _pytest(tmp_path, "--collect-only")
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected == ["test_user_suite.py::test_uses_cluster"], result.stdout


def test_a_suite_using_the_helpers_passes(tmp_path):
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
