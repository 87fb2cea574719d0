"""cim.cli.logs: JSON log lines, context fields, and what is never written."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cim import logcontext
from cim.cli.logs import JsonFormatter, RedactSecrets, redact, setup_logging
from cim.core.tokens import TokenSigner

TOKEN = TokenSigner({"k1": b"0123456789abcdef0123"}, "k1", 60).issue(42, "alice", "s-1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"login with {TOKEN} refused", "login with [redacted] refused"),
        (f"metadata=[('authorization', 'Bearer {TOKEN}')]", "[redacted]"),
        ("user_password=hunter2 kept", "user_password=[redacted] kept"),
        ("password=hunter2", "password=[redacted]"),
        ("Password: 'hunter 2', user=alice", "Password: [redacted], user=alice"),
        ('{"password": "hunter2"}', '{"password": [redacted]}'),
        ("store redis://:hunter2@h:6379/0", "store redis://:[redacted]@h:6379/0"),
        ("rediss://cim:hunter2@h:6379", "rediss://cim:[redacted]@h:6379"),
        ("user 42 (alice) connected", "user 42 (alice) connected"),
        ("route-1.example.com:7100", "route-1.example.com:7100"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    cleaned = redact(text)
    assert "hunter" not in cleaned
    assert TOKEN not in cleaned
    assert expected in cleaned


def capture(log_format: str) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cim.test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return stream


def test_json_line_has_the_fields_and_redacts_arguments() -> None:
    stream = capture("json")
    logging.getLogger("cim.test.logs").warning(
        "token %s for %s", TOKEN, "alice", extra={"trace_id": "t-1", "user_id": 7}
    )
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "warning"
    assert entry["logger"] == "cim.test.logs"
    assert entry["message"] == "token [redacted] for alice"
    assert entry["trace_id"] == "t-1"
    assert entry["user_id"] == 7
    assert entry["time"].endswith("+00:00")


def test_context_fields_fill_what_the_call_did_not_give() -> None:
    stream = capture("json")
    with logcontext.bound(user_id=9, trace_id="t-ctx"):
        logging.getLogger("cim.test.logs").info("inside", extra={"trace_id": "t-own"})
    logging.getLogger("cim.test.logs").info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["user_id"], inside["trace_id"]) == (9, "t-own")
    assert "user_id" not in outside and "trace_id" not in outside


def test_nested_bindings_restore_the_outer_ones() -> None:
    with logcontext.bound(user_id=1, trace_id="outer"):
        with logcontext.bound(trace_id="inner"):
            assert logcontext.current() == {"user_id": 1, "trace_id": "inner"}
        assert logcontext.current() == {"user_id": 1, "trace_id": "outer"}
        with pytest.raises(RuntimeError), logcontext.bound(user_id=2):
            raise RuntimeError("the binding ends with the block, however it ends")
        assert logcontext.current() == {"user_id": 1, "trace_id": "outer"}
    assert logcontext.current() == {}


def test_tracebacks_are_redacted_too() -> None:
    stream = capture("json")
    try:
        raise ValueError(f"bad password=hunter2 {TOKEN}")
    except ValueError:
        logging.getLogger("cim.test.logs").exception("failed")
    entry = json.loads(stream.getvalue())
    assert "ValueError" in entry["exception"]
    assert "hunter2" not in stream.getvalue() and TOKEN not in stream.getvalue()


def test_text_lines_are_redacted() -> None:
    stream = capture("text")
    logging.getLogger("cim.test.logs").info("password=%s", "hunter2")
    assert stream.getvalue().strip() == "password=[redacted]"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("info", "xml")
