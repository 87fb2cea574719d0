"""Measures the storage models of docs/design/conversations.md on a real Redis.

For each model it runs the exact commands and Lua scripts the design would
use, pipelined as the design says, over a counting RESP connection (every
pipeline is one round trip; every byte written and read is counted), and
reports per operation: round trips, commands, bytes sent and received, the
client's wall time (p50/p99), Redis CPU (``INFO cpu`` deltas) and the Redis
memory each message adds (``MEMORY USAGE`` of the keys it touched).

The models:
  now  today's private send (one append script into the receiver's inbox);
  a  write diffusion (gim): a full copy in each member's inbox (today's
     append script, unchanged) plus a per-user history index per conversation;
  b  read diffusion (Tinode, OpenIM): one log per conversation, cursors per
     user, nothing written per member;
  c  both (chosen): the body once in the conversation's log, a small pointer
     in each member's own sequence (gap-free sync as today); "c/slot" groups
     the pointers of the members whose keys share a cluster slot into one
     script call.

Usage: .venv/bin/python scripts/measure_conversations.py [--quick] [--runs N]
                                        [--json FILE] [--url redis://HOST:PORT]
Everything runs --runs times (3); times and Redis CPU are the medians.
Without --url it starts its own redis-server (no persistence) in a temporary
directory on a free port, and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hiredis
from redis.crc import key_slot

from cim import processes
from cim.proto.v1 import common_pb2
from cim.store.redis import _APPEND_INBOX, _READ_INBOX, _TRIM, _lua

GROUP_SIZES = (10, 100, 1_000, 10_000)
CONVERSATION_COUNTS = (10, 200, 10_000)
# The login workload: this many new messages, spread over this many conversations.
LOGIN_MESSAGES = 20
LOGIN_CONVERSATIONS = 5
LIST_PAGE = 20
HISTORY_PAGE = 50
REPLAY_PAGE = 100
TEXT_BYTES = 100
CLUSTER_SLOTS = 16_384

RETENTION_MAX = 10_000
RETENTION_AGE_MS = 7 * 24 * 3600 * 1000
ID_WINDOW_MS = 600_000


# --- the cost model (pure) ------------------------------------------------------------
def round_trips(model: str, op: str) -> int:
    """Round trips on the critical path of one operation, as the design says.
    On a Redis Cluster each is one pipeline per node, sent to the nodes at once."""
    table = {
        # private: claim + append (a: into the receiver's inbox; b, c: the
        # conversation's log), then what must follow the append (a: the
        # sender's copy; b: the receiver's session; c: the receiver's pointer).
        "private": {"now": 1, "a": 2, "b": 2, "c": 2, "c/slot": 2, "c/one": 2, "c/nolist": 2},
        # group: claim + members (+ the append for b, c), then the fan-out.
        "group": {"a": 2, "b": 2, "c": 2, "c/slot": 2, "c/one": 2, "c/nolist": 2},
        "group, first send": {"c": 2},
        # login: a, c read the user's own sequence (c then the bodies, per
        # conversation); b reads the user's cursors, every conversation's
        # head, then the conversations that moved.
        "login": {"a": 1, "b": 3, "c": 2},
        "history": {"a": 1, "b": 1, "c": 1},
        "list": {"a": 2, "b": 3, "c": 2},
    }
    return table[op][model]


def commands(model: str, op: str, size: int = 2, slots: float = 1) -> float:
    """Redis commands of one operation. ``size``: members of the conversation
    (2 for a private one) for sends; conversations of the user for login and
    list. ``slots``: the distinct slots of the receivers (c/slot only)."""
    receivers = size - 1
    if op == "private":
        # a: the receiver's append (claiming) and history entry, then the
        # sender's copy and history entry; b: the append, the receiver's
        # session; c: the append, the receiver's pointer, the sender's list entry.
        return {"now": 1, "a": 4, "b": 2, "c": 3, "c/slot": 3, "c/one": 3, "c/nolist": 2}[model]
    if op in ("group", "group, first send"):
        return {
            # the claim and the members' version; a copy and a history entry
            # for every member, the sender too
            "a": 2 + 2 * size,
            # the append; a session read per receiver
            "b": 1 + receivers,
            # the append; a pointer per receiver; the sender's list entry
            "c": 1 + receivers + 1,
            "c/slot": 1 + slots + 1,
            "c/one": 1 + 1 + 1,
            # c without the conversation list (issue 13): its cost by difference
            "c/nolist": 1 + receivers,
        }[model]
    if op == "login":
        moved = min(size, LOGIN_CONVERSATIONS)
        return {"a": 1, "b": 2 + size + moved, "c": 1 + moved}[model]
    if op == "list":
        page = min(size, LIST_PAGE)
        return {"a": 2, "b": 2 + size + page, "c": 1 + page}[model]
    if op == "history":
        return 1
    raise ValueError(f"unknown operation {op!r}")


def distinct_slots(keys: Sequence[str]) -> int:
    """How many cluster slots the keys fall into (one script call each for c/slot)."""
    return len({key_slot(key.encode()) for key in keys})


def expected_slots(members: int) -> float:
    """The expected number of distinct slots of ``members`` uniformly hashed tags."""
    return CLUSTER_SLOTS * (1 - (1 - 1 / CLUSTER_SLOTS) ** members)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of the samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def pointer(cid: str, conv_seq: int, message_id: str) -> bytes:
    """A c-model entry of a user's sequence: where the body is."""
    return f"P{cid}|{conv_seq}|{message_id}".encode()


