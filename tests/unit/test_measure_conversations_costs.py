"""The pure parts of scripts/measure_conversations.py: the cost model the
design (docs/design/conversations.md) states, slots, pointers, quantiles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "measure_conversations.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_conversations", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mc = _load()


@pytest.mark.parametrize("model", ["a", "b", "c", "c/slot", "c/one"])
def test_a_send_costs_two_round_trips_whatever_the_group_size(model: str) -> None:
    assert mc.round_trips(model, "private") == 2
    assert mc.round_trips(model, "group") == 2


def test_commands_grow_with_the_members_but_not_for_one_script_per_node() -> None:
    for size in (10, 100, 1_000, 10_000):
        assert mc.commands("a", "group", size) == 2 + 2 * size  # a copy and a history entry each
        assert mc.commands("b", "group", size) == size  # the append, a session per receiver
        assert mc.commands("c", "group", size) == size + 1  # the append, pointers, sender's list
        assert mc.commands("c/one", "group", size) == 3


def test_login_costs_depend_on_the_conversations_only_for_read_diffusion() -> None:
    for k in (10, 200, 10_000):
        assert mc.commands("a", "login", k) == 1
        assert mc.commands("c", "login", k) == 1 + mc.LOGIN_CONVERSATIONS
        assert mc.commands("b", "login", k) == 2 + k + mc.LOGIN_CONVERSATIONS
        assert mc.commands("c", "list", k) == 1 + min(k, mc.LIST_PAGE)
        assert mc.commands("b", "list", k) == 2 + k + min(k, mc.LIST_PAGE)


def test_an_unknown_operation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        mc.commands("c", "recall")


def test_ten_thousand_members_fall_into_about_seven_and_a_half_thousand_slots() -> None:
    expected = mc.expected_slots(10_000)
    assert 7_400 < expected < 7_600
    keys = [f"cim:{{u:{uid}}}:inbox" for uid in range(1, 10_001)]
    assert abs(mc.distinct_slots(keys) - expected) < 0.02 * expected
    # one user's keys share their slot
    assert mc.distinct_slots([f"cim:{{u:7}}:{name}" for name in ("inbox", "session", "convs")]) == 1


def test_a_pointer_names_its_body_and_nothing_else_passes_for_one() -> None:
    body = mc.pointer("g:42", 17, "01K000000000000000001")
    assert mc.parse_pointer(body) == ("g:42", 17, "01K000000000000000001")
    with pytest.raises(ValueError, match="not a pointer"):
        mc.parse_pointer(b"\n\x15" + b"a serialized ChatMessage")


def test_percentile_is_the_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert mc.percentile(samples, 0.5) == 50.0
    assert mc.percentile(samples, 0.99) == 99.0
    assert mc.percentile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError, match="no samples"):
        mc.percentile([], 0.5)


def test_commands_are_encoded_as_resp() -> None:
    assert mc.encode(["SET", "k", b"\x00v", 5]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n5\r\n"
    )


def test_private_conversation_ids_do_not_depend_on_who_sends() -> None:
    assert mc.private_cid(42, 7) == mc.private_cid(7, 42) == "p:7:42"


def test_runs_combine_into_medians_of_the_noisy_figures() -> None:
    def row(p50: float, cpu: float) -> object:
        return mc.Result("c", "group", 100, 5, 2, 101, 41_000, 3_500, p50, p50 * 2, cpu, 10_000)

    (combined,) = mc.combine([[row(3.0, 2_000)], [row(9.0, 2_600)], [row(4.0, 2_100)]])
    assert (combined.p50_ms, combined.p99_ms, combined.redis_cpu_us) == (4.0, 8.0, 2_100)
    assert (combined.round_trips, combined.sent, combined.memory_bytes) == (2, 41_000, 10_000)
