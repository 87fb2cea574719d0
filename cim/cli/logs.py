"""Logging of every ``cim`` process, configured here and nowhere else.

Two formats on stderr: ``text`` (one readable line) and ``json`` (one JSON
object per line: ``time``, ``level``, ``logger``, ``message``, and
``user_id`` / ``trace_id`` when the log call or its context knows them, see
:mod:`cim.logcontext`; ``exception`` for a traceback). In both, anything that
looks like a session token (:mod:`cim.core.tokens`), a ``password=`` value or
the password of a URL is redacted before the line is written.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from cim import logcontext

__all__ = ["FORMATS", "JsonFormatter", "RedactSecrets", "redact", "setup_logging"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "[redacted]"

# <key id>.<base64url claims JSON: '{"' encodes as "eyJ">.<base64url HMAC-SHA256: 43 chars>
_TOKEN = re.compile(r"[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
# password=..., password: ..., "password": "...", passwd / password_hash alike.
_PASSWORD = re.compile(
    r"""(?P<key>pass(?:word|wd)\w*["']?\s*[=:]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;&)}\]]+)""",
    re.IGNORECASE,
)

# The password of a URL: redis://user:secret@host -> redis://user:[redacted]@host.
_URL_PASSWORD = re.compile(r"(?P<key>://[^/\s:@]*:)[^@\s/]+@")

# Fields a record may carry (with extra= or from the context) that JSON lines show.
CONTEXT_FIELDS = ("user_id", "trace_id")


def redact(text: str) -> str:
    """``text`` without session tokens, password values and URL passwords."""
    text = _TOKEN.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda match: match["key"] + REDACTED + "@", text)
    return _PASSWORD.sub(lambda match: match["key"] + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (and traceback) with secrets redacted,
    and adds the context's ``user_id`` / ``trace_id`` where the call gave none."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for name, value in logcontext.current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Logs of this process to stderr at ``level`` in ``log_format``
    ("text" or "json"); the library itself never configures logging."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: one of {', '.join(FORMATS)}")
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"redact": {"()": RedactSecrets}},
            "formatters": {"cim": formatter},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                    "formatter": "cim",
                    "filters": ["redact"],
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
        }
    )