def parse_pointer(body: bytes) -> tuple[str, int, str]:
    if not body.startswith(b"P"):
        raise ValueError("not a pointer")
    cid, seq, message_id = body[1:].decode().split("|")
    return cid, int(seq), message_id


def encode(command: Sequence[Any]) -> bytes:
    """One command in RESP, as every client sends it."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# --- the key layout of the design ---------------------------------------------------------
def private_cid(a: int, b: int) -> str:
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def user(self, uid: int, name: str) -> str:
        return f"{self.prefix}{{u:{uid}}}:{name}"

    def inbox(self, uid: int) -> list[str]:
        """Today's inbox keys, in the order of its append script, and the session."""
        return [
            self.user(uid, "inbox:meta"),
            self.user(uid, "inbox"),
            self.user(uid, "inbox:bodies"),
            self.user(uid, "inbox:ids"),
            self.user(uid, "inbox:idseq"),
            self.user(uid, "session"),
        ]

    def conv(self, cid: str, name: str) -> str:
        return f"{self.prefix}{{c:{cid}}}:{name}"

    def user_claim(self, uid: int, sender: int, client_msg_id: str) -> str:
        return self.user(uid, f"send:{sender}:{client_msg_id}")

    def conv_claim(self, cid: str, sender: int, client_msg_id: str) -> str:
        return self.conv(cid, f"send:{sender}:{client_msg_id}")


# --- the scripts --------------------------------------------------------------------------
# Appends one message to a conversation's log (b, c). KEYS: meta, log, bodies,
# members, pending[, claim]. ARGV: message id, body (13-digit time + payload),
# now_ms, max_messages, max_age_ms, sender, the members version the route has
# cached, claim value, id window ms, '1' to mark the fan-out pending (c), '1' for
# a group. Refuses a non-member ({-2}) before anything is written, claims the
# send (SET NX GET: {-1, earlier}), is idempotent by message id (the log's
# score is its seq), trims by count and age; returns seq, members version, the
# number and ids of fan-outs pending for over 5 s, then the member ids when the
# cached version is stale.
CONV_APPEND = _lua(
    _TRIM
    + """
if ARGV[11] == '1' and not redis.call('HGET', KEYS[4], ARGV[6]) then
  return {-2}
end
if #KEYS >= 6 then
  local earlier = redis.call('SET', KEYS[6], ARGV[8], 'NX', 'GET', 'PX', ARGV[9])
  if earlier then
    return {-1, earlier}
  end
end
local seq = redis.call('ZSCORE', KEYS[2], ARGV[1])
if seq then
  seq = tonumber(seq)
else
  seq = redis.call('HINCRBY', KEYS[1], 'head', 1)
  redis.call('ZADD', KEYS[2], seq, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
  if ARGV[10] == '1' then
    redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
  end
  trim(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[3]) - tonumber(ARGV[5]))
end
local ver = redis.call('HGET', KEYS[1], 'ver') or '0'
-- Fan-outs a crashed route left unfinished (pending for over 5 s): the route
-- completes them before this one (steps 2-4 again, idempotent by message id).
-- Older than the id window, they are dropped instead: members may have acked and
-- trimmed their pointers, so a late fan-out could hand them the message twice
-- (the sender was never answered; the message stays in the history).
local now, window = tonumber(ARGV[3]), tonumber(ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', string.format('(%d', now - window))
local stale = redis.call('ZRANGEBYSCORE', KEYS[5], now - window, now - 5000, 'LIMIT', 0, 10)
local out = {seq, ver, #stale}
for _, old in ipairs(stale) do
  out[#out + 1] = old
end
if ARGV[11] == '1' and ver ~= ARGV[7] then
  for _, member in ipairs(redis.call('HKEYS', KEYS[4])) do
    out[#out + 1] = member
  end
end
return out
"""
)

# Appends pointers to the sequences of several users (c: one user per call;
# c/slot: the users of one slot). KEYS: per user inbox meta, inbox, bodies,
# session, conversation list (5 each). ARGV: message id, body (time + pointer),
# now_ms, max_messages, max_age_ms, conversation id, activity (ms), '1' to move
# the conversation to the top of the user's list (issue 13). Idempotent by
# message id while the entry is kept: acks no longer delete entries, so the
# sequence itself remembers the ids (no id-window keys as today's append).
# Returns per user: seq, then the session's sid, server, device, connected.
POINTERS = _lua(
    _TRIM
    + """
local id, now = ARGV[1], tonumber(ARGV[3])
local out = {}
for base = 0, #KEYS - 5, 5 do
  local meta, inbox, bodies = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local seq = redis.call('ZSCORE', inbox, id)
  if seq then
    seq = tonumber(seq)
  else
    seq = redis.call('HINCRBY', meta, '$head', 1)
    redis.call('ZADD', inbox, seq, id)
    redis.call('HSET', bodies, id, ARGV[2])
    trim(meta, inbox, bodies, tonumber(ARGV[4]), now - tonumber(ARGV[5]))
  end
  if ARGV[8] == '1' then
    redis.call('ZADD', KEYS[base + 5], ARGV[7], ARGV[6])
  end
  local s = redis.call('HMGET', KEYS[base + 4], '$sid', '$server', '$device', '$connected')
  out[#out + 1] = seq
  out[#out + 1] = s[1]
  out[#out + 1] = s[2]
  out[#out + 1] = s[3]
  out[#out + 1] = s[4]
end
return out
"""
)

# The sender's side of a send (c): the conversation to the top of their list,
# their read cursor raised to what they sent (never lowered). KEYS: list, read
# cursors. ARGV: activity (ms), conversation id, position.
SENDER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > (tonumber(redis.call('HGET', KEYS[2], ARGV[2])) or 0) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
"""

# A page of a conversation's history (b, c). KEYS: members, left, log, bodies.
# ARGV: reader, before seq (0: the newest), limit, '1' for a group. A member
# reads everything retention kept; a removed member up to their removal; anyone
# else is refused ({-2}). Returns seq1, body1, ... newest first.
HISTORY = """
local top = tonumber(ARGV[2])
if top <= 0 then
  top = math.huge
end
if ARGV[4] == '1' and not redis.call('HGET', KEYS[1], ARGV[1]) then
  local left = redis.call('HGET', KEYS[2], ARGV[1])
  if not left then
    return {-2}
  end
  top = math.min(top, tonumber(left) + 1)
end
local found = redis.call('ZREVRANGEBYSCORE', KEYS[3], '(' .. tostring(top), '-inf',
                         'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local ids = {}
for i = 1, #found, 2 do
  ids[#ids + 1] = found[i]
end
local out = {}
if #ids > 0 then
  local bodies = redis.call('HMGET', KEYS[4], unpack(ids))
  for i = 1, #ids do
    out[#out + 1] = found[2 * i]
    out[#out + 1] = bodies[i]
  end
end
return out
"""

# A page of one user's history of one conversation in model a. KEYS: the
# user's history index of the conversation, the user's inbox bodies.
# ARGV: before (ms, 0: newest), limit.
HISTORY_A = """
local top = tonumber(ARGV[1])
local high = '+inf'
if top > 0 then
  high = '(' .. ARGV[1]
end
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], high, '-inf', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then
  return {}
end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""

# A conversation's log after a seq (b: login). KEYS: log, bodies. ARGV: after, limit.
CONV_READ = """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES',
                         'LIMIT', 0, tonumber(ARGV[2]))
local ids = {}
for i = 1, #found, 2 do
  ids[#ids + 1] = found[i]
end
if #ids == 0 then
  return {}
end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i = 1, #ids do
  out[#out + 1] = found[2 * i]
  out[#out + 1] = bodies[i]
end
return out
"""

# The top of a user's conversation list (c). KEYS: list, read cursors.
# ARGV: count. Returns cid1, activity1, read1, ...
LIST_TOP = """
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
if #top == 0 then
  return out
end
local cids = {}
for i = 1, #top, 2 do
  cids[#cids + 1] = top[i]
end
local reads = redis.call('HMGET', KEYS[2], unpack(cids))
for i = 1, #cids do
  out[#out + 1] = cids[i]
  out[#out + 1] = top[2 * i]
  out[#out + 1] = reads[i] or '0'
end
return out
"""

# One conversation's line in a list (b, c). KEYS: meta, bodies. Returns head,
# name, the last message's body.
SUMMARY = """
local meta = redis.call('HMGET', KEYS[1], 'head', 'name', 'last')
local body = false
if meta[3] then
  body = redis.call('HGET', KEYS[2], meta[3])
end
return {meta[1] or '0', meta[2] or '', body}
"""

# Model a's list lines: the newest entry and unread count of each conversation.
# KEYS: history index 1..n, the inbox bodies, the read cursors. ARGV: the
# conversation ids. Returns unread1, last body1, ...
LIST_A = """
local n = #KEYS - 2
local reads = redis.call('HMGET', KEYS[n + 2], unpack(ARGV))
local out = {}
for i = 1, n do
  local last = redis.call('ZREVRANGE', KEYS[i], 0, 0)
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. (reads[i] or '0'), '+inf')
  out[#out + 1] = last[1] and redis.call('HGET', KEYS[n + 1], last[1]) or false
end
return out
"""

SCRIPTS = {
    "append_inbox": _APPEND_INBOX,
    "read_inbox": _READ_INBOX,
    "conv_append": CONV_APPEND,
    "pointers": POINTERS,
    "sender": SENDER,
    "history": HISTORY,
    "history_a": HISTORY_A,
    "conv_read": CONV_READ,
    "list_top": LIST_TOP,
    "summary": SUMMARY,
    "list_a": LIST_A,
}


# --- a counting connection --------------------------------------------------------------
class ReplyError(Exception):
    pass


@dataclass
class Counters:
    round_trips: int = 0
    commands: int = 0
    sent: int = 0
    received: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.round_trips - other.round_trips,
            self.commands - other.commands,
            self.sent - other.sent,
            self.received - other.received,
        )


class Connection:
    """A RESP connection that sends each pipeline in one write and counts what
    crosses the wire. Replies are parsed by hiredis (as redis-py does)."""

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_connection((host, port), timeout=60)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = hiredis.Reader()
        self.counters = Counters()
        self.sha: dict[str, str] = {}

    def close(self) -> None:
        self._sock.close()

    def pipeline(self, batch: Sequence[Sequence[Any]], *, count: bool = True) -> list[Any]:
        if not batch:
            return []
        data = b"".join(encode(command) for command in batch)
        self._sock.sendall(data)
        replies: list[Any] = []
        received = 0
        while len(replies) < len(batch):
            reply = self._reader.gets()
            if reply is False:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                received += len(chunk)
                self._reader.feed(chunk)
                continue
            replies.append(reply)
        if count:
            c = self.counters
            c.round_trips += 1
            c.commands += len(batch)
            c.sent += len(data)
            c.received += received
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ReplyError(str(reply))
        return replies

    def call(self, *command: Any, count: bool = False) -> Any:
        return self.pipeline([command], count=count)[0]

    def load_scripts(self) -> None:
        for name, source in SCRIPTS.items():
            self.sha[name] = self.call("SCRIPT", "LOAD", source).decode()

    def evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        return ["EVALSHA", self.sha[name], len(keys), *keys, *args]

    def cpu_seconds(self) -> float:
        info = self.call("INFO", "cpu").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])

    def scan(self, pattern: str) -> Iterator[bytes]:
        cursor = b"0"
        while True:
            cursor, found = self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 5000)
            yield from found
            if cursor == b"0":
                return

    def memory(self, prefix: str) -> int:
        """Bytes of all keys under the prefix (MEMORY USAGE, every element counted)."""
        names = list(self.scan(prefix + "*"))
        total = 0
        for start in range(0, len(names), 5000):
            chunk = names[start : start + 5000]
            sizes = self.pipeline(
                [("MEMORY", "USAGE", name, "SAMPLES", 0) for name in chunk], count=False
            )
            total += sum(int(size or 0) for size in sizes)
        return total

    def drop(self, prefix: str) -> None:
        names = list(self.scan(prefix + "*"))
        for start in range(0, len(names), 5000):
            self.call("UNLINK", *names[start : start + 5000])


# --- the operations of each model ----------------------------------------------------------
_ids = iter(range(1, 10**12))


def message_id() -> str:
    # The shape of cim.core.ids (ULID-like, 21 characters).
    return f"01K{next(_ids):018d}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stamp(body: bytes) -> bytes:
    return b"%013d" % now_ms() + body


def payload(mid: str, sender: int, receiver: int, cid: str, seq: int = 0) -> bytes:
    """A realistic message body: today's ChatMessage, its conversation id in
    ``group_id`` (the design adds a conversation id and position of that size)."""
    return common_pb2.ChatMessage(
        message_id=mid,
        sender_id=sender,
        sender_name=f"user{sender}",
        receiver_id=receiver,
        group_id=cid,
        kind=common_pb2.MESSAGE_KIND_GROUP
        if cid.startswith("g")
        else common_pb2.MESSAGE_KIND_PRIVATE,
        text="x" * TEXT_BYTES,
        server_time_ms=now_ms(),
        trace_id="0123456789abcdef0123456789abcdef",
        seq=seq,
        client_msg_id=f"c-{mid}",
    ).SerializeToString()


RETAIN = (RETENTION_MAX, RETENTION_AGE_MS)


@dataclass
class World:
    """The data of one scenario, under its own key prefix."""

    conn: Connection
    keys: Keys
    # members of each group, by group id
    groups: dict[str, list[int]] = field(default_factory=dict)
    member_ver: dict[str, bytes] = field(default_factory=dict)
    # the deferred writes of the sends so far (see finish)
    deferred: list[Sequence[Any]] = field(default_factory=list)

    def flush(self) -> None:
        batch, self.deferred = self.deferred, []
        self.conn.pipeline(batch, count=False)

    def add_users(self, uids: Sequence[int]) -> None:
        batch = []
        for uid in uids:
            if uid % 2 == 0:  # half of the users are online
                batch.append(
                    (
                        "HSET",
                        self.keys.user(uid, "session"),
                        "sid",
                        f"s{uid}",
                        "server",
                        "chat-1",
                        "device",
                        "",
                        "connected",
                        "1",
                    )
                )
        for start in range(0, len(batch), 5000):
            self.conn.pipeline(batch[start : start + 5000], count=False)

    def add_group(self, gid: str, members: Sequence[int]) -> None:
        self.groups[gid] = list(members)
        members_key = self.keys.conv(gid, "members")
        for start in range(0, len(members), 5000):
            mapping: list[Any] = []
            for uid in members[start : start + 5000]:
                mapping += [uid, "m|0"]
            self.conn.call("HSET", members_key, *mapping)
        self.conn.call("HSET", self.keys.conv(gid, "meta"), "ver", "1", "name", f"group {gid}")


def _conv_keys(w: World, cid: str, claim: str | None) -> list[str]:
    k = w.keys
    names = [
        k.conv(cid, "meta"),
        k.conv(cid, "log"),
        k.conv(cid, "bodies"),
        k.conv(cid, "members"),
        k.conv(cid, "pending"),
    ]
    if claim is not None:
        names.append(claim)
    return names


def _conv_append(
    w: World, cid: str, sender: int, mid: str, body: bytes, *, pending: bool
) -> list[Any]:
    k = w.keys
    group = cid.startswith("g")
    claim = k.conv_claim(cid, sender, f"c-{mid}")
    return w.conn.evalsha(
        "conv_append",
        _conv_keys(w, cid, claim),
        [
            mid,
            stamp(body),
            now_ms(),
            *RETAIN,
            sender,
            w.member_ver.get(cid, b"0").decode(),
            b"M\x08abcdefgh" + mid.encode(),
            ID_WINDOW_MS,
            "1" if pending else "0",
            "1" if group else "0",
        ],
    )


def _checked(reply: list[Any]) -> int:
    if int(reply[0]) < 0:
        raise RuntimeError(f"append refused: {reply!r}")
    return int(reply[0])


def _a_copy(
    w: World, uid: int, cid: str, mid: str, body: bytes, claim: bool
) -> list[Sequence[Any]]:
    """Model a: today's append script into one member's inbox, and its history entry."""
    k = w.keys
    names = k.inbox(uid)
    args: list[Any] = [mid, stamp(body), now_ms(), *RETAIN, ID_WINDOW_MS]
    if claim:
        names.append(k.user_claim(uid, 0, f"c-{mid}"))
        args.append(b"M\x08abcdefgh" + mid.encode())
    return [
        w.conn.evalsha("append_inbox", names, args),
        ("ZADD", k.user(uid, f"hist:{cid}"), now_ms(), mid),
    ]


def _pointer_keys(w: World, uid: int) -> list[str]:
    meta, inbox, bodies = w.keys.inbox(uid)[:3]
    return [meta, inbox, bodies, w.keys.user(uid, "session"), w.keys.user(uid, "convs")]


def _pointers(
    w: World, uids: Sequence[int], cid: str, seq: int, mid: str, model: str = "c"
) -> list[Sequence[Any]]:
    body = stamp(pointer(cid, seq, mid))
    listed = "0" if model == "c/nolist" else "1"
    args = [mid, body, now_ms(), *RETAIN, cid, now_ms(), listed]
    if model == "c/one":  # standalone Redis only: any keys in one script
        names = [name for uid in uids for name in _pointer_keys(w, uid)]
        return [w.conn.evalsha("pointers", names, args)]
    if model != "c/slot":
        return [w.conn.evalsha("pointers", _pointer_keys(w, uid), args) for uid in uids]
    by: dict[int, list[str]] = defaultdict(list)
    for uid in uids:
        by[key_slot(w.keys.user(uid, "x").encode())] += _pointer_keys(w, uid)
    return [w.conn.evalsha("pointers", names, args) for names in by.values()]


def send(w: World, model: str, sender: int, cid: str, receivers: Sequence[int]) -> None:
    """One message, private or group, as each model's route would store it."""
    conn, k = w.conn, w.keys
    mid = message_id()
    receiver = receivers[0] if not cid.startswith("g") else 0
    body = payload(mid, sender, receiver, cid)
    group = cid.startswith("g")
    if model == "now":  # today: the receiver's append claims the send, one round trip
        names = [*k.inbox(receiver), k.user_claim(receiver, sender, f"c-{mid}")]
        args: list[Any] = [mid, stamp(body), now_ms(), *RETAIN, ID_WINDOW_MS]
        conn.pipeline([conn.evalsha("append_inbox", names, [*args, b"M" + mid.encode()])])
        w.deferred.append(("SET", names[-1], b"R", "PX", ID_WINDOW_MS))
        return
    if model == "a":
        if group:
            # 1: the claim (sender's tag) and the members' version (group's tag)
            conn.pipeline(
                [
                    (
                        "SET",
                        k.user_claim(sender, sender, f"c-{mid}"),
                        b"M" + mid.encode(),
                        "NX",
                        "GET",
                        "PX",
                        ID_WINDOW_MS,
                    ),
                    ("HGET", k.conv(cid, "meta"), "ver"),
                ]
            )
            # 2: a copy for every member, the sender too (gim)
            batch = [
                c for uid in [sender, *receivers] for c in _a_copy(w, uid, cid, mid, body, False)
            ]
            conn.pipeline(batch)
        else:
            # 1: the receiver's append claims the send (today); 2: the sender's copy
            conn.pipeline(_a_copy(w, receiver, cid, mid, body, True))
            conn.pipeline(_a_copy(w, sender, cid, mid, body, False))
        finish(w, model, sender, cid, mid)
        return
    reply = conn.pipeline([_conv_append(w, cid, sender, mid, body, pending=model != "b")])[0]
    seq = _checked(reply)
    if len(reply) > 3 + int(reply[2]):
        w.member_ver[cid] = reply[1]  # the route caches the member list by version
    if model == "b":
        conn.pipeline(
            [
                ("HMGET", k.user(uid, "session"), "sid", "server", "device", "connected")
                for uid in receivers
            ]
        )
        finish(w, model, sender, cid, mid)
        return
    batch = _pointers(w, receivers, cid, seq, mid, model)
    if model != "c/nolist":
        names = [k.user(sender, "convs"), k.user(sender, "read")]
        batch.append(conn.evalsha("sender", names, [now_ms(), cid, seq]))
    conn.pipeline(batch)
    finish(w, model, sender, cid, mid)


def finish(w: World, model: str, sender: int, cid: str, mid: str) -> None:
    """Queues the deferred step (off the critical path, one pipeline per batch
    every 50 ms, as today's finish_sends): the send's result, and for c the end
    of the fan-out's pending mark. Not counted: the same for every model."""
    k = w.keys
    if model == "a":
        owner = k.user_claim(sender if cid.startswith("g") else 0, sender, f"c-{mid}")
    else:
        owner = k.conv_claim(cid, sender, f"c-{mid}")
    w.deferred.append(("SET", owner, b"R", "PX", ID_WINDOW_MS))
    if model.startswith("c"):
        w.deferred.append(("ZREM", k.conv(cid, "pending"), mid))


# --- login, history and list setups and operations -------------------------------------------
def setup_login(w: World, model: str, uid: int, conversations: int) -> int:
    """A user with ``conversations`` conversations; LOGIN_MESSAGES new messages
    in LOGIN_CONVERSATIONS of them since their last sync. Returns the last seq
    the client holds (a, c) or 0 (b keeps cursors in the store)."""
    conn, k = w.conn, w.keys
    cids = [private_cid(uid, uid + 1 + n) for n in range(conversations)]
    moved = cids[:LOGIN_CONVERSATIONS]
    batch: list[Sequence[Any]] = []
    for start in range(0, len(cids), 1000):
        chunk = cids[start : start + 1000]
        batch.append(("ZADD", k.user(uid, "convs"), *[x for c in chunk for x in (1, c)]))
        if model == "b":
            batch.append(("HSET", k.user(uid, "cursors"), *[x for c in chunk for x in (c, 7)]))
            batch += [("HSET", k.conv(c, "meta"), "head", 7) for c in chunk]
    conn.pipeline(batch, count=False)
    for n in range(LOGIN_MESSAGES):
        cid = moved[n % len(moved)]
        peer = uid + 1 + cids.index(cid)
        mid = message_id()
        body = payload(mid, peer, uid, cid)
        if model == "a":
            conn.pipeline(_a_copy(w, uid, cid, mid, body, False), count=False)
        else:
            seq = _checked(
                conn.pipeline([_conv_append(w, cid, peer, mid, body, pending=False)], count=False)[
                    0
                ]
            )
            if model == "c":
                conn.pipeline(_pointers(w, [uid], cid, seq, mid), count=False)
    # a, c: the client holds nothing of the user's sequence yet (all 20 are new);
    # b: the cursors (7) are behind the heads of the moved conversations (11).
    return 0


def login(w: World, model: str, uid: int, last_seq: int) -> int:
    """Everything a login needs to sync; returns how many messages it read."""
    conn, k = w.conn, w.keys
    if model in ("a", "c"):
        (page,) = conn.pipeline(
            [
                conn.evalsha(
                    "read_inbox",
                    k.inbox(uid)[:3],
                    [last_seq, REPLAY_PAGE, now_ms(), *RETAIN],
                )
            ]
        )
        bodies = page[3 + 1 :: 2]
        if model == "a":
            return len(bodies)
        wanted: dict[str, list[str]] = defaultdict(list)
        for body in bodies:
            cid, _, mid = parse_pointer(bytes(body)[13:])
            wanted[cid].append(mid)
        found = conn.pipeline(
            [("HMGET", k.conv(cid, "bodies"), *mids) for cid, mids in wanted.items()]
        )
        return sum(len(f) for f in found)
    cursors_raw, cids = conn.pipeline(
        [("HGETALL", k.user(uid, "cursors")), ("ZRANGE", k.user(uid, "convs"), 0, -1)]
    )
    cursors = dict(zip(cursors_raw[::2], cursors_raw[1::2], strict=True))
    heads = conn.pipeline([("HGET", k.conv(c.decode(), "meta"), "head") for c in cids])
    moved = [
        (c, int(cursors.get(c, 0)))
        for c, head in zip(cids, heads, strict=True)
        if int(head or 0) > int(cursors.get(c, 0))
    ]
    pages = conn.pipeline(
        [
            conn.evalsha(
                "conv_read",
                [k.conv(c.decode(), "log"), k.conv(c.decode(), "bodies")],
                [after, REPLAY_PAGE],
            )
            for c, after in moved
        ]
    )
    return sum(len(p) // 2 for p in pages)


def setup_list(w: World, model: str, uid: int, conversations: int) -> None:
    conn, k = w.conn, w.keys
    cids = [private_cid(uid, uid + 1 + n) for n in range(conversations)]
    batch: list[Sequence[Any]] = []
    for start in range(0, len(cids), 1000):
        chunk = cids[start : start + 1000]
        scored = [x for i, c in enumerate(chunk, start) for x in (1_000_000 + i, c)]
        batch.append(("ZADD", k.user(uid, "convs"), *scored))
        batch.append(("HSET", k.user(uid, "read"), *[x for c in chunk for x in (c, 3)]))
        if model == "b":
            batch += [
                ("HSET", k.conv(c, "meta"), "head", 5, "last_at", 1_000_000 + i)
                for i, c in enumerate(chunk, start)
            ]
    conn.pipeline(batch, count=False)
    # the newest LIST_PAGE conversations have a last message
    for c in cids[-LIST_PAGE:]:
        mid = message_id()
        body = payload(mid, uid + 1, uid, c)
        if model == "a":
            conn.pipeline(_a_copy(w, uid, c, mid, body, False), count=False)
        else:
            conn.pipeline([_conv_append(w, c, uid + 1, mid, body, pending=False)], count=False)


def conversation_list(w: World, model: str, uid: int) -> int:
    """The first page of the user's conversations: each with its last message
    and unread count. Returns the page's length."""
    conn, k = w.conn, w.keys
    if model == "c":
        (top,) = conn.pipeline(
            [conn.evalsha("list_top", [k.user(uid, "convs"), k.user(uid, "read")], [LIST_PAGE])]
        )
        cids = [c.decode() for c in top[::3]]
        lines = conn.pipeline(
            [conn.evalsha("summary", [k.conv(c, "meta"), k.conv(c, "bodies")], []) for c in cids]
        )
        return len(lines)
    if model == "a":
        (top,) = conn.pipeline([("ZREVRANGE", k.user(uid, "convs"), 0, LIST_PAGE - 1)])
        cids = [c.decode() for c in top]
        names = [
            *(k.user(uid, f"hist:{c}") for c in cids),
            k.user(uid, "inbox:bodies"),
            k.user(uid, "read"),
        ]
        (lines,) = conn.pipeline([conn.evalsha("list_a", names, cids)])
        return len(lines) // 2
    # b: the order needs every conversation's last activity
    all_cids, _ = conn.pipeline(
        [("ZRANGE", k.user(uid, "convs"), 0, -1), ("HGETALL", k.user(uid, "read"))]
    )
    activity = conn.pipeline(
        [("HMGET", k.conv(c.decode(), "meta"), "head", "last_at") for c in all_cids]
    )
    ranked = sorted(
        zip(all_cids, activity, strict=True), key=lambda p: int(p[1][1] or 0), reverse=True
    )
    top_cids = [c.decode() for c, _ in ranked[:LIST_PAGE]]
    lines = conn.pipeline(
        [conn.evalsha("summary", [k.conv(c, "meta"), k.conv(c, "bodies")], []) for c in top_cids]
    )
    return len(lines)


def history(w: World, model: str, uid: int, cid: str) -> int:
    conn, k = w.conn, w.keys
    if model == "a":
        (page,) = conn.pipeline(
            [
                conn.evalsha(
                    "history_a",
                    [k.user(uid, f"hist:{cid}"), k.user(uid, "inbox:bodies")],
                    [0, HISTORY_PAGE],
                )
            ]
        )
        return len(page)
    names = [k.conv(cid, "members"), k.conv(cid, "left"), k.conv(cid, "log"), k.conv(cid, "bodies")]
    (page,) = conn.pipeline([conn.evalsha("history", names, [uid, 0, HISTORY_PAGE, "1"])])
    if page and page[0] == -2:
        raise RuntimeError("history refused")
    return len(page) // 2


# --- the measurements -----------------------------------------------------------------------
@dataclass
class Result:
    model: str
    op: str
    size: int
    reps: int
    round_trips: float
    commands: float
    sent: float
    received: float
    p50_ms: float
    p99_ms: float
    redis_cpu_us: float
    memory_bytes: float | None = None
    slots: float | None = None

    def row(self) -> str:
        mem = "" if self.memory_bytes is None else f"{self.memory_bytes:,.0f}"
        return (
            f"| {self.model} | {self.op} | {self.size:,} | {self.round_trips:g} | "
            f"{self.commands:,.0f} | {self.sent:,.0f} | {self.received:,.0f} | "
            f"{self.p50_ms:.2f} | {self.p99_ms:.2f} | {self.redis_cpu_us:,.0f} | {mem} |"
        )


HEADER = (
    "| model | operation | M or K | round trips | commands | bytes sent | bytes received | "
    "p50 ms | p99 ms | Redis CPU µs | memory added, bytes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def measure(
    conn: Connection,
    model: str,
    op: str,
    size: int,
    reps: int,
    run: Callable[[int], object],
    memory_prefix: str | None = None,
    after: Callable[[], None] = lambda: None,
) -> Result:
    before_mem = conn.memory(memory_prefix) if memory_prefix else 0
    start = conn.counters
    conn.counters = Counters()
    cpu = conn.cpu_seconds()
    times = []
    for rep in range(reps):
        began = time.perf_counter()
        run(rep)
        times.append(time.perf_counter() - began)
        after()  # the deferred writes: not timed, not counted
    cpu = conn.cpu_seconds() - cpu
    got, conn.counters = conn.counters, start
    memory = (conn.memory(memory_prefix) - before_mem) / reps if memory_prefix else None
    return Result(
        model,
        op,
        size,
        reps,
        got.round_trips / reps,
        got.commands / reps,
        got.sent / reps,
        got.received / reps,
        percentile(times, 0.5) * 1000,
        percentile(times, 0.99) * 1000,
        cpu / reps * 1e6,
        memory,
    )


def combine(runs: Sequence[Sequence[Result]]) -> list[Result]:
    """One row per operation: the median of the runs' times and Redis CPU (a
    noisy machine moves them); the counted figures are the same in every run."""
    combined = []
    for rows in zip(*runs, strict=True):
        first = rows[0]
        combined.append(
            replace(
                first,
                p50_ms=statistics.median(r.p50_ms for r in rows),
                p99_ms=statistics.median(r.p99_ms for r in rows),
                redis_cpu_us=statistics.median(r.redis_cpu_us for r in rows),
            )
        )
    return combined


def scaled(reps: int, quick: bool) -> int:
    return max(1, reps // 50) if quick else reps


SEND_MODELS = ("a", "b", "c", "c/slot", "c/one", "c/nolist")
READ_MODELS = ("a", "b", "c")


def run_all(
    conn: Connection,
    quick: bool = False,
    group_sizes: Sequence[int] = GROUP_SIZES,
    conversation_counts: Sequence[int] = CONVERSATION_COUNTS,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    conn.load_scripts()
    results: list[Result] = []
    run_id = f"mc{time.time_ns() % 10**8}:"
    scenario = iter(range(10**6))

    def world() -> World:
        return World(conn, Keys(f"{run_id}{next(scenario)}:"))

    # private messages: 20 pairs, each message between one of them
    for model in ("now", *SEND_MODELS):
        w = world()
        w.add_users(range(1, 41))
        pairs = [(2 * n + 1, 2 * n + 2) for n in range(20)]

        def private(
            rep: int, w: World = w, model: str = model, pairs: list[tuple[int, int]] = pairs
        ) -> None:
            a, b = pairs[rep % len(pairs)]
            send(w, model, a, private_cid(a, b), [b])

        result = measure(
            conn,
            model,
            "private",
            2,
            scaled(1000, quick),
            private,
            memory_prefix=w.keys.prefix,
            after=w.flush,
        )
        results.append(result)
        progress(result.row())
        conn.drop(w.keys.prefix)

    # group messages to M members, half of them online
    for size in group_sizes:
        reps = scaled({10: 300, 100: 100, 1_000: 20}.get(size, 5), quick)
        for model in SEND_MODELS:
            w = world()
            members = list(range(1, size + 1))
            w.add_users(members)
            w.add_group("g:1", members)

            def group(
                rep: int, w: World = w, model: str = model, members: list[int] = members
            ) -> None:
                sender = members[rep % len(members)]
                send(w, model, sender, "g:1", [m for m in members if m != sender])

            # The route's first send fetches the member list (cached after).
            if model == "c":
                first = measure(conn, model, "group, first send", size, 1, group)
                results.append(first)
                progress(first.row())
            else:
                group(0)
            w.flush()
            result = measure(
                conn, model, "group", size, reps, group, memory_prefix=w.keys.prefix, after=w.flush
            )
            if model == "c/slot":
                # the receivers' slots, on average over the senders measured
                per_rep = [
                    distinct_slots(
                        [w.keys.user(m, "x") for m in members if m != members[rep % size]]
                    )
                    for rep in range(reps)
                ]
                result.slots = sum(per_rep) / reps
            results.append(result)
            progress(result.row())
            conn.drop(w.keys.prefix)

    # login: K conversations, 20 new messages in 5 of them
    for size in conversation_counts:
        reps = scaled({10: 200, 200: 100}.get(size, 20), quick)
        for model in READ_MODELS:
            w = world()
            uid = 1
            last_seq = setup_login(w, model, uid, size)

            def do_login(rep: int, w: World = w, model: str = model, last: int = last_seq) -> None:
                if login(w, model, 1, last) != LOGIN_MESSAGES:
                    raise RuntimeError(f"login of model {model} missed messages")

            result = measure(conn, model, "login", size, reps, do_login)
            results.append(result)
            progress(result.row())

            w2 = world()
            setup_list(w2, model, uid, size)

            def do_list(rep: int, w: World = w2, model: str = model, size: int = size) -> None:
                if conversation_list(w, model, 1) != min(size, LIST_PAGE):
                    raise RuntimeError(f"list of model {model} is short")

            result = measure(conn, model, "list", size, reps, do_list)
            # what K conversations cost the user's own keys (list and read cursors)
            result.memory_bytes = sum(
                conn.memory(w2.keys.user(uid, name)) for name in ("convs", "read")
            )
            results.append(result)
            progress(result.row())
            conn.drop(w.keys.prefix)
            conn.drop(w2.keys.prefix)

    # a history page of 50 in a group of 100 with 500 messages
    for model in READ_MODELS:
        w = world()
        members = list(range(1, 101))
        w.add_users(members)
        w.add_group("g:1", members)
        for n in range(scaled(500, quick) + HISTORY_PAGE):
            sender = members[n % len(members)]
            send(
                w, "a" if model == "a" else "b", sender, "g:1", [m for m in members if m != sender]
            )

        def page(rep: int, w: World = w, model: str = model) -> None:
            if history(w, model, 2, "g:1") != HISTORY_PAGE:
                raise RuntimeError("short history page")

        result = measure(conn, model, "history", 100, scaled(500, quick), page)
        results.append(result)
        progress(result.row())
        conn.drop(w.keys.prefix)
    return results


# --- a redis-server of our own ------------------------------------------------------------------
@contextlib.contextmanager
def own_redis() -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    (port,) = processes.free_ports(1)
    with tempfile.TemporaryDirectory(prefix="cim-measure-") as directory:
        process = processes.spawn(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    Connection("127.0.0.1", port).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            processes.stop(process, 5.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1/50 of the repetitions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--url", help="redis://HOST:PORT of a Redis to use (keys are removed)")
    parser.add_argument(
        "--runs", type=int, default=3, help="run everything this often; report the medians"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.url:
            host, _, port = args.url.removeprefix("redis://").partition(":")
            address = (host, int(port or 6379))
        else:
            address = stack.enter_context(own_redis())
        conn = Connection(*address)
        stack.callback(conn.close)
        version = conn.call("INFO", "server").decode()
        redis_version = next(
            line.split(":", 1)[1]
            for line in version.splitlines()
            if line.startswith("redis_version")
        )
        print(f"redis {redis_version}, Python {sys.version.split()[0]}; one client, one connection")
        runs = []
        for n in range(args.runs):
            print(f"run {n + 1} of {args.runs}", file=sys.stderr)
            runs.append(run_all(conn, args.quick))
        results = combine(runs)
        print(HEADER)
        for result in results:
            print(result.row())
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
