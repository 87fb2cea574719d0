"""The Redis store: the ``Store`` protocol on ``redis.asyncio``, standalone or cluster.

Everything that must be atomic for one user is one Lua script over that user's
keys, which share a hash tag (see :mod:`cim.store.keys`), so the scripts run
unchanged on a Redis Cluster. Global keys (id counter, name index, online
index) are never written by the same script as a per-user key; the steps that
cross slots are ordered so a crash between them leaves nothing that breaks a
retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from dataclasses import replace
from string import Template
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cim.core.groups import Change, Group, Member
from cim.errors import Unavailable
from cim.store import keys
from cim.store.base import (
    GROUP_DELETED,
    NOT_A_MEMBER,
    Account,
    Appended,
    ConversationAppended,
    ConversationItem,
    ConversationLine,
    ConversationPage,
    HistoryEntry,
    HistoryPage,
    InboxEntry,
    InboxItem,
    InboxPage,
    OwnSend,
    PointedAppended,
    PointedItem,
    PointerItem,
    ReadMark,
    ReadMarked,
    ReceiptPage,
    Retention,
    SendClaim,
    SendKey,
    SessionRecord,
    Unfinished,
    append_then_point,
)
from cim.store.keys import KeyLayout

log = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster
_Pipe = Pipeline | ClusterPipeline

# Errors that mean "Redis is not there (right now)", not "the store has a bug".
# MaxConnectionsError, AuthenticationError and BusyLoadingError are ConnectionErrors.
_DOWN_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
)
_CAUGHT: tuple[type[Exception], ...] = (*_DOWN_ERRORS, RedisClusterException)


def _is_outage(exc: Exception) -> bool:
    if isinstance(exc, _DOWN_ERRORS):
        return True
    # The cluster client raises its generic exception both when no node
    # answers (caused by a connection error) and for misuse (a bug: let it show).
    return isinstance(exc, RedisClusterException) and (
        isinstance(exc.__cause__, _DOWN_ERRORS) or "not covered" in str(exc)
    )


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# The private send script's flags per send (see _CONV_POINT): the sender's
# side, a fresh message id.
_FLAGS = {(a, b): f"{int(a)}{int(b)}" for a in (False, True) for b in (False, True)}

# A standalone Redis takes at most this many private sends in one script call.
_POINTED_PER_CALL = 64

# An append checks its log's or sequence's age bound on every AGE_EVERY-th
# entry only (see _TRIM): two Redis calls fewer on the others, for an aged
# entry kept at most that many appends longer (reads always check).
AGE_EVERY = 16

# Field names come from cim.store.keys, so the scripts and the module agree.
_FIELDS = {
    "sid": keys.SESSION_ID,
    "server": keys.SESSION_SERVER,
    "device": keys.SESSION_DEVICE,
    "connected": keys.SESSION_CONNECTED,
    "exp": keys.SESSION_INDEXED_EXPIRY,
    "head": keys.INBOX_HEAD,
    "dropped": keys.INBOX_DROPPED,
    "acked": keys.INBOX_ACKED,
    "last": keys.CONVERSATION_LAST,
    "pointer": keys.POINTER_TAG.decode(),
    "digits": str(keys.INBOX_TIME_DIGITS),
    "disabled": keys.ACCOUNT_DISABLED,
    "disabled_reason": keys.ACCOUNT_DISABLED_REASON,
    "name": keys.ACCOUNT_NAME,
    "ver": keys.GROUP_VERSION,
    "deleted": keys.GROUP_DELETED,
    "age_every": str(AGE_EVERY),
}


def _lua(source: str) -> str:
    return Template(source).substitute(_FIELDS)


# KEYS: session. ARGV: sid, server, device, connected, ttl_ms, exp ('' if not
# connected), has_replace ('0'/'1'), replace_sid, pending_only ('0'/'1': replace
# replace_sid only while it is not connected).
# Returns nil when stored, else the session in the way (sid, server, device, connected).
_CLAIM = _lua("""
local cur = redis.call('HMGET', KEYS[1], '$sid', '$server', '$device', '$connected')
-- The same session again is a retried claim (a reply lost in transit): it succeeds.
if cur[1] and cur[1] ~= ARGV[1] and (ARGV[7] == '0' or cur[1] ~= ARGV[8]
                                     or (ARGV[9] == '1' and cur[4] == '1')) then
  return cur
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '$sid', ARGV[1], '$server', ARGV[2], '$device', ARGV[3],
           '$connected', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], '$exp', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return false
""")

# KEYS: session. ARGV: sid, server, ttl_ms, exp.
# Returns nil if the session is not current, else (sid, server, device).
_MARK_CONNECTED = _lua("""
local cur = redis.call('HMGET', KEYS[1], '$sid', '$device')
if cur[1] ~= ARGV[1] then
  return false
end
redis.call('HSET', KEYS[1], '$server', ARGV[2], '$connected', '1', '$exp', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {cur[1], ARGV[2], cur[2] or ''}
""")

# KEYS: session. ARGV: sid, ttl_ms, exp. Returns 1 if extended, 0 if not current.
_REFRESH = _lua("""
if redis.call('HGET', KEYS[1], '$sid') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], '$exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")

# KEYS: session. ARGV: sid, check_server ('0'/'1'), server.
# Returns nil if not deleted, else the expiry last written to the online index ('' if none).
_RELEASE = _lua("""
local cur = redis.call('HMGET', KEYS[1], '$sid', '$server', '$exp')
if cur[1] ~= ARGV[1] then
  return false
end
if ARGV[2] == '1' and cur[2] ~= ARGV[3] then
  return false
end
redis.call('DEL', KEYS[1])
return cur[3] or ''
""")

# KEYS: online index. ARGV: member1, bound1, member2, bound2, ...
# Removes each member whose score is still <= its bound: an entry a newer
# session pushed forward in the meantime survives.
_DROP_FROM_INDEX = """
local dropped = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[i + 1]) then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return dropped
"""

# KEYS: name index entry. ARGV: user id. Deletes the entry only if it still names that id.
_DELETE_NAME_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# --- name keys (look-alike names; one hash tag) -------------------------------------
# KEYS: the name keys of one new name. ARGV: user id. Claims them all for the
# user, or none: returns the id holding one of them already (nil when claimed).
# Keys the user holds already (a retried claim) count as free.
_CLAIM_NAME_KEYS = """
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[1] then
    return holder
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1])
end
return false
"""

# KEYS: name keys. ARGV: from id, to id ('' deletes). Moves the keys `from`
# holds to `to`; returns how many moved.
_MOVE_NAME_KEYS = """
local moved = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    if ARGV[2] == '' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], ARGV[2])
    end
    moved = moved + 1
  end
end
return moved
"""

# KEYS: name key 1..n, then the indexed-through mark. ARGV: the user id for
# each name key, then the highest user id this step covered. Gives each key
# to its user unless someone holds it, and raises the mark (never lowers it).
# Returns how many keys it gave.
_INDEX_NAMES = """
local n = #KEYS - 1
local added = 0
for i = 1, n do
  if redis.call('SET', KEYS[i], ARGV[i], 'NX') then
    added = added + 1
  end
end
local through = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
if tonumber(ARGV[#ARGV]) > through then
  redis.call('SET', KEYS[#KEYS], ARGV[#ARGV])
end
return added
"""

# --- inboxes -----------------------------------------------------------------------
# A user's inbox is five keys under the user's hash tag (see cim.store.keys):
# meta {head, dropped}, the zset of unacked message ids by seq, their bodies
# (append time in ms, zero-padded, then the payload), and the recently
# appended ids (zset by append time, hash id -> seq) for retried appends.

# Retention, shared by the append and read scripts: drops the oldest entries
# while there are more than max_n or the oldest was appended before cutoff (ms),
# at most 100 per call (later calls go on), and records the highest seq dropped.
# An append passes its new seq or position as `at`: the count is checked on
# every append, the age (two more calls: the oldest entry and its body) only
# on every AGE_EVERY-th, so an aged entry may outlive its bound by that many
# appends; reads pass nil and check both.
_TRIM = """
local function trim(meta, inbox, bodies, max_n, cutoff, at)
  local n = redis.call('ZCARD', inbox)
  if at and n <= max_n and at % $age_every ~= 0 then
    return
  end
  local dropped = false
  for _ = 1, 100 do
    if n == 0 then
      break
    end
    local oldest = redis.call('ZRANGE', inbox, 0, 0, 'WITHSCORES')
    if n <= max_n then
      local body = redis.call('HGET', bodies, oldest[1])
      local at = body and tonumber(string.sub(body, 1, $digits))
      if at and at >= cutoff then
        break
      end
    end
    redis.call('ZREM', inbox, oldest[1])
    redis.call('HDEL', bodies, oldest[1])
    dropped = oldest[2]
    n = n - 1
  end
  if dropped then
    redis.call('HSET', meta, '$dropped', dropped)
  end
end
"""

# KEYS: inbox meta, inbox, bodies, ids, id seqs, session[, send claim]. ARGV:
# message id, body (time + payload), now_ms, max_messages, max_age_ms,
# id_window_ms[, the send claim's value]. With a send claim key, the send is
# claimed first (SET NX GET, for the id window): if an earlier attempt holds
# it, returns {-1, its value} and appends nothing. An id appended within the
# id window gets its seq back and is not appended again. Returns the seq, then
# the session's fields as HMGET reads them.
_APPEND_INBOX = _lua(
    _TRIM
    + """
if #KEYS >= 7 then
  local earlier = redis.call('SET', KEYS[7], ARGV[7], 'NX', 'GET', 'PX',
                             math.max(1, tonumber(ARGV[6])))
  if earlier then
    return {-1, earlier}
  end
end
local id, now, window = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[6])
local forget_before = now - window
local seq = redis.call('HGET', KEYS[5], id)
if seq then
  local at = redis.call('ZSCORE', KEYS[4], id)
  if not at or tonumber(at) < forget_before then
    seq = false
  end
end
if seq then
  seq = tonumber(seq)
else
  seq = redis.call('HINCRBY', KEYS[1], '$head', 1)
  redis.call('ZADD', KEYS[2], seq, id)
  redis.call('HSET', KEYS[3], id, ARGV[2])
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('HSET', KEYS[5], id, seq)
end
trim(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), now - tonumber(ARGV[5]))
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', string.format('(%d', forget_before),
                       'LIMIT', 0, 100)
if #old > 0 then
  redis.call('ZREM', KEYS[4], unpack(old))
  redis.call('HDEL', KEYS[5], unpack(old))
end
-- Once no append came for a whole window, every id in it is forgotten anyway.
redis.call('PEXPIRE', KEYS[4], math.max(1, window))
redis.call('PEXPIRE', KEYS[5], math.max(1, window))
local s = redis.call('HMGET', KEYS[6], '$sid', '$server', '$device', '$connected', '$exp')
return {seq, s[1], s[2], s[3], s[4], s[5]}
"""
)

# KEYS: inbox meta, inbox, bodies. ARGV: after_seq, limit, now_ms, max_messages,
# max_age_ms. Trims like an append, then returns head, dropped, how many entries
# follow after_seq and the sync cursor (up to limit + 1), and seq1, body1, ...
# for the first `limit` (a body is a full copy or a pointer).
_READ_INBOX = _lua(
    _TRIM
    + """
local limit = tonumber(ARGV[2])
trim(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[3]) - tonumber(ARGV[5]))
local meta = redis.call('HMGET', KEYS[1], '$head', '$dropped', '$acked')
-- Acked entries (pointers kept for the id window) are not replayed. The
-- bound stays a string: Lua would print a large number in %.14g.
local after = ARGV[1]
if meta[3] and tonumber(meta[3]) > tonumber(after) then
  after = meta[3]
end
local found = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. after, '+inf', 'WITHSCORES',
                         'LIMIT', 0, limit + 1)
local count = #found / 2
local out = {tonumber(meta[1]) or 0, tonumber(meta[2]) or 0, count}
local ids = {}
for i = 1, math.min(count, limit) do
  ids[i] = found[2 * i - 1]
end
for first = 1, #ids, 500 do
  local last = math.min(first + 499, #ids)
  local bodies = redis.call('HMGET', KEYS[3], unpack(ids, first, last))
  for i = 1, #bodies do
    if bodies[i] then
      out[#out + 1] = tonumber(found[2 * (first + i - 1)])
      out[#out + 1] = bodies[i]
    end
  end
end
return out
"""
)


# The acked part of a user's sequence, shared by the ack and pointer scripts:
# drops the entries up to the sync cursor (at most 100 per call, oldest
# first), full copies at once and pointers once appended before `young` (ms):
# until then a retried send finds its pointer by message id.
_TRIM_ACKED = """
local function trim_acked(meta, inbox, bodies, young)
  local acked = tonumber(redis.call('HGET', meta, '$acked')) or 0
  if acked == 0 then
    return
  end
  local function kept(id)
    local body = redis.call('HGET', bodies, id)
    return body and string.sub(body, $digits + 1, $digits + 1) == '$pointer'
        and tonumber(string.sub(body, 1, $digits)) >= young
  end
  -- Mostly the oldest acked entry is a pointer still kept: look at it alone
  -- first (else every call would read 100 ids once the kept ones reach 100).
  local ids = redis.call('ZRANGEBYSCORE', inbox, '-inf', acked, 'LIMIT', 0, 1)
  if #ids == 0 or kept(ids[1]) then
    return
  end
  ids = redis.call('ZRANGEBYSCORE', inbox, '-inf', acked, 'LIMIT', 0, 100)
  local doomed = {}
  for _, id in ipairs(ids) do
    if kept(id) then
      break
    end
    doomed[#doomed + 1] = id
  end
  if #doomed > 0 then
    redis.call('ZREM', inbox, unpack(doomed))
    redis.call('HDEL', bodies, unpack(doomed))
  end
end
"""

# Fan-out repair (docs/design/conversations.md, "Writes in other slots"), a
# block of its own so that any append script can carry it. The append marks a
# conversation's new message in `pending` (zset: message id -> append ms)
# until its route confirms the fan-out (a ZREM in its deferred pipeline).
# overdue() returns, as a flat list of id, position, body, up to 10 of the
# conversation's messages pending for longer than `after` ms, but `own`: a
# route that died left their fan-out undone, and the caller does it first
# (idempotent by message id). Those pending for longer than `window` (the id
# window) are dropped instead, and so are those retention dropped: members may
# have trimmed their pointers, so a late fan-out could show one twice (its
# sender was never answered; it stays in the history).
_OVERDUE = """
local function overdue(pending, log, bodies, own, now, after, window)
  local found = redis.call('ZRANGEBYSCORE', pending, '-inf', string.format('%d', now - after),
                           'WITHSCORES', 'LIMIT', 0, 20)
  local out = {}
  for i = 1, #found, 2 do
    local id = found[i]
    if id ~= own then
      local position = tonumber(found[i + 1]) >= now - window and redis.call('ZSCORE', log, id)
      local body = position and redis.call('HGET', bodies, id)
      if not body then
        redis.call('ZREM', pending, id)
      else
        out[#out + 1] = id
        out[#out + 1] = tonumber(position)
        out[#out + 1] = body
        if #out == 30 then
          break
        end
      end
    end
  end
  return out
end
"""

# Round trip 1 of a send, as a function: one message into a conversation's
# log. k: meta, log, bodies, members, pending, send claim (nil: no claim). a:
# message id, body (time + payload), now_ms, max_messages, max_age_ms,
# id_window_ms, the claim's value, the group sender ('0': not a group's
# message), the membership version the caller knows, repair_after_ms. A
# group's message is refused, before anything is written, unless its sender
# is a member ({-2}) and the group not deleted ({-3}). With a claim key the
# send is claimed next (SET NX GET): if an earlier attempt holds it, returns
# {-1, its value} and appends nothing. A message id already in the log gets
# its position back (a `fresh` one, made for this attempt, is not looked
# up). A new message is marked pending (see overdue) unless `fanned`: its
# fan-out is written in the caller's own atomic step. Hands back the
# conversation's overdue either way (one a two-step append left, a group's or
# a cluster's, must not wait for ever). Trims the log to the history bounds.
# Returns {position, overdue} (a group's message: {position, overdue,
# version, member ids...}, the ids only when the version is not the known
# one), then whether the message is new.
_CONV_APPEND_FN = """
local function conv_append(k, a, fanned, fresh)
  local group_sender = a[8]
  local version = 0
  if group_sender ~= '0' then
    if not redis.call('HGET', k[4], group_sender) then
      return {-2}, false
    end
    local meta = redis.call('HMGET', k[1], '$ver', '$deleted')
    if meta[2] == '1' then
      return {-3}, false
    end
    version = tonumber(meta[1]) or 0
  end
  if k[6] then
    local earlier = redis.call('SET', k[6], a[7], 'NX', 'GET', 'PX',
                               math.max(1, tonumber(a[6])))
    if earlier then
      return {-1, earlier}, false
    end
  end
  local position = not fresh and redis.call('ZSCORE', k[2], a[1])
  local now = tonumber(a[3])
  local new = not position
  if new then
    position = redis.call('HINCRBY', k[1], '$head', 1)
    redis.call('ZADD', k[2], position, a[1])
    redis.call('HSET', k[3], a[1], a[2])
    redis.call('HSET', k[1], '$last', a[1])
    if not fanned then
      redis.call('ZADD', k[5], a[3], a[1])  -- pending: see overdue
    end
  else
    position = tonumber(position)
  end
  trim(k[1], k[2], k[3], tonumber(a[4]), now - tonumber(a[5]), position)
  local repairs = overdue(k[5], k[2], k[3], a[1], now, tonumber(a[10]), tonumber(a[6]))
  if group_sender == '0' then
    return {position, repairs}, new
  end
  local out = {position, repairs, version}
  if version ~= tonumber(a[9]) then
    for _, uid in ipairs(redis.call('HKEYS', k[4])) do
      out[#out + 1] = tonumber(uid)
    end
  end
  return out, new
end
"""

# Round trip 2 of a send, as a function: a pointer into one member's
# sequence. k: inbox meta, inbox, bodies, ids, id seqs, session, conversation
# list. The message id, the entry (time + pointer), now_ms, max_messages,
# max_age_ms, id_window_ms, the conversation id, and whether the id is fresh
# (made for this attempt: see PointedItem; not looked up). A message id the
# sequence holds gets its seq back (acked pointers stay for the id window;
# acks trim them after it); so does one a full-copy append of the code
# before conversations remembered (ids, id seqs: a retry that crossed the
# upgrade). The conversation goes to the top of the member's list. Returns
# the seq, then the session's fields as HMGET reads them.
_POINT_FN = """
local function point(k, id, entry, now, max_n, max_age, window, cid, fresh)
  local seq = false
  if not fresh then
    seq = redis.call('ZSCORE', k[2], id)
    if not seq then
      seq = redis.call('HGET', k[5], id)
      if seq then
        local at = redis.call('ZSCORE', k[4], id)
        if not at or tonumber(at) < now - window then
          seq = false
        end
      end
    end
  end
  if seq then
    seq = tonumber(seq)
  else
    seq = redis.call('HINCRBY', k[1], '$head', 1)
    redis.call('ZADD', k[2], seq, id)
    redis.call('HSET', k[3], id, entry)
  end
  trim(k[1], k[2], k[3], max_n, now - max_age, seq)
  redis.call('ZADD', k[7], now, cid)
  local s = redis.call('HMGET', k[6], '$sid', '$server', '$device', '$connected', '$exp')
  return {seq, s[1], s[2], s[3], s[4], s[5]}
end
"""

# The sender's side of a send, as a function (see OwnSend): the conversation
# to the top of their list, their read cursor raised to the message's
# position, never lowered (a retry may carry an older position; a new
# message's position is the head, above any cursor: not read first).
_SENT_FN = """
local function sent(list, read, cid, now, position, new)
  redis.call('ZADD', list, now, cid)
  if new or position > (tonumber(redis.call('HGET', read, cid)) or 0) then
    redis.call('HSET', read, cid, position)
  end
end
"""

# Round trip 1 of a send. KEYS: meta, log, bodies, members, pending[, send
# claim]. ARGV: as conv_append's a.
_CONV_APPEND = _lua(
    _TRIM
    + _OVERDUE
    + _CONV_APPEND_FN
    + """
local stored = conv_append({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV, false,
                           false)
return stored
"""
)

# Round trip 2 of a send. KEYS: as point's k. ARGV: message id, entry (time +
# pointer), now_ms, max_messages, max_age_ms, id_window_ms, conversation id.
_POINTERS = _lua(
    _TRIM
    + _POINT_FN
    + """
return point(KEYS, ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
             tonumber(ARGV[6]), ARGV[7], false)
"""
)

# The sender's side of a send, queued beside the pointers in round trip 2.
# KEYS: the sender's conversation list, read cursors. ARGV: conversation id,
# now_ms, position.
_SENDER = _lua(_SENT_FN + "sent(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), false)")

# Both round trips of a batch's private sends in one script, for a standalone
# Redis (every key on one node; a cluster runs the scripts above instead):
# one script call for many sends spares Redis the per-call set-up and the
# route a pipelined command each. The sends are appended in turn, as one
# script each would be. KEYS, per send: the receiver's seven (as point's k),
# then meta, log, bodies, members, pending of the conversation, the sender's
# conversation list and read cursors[, send claim]. ARGV: now_ms, the history
# max_messages and max_age_ms, id_window_ms, the receivers' max_messages and
# max_age_ms, repair_after_ms, the entry stamp (time), then per send its key
# count (14, or 15 with a claim), message id, body (time + payload), the
# claim's value, conversation id, and two flags: '1' for the sender's side
# ('0': none), then '1' for a fresh message id (see PointedItem; '0': look
# it up in the log and the receiver's sequence). Returns per send
# conv_append's answer when it is not a position (nothing appended: the send
# was claimed before), else {position, overdue, seq, session fields...}.
_CONV_POINT = _lua(
    _TRIM
    + _OVERDUE
    + _CONV_APPEND_FN
    + _POINT_FN
    + _SENT_FN
    + """
local now = tonumber(ARGV[1])
local max_n, max_age, window = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[4])
local out = {}
local k = 0
for a = 9, #ARGV, 6 do
  local n, id, cid = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 4]
  local fresh = string.sub(ARGV[a + 5], 2, 2) == '1'
  local claim = nil
  if n == 15 then
    claim = KEYS[k + 15]
  end
  -- Fanned out here: its one pointer is written in this same atomic step.
  local stored, new = conv_append(
    {KEYS[k + 8], KEYS[k + 9], KEYS[k + 10], KEYS[k + 11], KEYS[k + 12], claim},
    {id, ARGV[a + 2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[a + 3], '0', '-1', ARGV[7]},
    true, fresh)
  local position = stored[1]
  if position < 0 then
    out[#out + 1] = stored
  else
    local entry = ARGV[8] .. '$pointer' .. cid .. '|' .. position .. '|' .. id
    local pointed = point({KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
                           KEYS[k + 6], KEYS[k + 7]},
                          id, entry, now, max_n, max_age, window, cid, fresh)
    if string.sub(ARGV[a + 5], 1, 1) == '1' then
      sent(KEYS[k + 13], KEYS[k + 14], cid, now, position, new)
    end
    table.insert(pointed, 1, stored[2])
    table.insert(pointed, 1, position)
    out[#out + 1] = pointed
  end
  k = k + n
end
return out
"""
)

# KEYS: any number. ARGV: px, then a value per key. Sets each key to its
# value for px ms: a batch's send results in one call on a standalone Redis
# (a pipelined SET each costs the route far more).
_SET_ALL = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
end
"""

# --- conversation lists, read cursors, receipts --------------------------------------
# A mark's conversation side, as a function. k: meta, members, reads. A
# group's mark by a non-member is refused ({-2}); else the position is
# capped at the head and raises the user's receipt (never lowered). Returns
# {capped position, head, 1 if the receipt moved else 0, joined position}.
_READ_CONV_FN = """
local function read_conv(k, uid, position, group)
  local joined = 0
  if group == '1' then
    local member = redis.call('HGET', k[2], uid)
    if not member then
      return {-2}
    end
    joined = tonumber(string.match(member, '|(%d+)$$')) or 0
  end
  local head = tonumber(redis.call('HGET', k[1], '$head')) or 0
  if position > head then
    position = head
  end
  local moved = 0
  if position > 0 and position > (tonumber(redis.call('HGET', k[3], uid)) or 0) then
    redis.call('HSET', k[3], uid, position)
    moved = 1
  end
  return {position, head, moved, joined}
end
"""

# A mark's user side, as a function: the read cursor raised (never lowered);
# returns the cursor after it.
_READ_USER_FN = """
local function read_user(read, cid, position)
  local cursor = tonumber(redis.call('HGET', read, cid)) or 0
  if position > cursor then
    redis.call('HSET', read, cid, position)
    return position
  end
  return cursor
end
"""

# A mark's first round trip on a cluster. KEYS: meta, members, reads. ARGV:
# user id, position, '1' for a group.
_READ_CONV = _lua(_READ_CONV_FN + "return read_conv(KEYS, ARGV[1], tonumber(ARGV[2]), ARGV[3])")

# A mark's second round trip on a cluster. KEYS: read cursors. ARGV:
# conversation id, the capped position. Returns the cursor after it.
_READ_USER = _READ_USER_FN + "return read_user(KEYS[1], ARGV[1], tonumber(ARGV[2]))"

# Both sides of a mark in one script, on a standalone Redis. KEYS: meta,
# members, reads, the user's read cursors. ARGV: user id, position, '1' for
# a group, conversation id. Returns read_conv's answer with the cursor after
# the mark in place of the capped position ({-2} when refused).
_MARK_READ = _lua(
    _READ_CONV_FN
    + _READ_USER_FN
    + """
local done = read_conv(KEYS, ARGV[1], tonumber(ARGV[2]), ARGV[3])
if done[1] < 0 then
  return done
end
local capped = done[1]
done[1] = read_user(KEYS[4], ARGV[4], capped)
done[5] = capped
return done
"""
)

# A page of a user's conversation list. KEYS: list, read cursors. ARGV:
# before_ms (<= 0: from the top), before id, limit. Lines with before_ms's
# score come back in reverse byte order of their ids: those not below
# before id are skipped. Returns how many lines were found (up to limit +
# 1), then id, activity, read cursor for the first `limit`.
_LIST_PAGE = """
local limit = tonumber(ARGV[3])
local found
local before = tonumber(ARGV[1])
if before <= 0 then
  found = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '-inf', 'WITHSCORES',
                     'LIMIT', 0, limit + 1)
else
  local ties = redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1])
  local all = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES',
                         'LIMIT', 0, limit + 1 + ties)
  found = {}
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < before or all[i] < ARGV[2] then
      found[#found + 1] = all[i]
      found[#found + 1] = all[i + 1]
    end
  end
end
local count = math.min(#found / 2, limit + 1)
local out = {count}
local n = math.min(count, limit)
if n == 0 then
  return out
end
local cids = {}
for i = 1, n do
  cids[i] = found[2 * i - 1]
end
local reads = redis.call('HMGET', KEYS[2], unpack(cids))
for i = 1, n do
  out[#out + 1] = cids[i]
  out[#out + 1] = found[2 * i]
  out[#out + 1] = reads[i] or '0'
end
return out
"""

# One conversation's line, as a function. k: meta, bodies, members, reads;
# the user id, the other user's id ('0' for a group). Appends to `out` head,
# the newest message's body (false if gone), the group's name, the user's
# membership (false: not a member), the other user's read position.
_SUMMARY_FN = """
local function summary(out, k, uid, peer)
  local meta = redis.call('HMGET', k[1], '$head', '$last', '$name')
  local body = false
  if meta[2] then
    body = redis.call('HGET', k[2], meta[2])
  end
  local member = false
  local peer_read = false
  if peer == '0' then
    member = redis.call('HGET', k[3], uid)
  else
    peer_read = redis.call('HGET', k[4], peer)
  end
  out[#out + 1] = tonumber(meta[1]) or 0
  out[#out + 1] = body
  out[#out + 1] = meta[3] or ''
  out[#out + 1] = member
  out[#out + 1] = tonumber(peer_read) or 0
end
"""

# One line, on a cluster (one script per line, pipelined). KEYS: as
# summary's k. ARGV: the user id, the other user's id.
_SUMMARY = _lua(_SUMMARY_FN + "local out = {}\nsummary(out, KEYS, ARGV[1], ARGV[2])\nreturn out")

# Every line of a page in one script, on a standalone Redis (one command
# instead of one per line: the route packs and parses a twentieth). KEYS:
# summary's k of each line. ARGV: the user id, then the other user's id of
# each line.
_SUMMARIES = _lua(
    _SUMMARY_FN
    + """
local out = {}
for i = 2, #ARGV do
  local base = (i - 2) * 4
  summary(out, {KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4]}, ARGV[1], ARGV[i])
end
return out
"""
)

# A page of a conversation's read receipts. KEYS: meta, members, reads.
# ARGV: the caller, '1' for a group, cursor, min position, count. A group's
# caller must be a member ({-2}) and only members are listed. Returns the
# next cursor, head, then user id, position pairs.
_RECEIPTS = _lua("""
local group = ARGV[2] == '1'
if group and not redis.call('HGET', KEYS[2], ARGV[1]) then
  return {-2}
end
local head = tonumber(redis.call('HGET', KEYS[1], '$head')) or 0
local scan = redis.call('HSCAN', KEYS[3], ARGV[3], 'COUNT', ARGV[5])
local out = {scan[1], head}
local least = tonumber(ARGV[4])
local found = scan[2]
for i = 1, #found, 2 do
  local position = tonumber(found[i + 1])
  if position >= least and (not group or redis.call('HEXISTS', KEYS[2], found[i]) == 1) then
    out[#out + 1] = found[i]
    out[#out + 1] = position
  end
end
return out
""")

# One change of a group's record with its event (see Store.apply_group).
# KEYS: meta, log, bodies, members, left, pending (the event's fan-out is
# pending like a message's: see overdue). ARGV: expected version, event id,
# body (time + payload), now_ms, max_messages, max_age_ms, then n and n
# (user id, role) pairs to set, m and m user ids to drop, k and k (field,
# value) pairs of meta. Returns {position, version}, or {0, version} when the
# group is not at the expected version (nothing written). Once the group is
# deleted, its keys expire after the history's max age.
_GROUP_APPLY = _lua(
    _TRIM
    + """
local version = tonumber(redis.call('HGET', KEYS[1], '$ver') or '0')
if version ~= tonumber(ARGV[1]) then
  return {0, version}
end
local position = redis.call('HINCRBY', KEYS[1], '$head', 1)
redis.call('ZADD', KEYS[2], position, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], '$last', ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[2])
local i = 7
local n = tonumber(ARGV[i])
for j = 1, n do
  local uid, role = ARGV[i + 2 * j - 1], ARGV[i + 2 * j]
  local joined = position
  local known = redis.call('HGET', KEYS[4], uid)
  if known then
    joined = string.match(known, '|(%d+)$$')
  end
  redis.call('HSET', KEYS[4], uid, role .. '|' .. joined)
  redis.call('HDEL', KEYS[5], uid)
end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('HDEL', KEYS[4], ARGV[i + j])
  redis.call('HSET', KEYS[5], ARGV[i + j], position)
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
end
redis.call('HSET', KEYS[1], '$ver', version + 1)
trim(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[5]), tonumber(ARGV[4]) - tonumber(ARGV[6]))
if redis.call('HGET', KEYS[1], '$deleted') == '1' then
  -- A deleted group's members may read its history for the retention age;
  -- then its keys go (nothing writes to it any more).
  for _, name in ipairs(KEYS) do
    redis.call('PEXPIRE', name, math.max(1, tonumber(ARGV[6])))
  end
end
return {position, version + 1}
"""
)

# A page of a conversation's history. KEYS: meta, log, bodies[, members,
# left]. ARGV: before (0: the newest), limit, now_ms, max_messages,
# max_age_ms[, reader]. With a group's members and left keys, the reader is
# checked first: a member reads everything kept, a removed one up to their
# removal (`before` clamped to it, head and dropped no higher), anyone else
# gets {-1} (nothing trimmed: a group that does not exist has no members).
# Trims like an append, then returns head, dropped, how many entries are below
# `before` (up to limit + 1), and position1, body1, ... newest first, for the
# first `limit`.
_HISTORY = _lua(
    _TRIM
    + """
local through = nil
if #KEYS >= 5 and redis.call('HEXISTS', KEYS[4], ARGV[6]) == 0 then
  through = tonumber(redis.call('HGET', KEYS[5], ARGV[6]))
  if not through then
    return {-1}
  end
end
trim(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[3]) - tonumber(ARGV[5]))
local limit = tonumber(ARGV[2])
local high = '+inf'
local before = tonumber(ARGV[1])
if through and (before <= 0 or before > through) then
  high = through
elseif before > 0 then
  high = '(' .. ARGV[1]
end
local found = redis.call('ZREVRANGEBYSCORE', KEYS[2], high, '-inf', 'WITHSCORES',
                         'LIMIT', 0, limit + 1)
local meta = redis.call('HMGET', KEYS[1], '$head', '$dropped')
local head, dropped = tonumber(meta[1]) or 0, tonumber(meta[2]) or 0
if through then
  head, dropped = math.min(head, through), math.min(dropped, through)
end
local count = #found / 2
local out = {head, dropped, count}
local ids = {}
for i = 1, math.min(count, limit) do
  ids[i] = found[2 * i - 1]
end
if #ids > 0 then
  local bodies = redis.call('HMGET', KEYS[3], unpack(ids))
  for i = 1, #ids do
    if bodies[i] then
      out[#out + 1] = tonumber(found[2 * i])
      out[#out + 1] = bodies[i]
    end
  end
end
return out
"""
)

# KEYS: inbox meta, inbox, bodies. ARGV: seq, now_ms, id_window_ms. Moves the
# sync cursor to seq (never back) and trims the acked entries (see trim_acked).
# A seq past the head is ignored: the client holds seqs the store lost (a
# crash), and they must not trim the new entries that reuse them.
_ACK_INBOX = _lua(
    _TRIM_ACKED
    + """
local seq = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[1], '$head', '$acked')
if seq > (tonumber(meta[1]) or 0) then
  return 0
end
if seq > (tonumber(meta[2]) or 0) then
  redis.call('HSET', KEYS[1], '$acked', seq)
end
trim_acked(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[2]) - tonumber(ARGV[3]))
return 1
"""
)

# KEYS: account. ARGV: '1' to disable (with the reason) or '0' to enable, reason.
# Returns -1 when there is no account (nothing written: no orphan hash), else
# 1 if it was disabled before, 0 if not.
_SET_DISABLED = _lua("""
if not redis.call('HGET', KEYS[1], '$name') then
  return -1
end
local was = redis.call('HGET', KEYS[1], '$disabled') == '1'
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], '$disabled', '1', '$disabled_reason', ARGV[2])
else
  redis.call('HDEL', KEYS[1], '$disabled', '$disabled_reason')
end
if was then
  return 1
end
return 0
""")

# --- token sessions (revocation) --------------------------------------------------
# KEYS: session, token session (one hash tag). ARGV: sid, ttl_ms.
# Returns 1 if set, 0 if the session is no longer the user's current one.
_SET_TOKEN_SESSION = _lua("""
if redis.call('HGET', KEYS[1], '$sid') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
""")

# KEYS: token session. ARGV: sid. Returns 1 if it was this session and is gone.
_REVOKE_TOKEN_SESSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ttl_ms(ttl: float) -> int:
    # PEXPIRE 0 would delete the key at once; the shortest real TTL is 1 ms.
    return max(1, math.ceil(ttl * 1000))


# Longer than any real bound (about 300,000 years); Lua numbers stay exact.
_FOREVER_MS = 10**16


def _bound_ms(seconds: float) -> int:
    """A retention bound in ms, as a whole number Lua compares exactly."""
    if math.isnan(seconds):
        raise ValueError("a retention bound must be a number")
    return round(max(-_FOREVER_MS, min(_FOREVER_MS, seconds * 1000)))


def _appended(item: InboxItem, row: Sequence[Any]) -> Appended:
    if int(row[0]) == -1:  # the send was claimed before: nothing appended
        # An unreadable claim: go ahead under this attempt's own id.
        earlier = _send_claim(str(item.send), row[1]) or SendClaim(
            item.message_id, None, item.send.digest if item.send else None
        )
        return Appended(0, None, earlier)
    return Appended(int(row[0]), _session(item.user_id, row[1:]))


def _unfinished(flat: Sequence[Any]) -> tuple[Unfinished, ...]:
    """overdue()'s id, position, body triples (a body: time, then payload)."""
    skip = keys.INBOX_TIME_DIGITS
    return tuple(
        Unfinished(_text(flat[i]), int(flat[i + 1]), bytes(flat[i + 2])[skip:])
        for i in range(0, len(flat), 3)
    )


def _stamped() -> tuple[int, bytes]:
    """Now in ms, and as the zero-padded time that starts every stored body
    and pointer entry (retention reads it back)."""
    now = _now_ms()
    return now, b"%0*d" % (keys.INBOX_TIME_DIGITS, now)


def _claim_value(tag: bytes, send: SendKey, body: bytes) -> bytes:
    """A send key's value: its tag, the digest (a length byte, then the
    digest), then the message id or the result."""
    if len(send.digest) > 255:
        raise ValueError("a send digest is at most 255 bytes")
    return tag + bytes((len(send.digest),)) + send.digest + body


def _send_claim(name: str, found: Any) -> SendClaim | None:
    """What a send's key held (see cim.store.keys): the message id while the
    send runs, its result once finished, each with the send's digest (None
    for a key written before digests); None if it was free."""
    if found is None:
        return None
    value = found if isinstance(found, bytes) else str(found).encode()
    tag, rest = value[:1], value[1:]
    if tag in (keys.SEND_RUNNING, keys.SEND_FINISHED) and rest:
        size = rest[0]
        digest, body = rest[1 : 1 + size], rest[1 + size :]
        if len(digest) == size:
            if tag == keys.SEND_FINISHED:
                return SendClaim("", body, digest)
            if body:
                return SendClaim(body.decode(), None, digest)
    elif tag == keys.SEND_FINISHED_UNHASHED:
        return SendClaim("", rest)
    elif tag == keys.SEND_RUNNING_UNHASHED and rest:
        return SendClaim(rest.decode(), None)
    # Only a key written behind the store's back gets here: never hand out
    # an empty message id, let this attempt go ahead.
    log.warning("unreadable send claim %r: ignoring it", name)
    return None


def _history_page(flat: Sequence[Any], limit: int) -> HistoryPage:
    """A page of history from what the history script returned."""
    skip = keys.INBOX_TIME_DIGITS
    entries = [
        HistoryEntry(int(flat[i]), bytes(flat[i + 1])[skip:]) for i in range(3, len(flat), 2)
    ]
    return HistoryPage(entries, int(flat[0]), int(flat[1]), more=int(flat[2]) > max(limit, 0))


def _peer(conversation_id: str, user_id: int) -> int:
    """The other user of a private conversation (0 for a group)."""
    if not conversation_id.startswith("p:"):
        return 0
    low, high = (int(part) for part in conversation_id[2:].split(":"))
    return high if user_id == low else low


def _session(user_id: int, fields: Sequence[Any] | None) -> SessionRecord | None:
    if not fields or fields[0] is None:
        return None
    return SessionRecord(
        user_id=user_id,
        session_id=_text(fields[0]),
        server_id=_text(fields[1]),
        device_id=_text(fields[2]),
        connected=_text(fields[3]) == "1",
    )


def _account(user_id: int, fields: Sequence[Any] | None) -> Account | None:
    """An account from HMGET of keys.ACCOUNT_FIELDS (one written before the
    disabled flag has neither of its fields: enabled)."""
    if not fields or fields[0] is None or fields[1] is None:
        return None
    disabled = len(fields) > 2 and _text(fields[2]) == "1"
    reason = _text(fields[3]) if disabled and len(fields) > 3 else ""
    return Account(user_id, _text(fields[0]), _text(fields[1]), disabled, reason)


class RedisStore:
    """A ``Store`` on a ``redis.asyncio.Redis`` or ``RedisCluster`` client.

    The client must return bytes (``decode_responses=False``): inbox payloads
    are binary. The store owns the client and closes it in :meth:`aclose`.
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str = keys.DEFAULT_PREFIX,
        *,
        timeout: float = 5.0,
        chunk_size: int = 1000,
        max_in_flight: int = 100,
    ) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStore needs a client with decode_responses=False")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._client = client
        self._keys = KeyLayout(prefix)
        self._timeout = timeout
        self._chunk_size = chunk_size
        # redis-py's async cluster client must be initialized before concurrent
        # use: commands racing its lazy first initialize share a connection.
        self._cluster_ready = not isinstance(client, RedisCluster)
        self._init_lock = asyncio.Lock()
        # Calls beyond the connection pool wait here instead of failing with
        # "Too many connections": each call holds at most one connection per node.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._claim = client.register_script(_CLAIM)
        self._mark_connected = client.register_script(_MARK_CONNECTED)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._drop_from_index = client.register_script(_DROP_FROM_INDEX)
        self._delete_name_if = client.register_script(_DELETE_NAME_IF)
        self._claim_name_keys = client.register_script(_CLAIM_NAME_KEYS)
        self._move_name_keys = client.register_script(_MOVE_NAME_KEYS)
        self._index_names = client.register_script(_INDEX_NAMES)
        self._set_disabled = client.register_script(_SET_DISABLED)
        self._set_token_session = client.register_script(_SET_TOKEN_SESSION)
        self._revoke_token_session = client.register_script(_REVOKE_TOKEN_SESSION)
        self._append_inbox = client.register_script(_APPEND_INBOX)
        self._read_inbox = client.register_script(_READ_INBOX)
        self._ack_inbox = client.register_script(_ACK_INBOX)
        self._conv_append = client.register_script(_CONV_APPEND)
        self._pointers = client.register_script(_POINTERS)
        self._conv_point = client.register_script(_CONV_POINT)
        self._sender = client.register_script(_SENDER)
        self._read_conv = client.register_script(_READ_CONV)
        self._read_user = client.register_script(_READ_USER)
        self._mark_read = client.register_script(_MARK_READ)
        self._list_page = client.register_script(_LIST_PAGE)
        self._summary = client.register_script(_SUMMARY)
        self._summaries = client.register_script(_SUMMARIES)
        self._receipts = client.register_script(_RECEIPTS)
        self._history = client.register_script(_HISTORY)
        self._group_apply = client.register_script(_GROUP_APPLY)
        self._set_all = client.register_script(_SET_ALL)
        # Scripts queued in pipelines: redis-py loads them only for direct calls.
        self._pipelined = (
            self._claim,
            self._mark_connected,
            self._refresh,
            self._append_inbox,
            self._ack_inbox,
            self._conv_append,
            self._pointers,
            self._conv_point,
            self._sender,
            self._read_conv,
            self._read_user,
            self._mark_read,
            self._summary,
            self._summaries,
            self._set_all,
        )
        # The store's conversations mark (see conversations_since), once read.
        self._since: float | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = keys.DEFAULT_PREFIX,
        cluster: bool | None = None,
        *,
        timeout: float = 5.0,
        socket_timeout: float = 2.0,
        max_connections: int = 100,
    ) -> RedisStore:
        """A store on a new client for ``url``: ``redis://``, ``rediss://``, ``unix://``,
        or ``redis+cluster://`` (``rediss+cluster://``) for a Redis Cluster.

        ``timeout`` bounds each store call, ``socket_timeout`` each connect and
        read; ``max_connections`` is the pool size (per node on a cluster)."""
        KeyLayout(prefix)  # a bad prefix fails before a client exists
        scheme = urlsplit(url).scheme
        if scheme in CLUSTER_SCHEMES:
            if cluster is False:
                raise ValueError(f"{url!r} names a Redis Cluster, but cluster=False was given")
            url = CLUSTER_SCHEMES[scheme] + url[len(scheme) :]
            cluster = True
        if cluster and scheme == "unix":
            raise ValueError("a Redis Cluster cannot be reached over a unix socket")
        # Fail fast while Redis is down: one quick retry (it replaces a pooled
        # connection a Redis restart killed), then the caller gets Unavailable.
        # The cluster client gets one more, to re-learn the topology after a failover.
        backoff = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
        client: RedisClient
        if cluster:
            client = RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(backoff, retries=2),
                max_connections=max_connections,
            )
        else:
            client = Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(backoff, retries=1),
                max_connections=max_connections,
            )
        return cls(client, prefix, timeout=timeout, max_in_flight=max_connections)

    @property
    def client(self) -> RedisClient:
        return self._client

    @property
    def keys(self) -> KeyLayout:
        return self._keys

    # --- the one seam where Redis failures become Unavailable --------------
    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout), self._in_flight:
                if not self._cluster_ready:
                    await self._initialize_cluster()
                yield
        except TimeoutError as exc:  # our deadline, not a socket timeout
            raise Unavailable(
                f"store unavailable: no answer from Redis within {self._timeout:g} s"
            ) from exc
        except _CAUGHT as exc:
            if not _is_outage(exc):
                raise
            log.debug("redis call failed: %r", exc)
            if isinstance(self._client, RedisCluster):
                # The client re-learns the topology on its next call: let one
                # call do that alone (see _initialize_cluster).
                self._cluster_ready = False
            raise Unavailable(f"store unavailable: {exc or type(exc).__name__}") from exc

    async def _initialize_cluster(self) -> None:
        async with self._init_lock:
            if not self._cluster_ready and isinstance(self._client, RedisCluster):
                await self._client.initialize()
            self._cluster_ready = True

    async def _pipeline(self, build: Callable[[_Pipe], object]) -> list[Any]:
        """Runs the commands ``build`` queues, non-transactionally, in one round
        trip per node; reloads the scripts once if Redis lost them (a restart)."""
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            try:
                return list(await pipe.execute())
            except NoScriptError:
                # Every pipelined script is idempotent, so running the batch again is safe.
                if attempt:
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    async def _load_scripts(self) -> None:
        for script in self._pipelined:
            # On a cluster, SCRIPT LOAD goes to every primary.
            await self._client.script_load(script.script)

    @staticmethod
    def _queue(
        pipe: _Pipe, script: AsyncScript, key_names: Sequence[str], args: Sequence[Any]
    ) -> None:
        # The raw command: the cluster pipeline blocks its evalsha() method
        # (over NOSCRIPT handling; _pipeline deals with that), not EVALSHA itself.
        pipe.execute_command("EVALSHA", script.sha, len(key_names), *key_names, *args)

    # --- accounts ---------------------------------------------------------
    async def create_account(
        self, user_name: str, password_hash: str, name_keys: Collection[str] = ()
    ) -> tuple[Account, bool]:
        # Allocate id -> write account -> claim the name keys (one script, all
        # or none: this decides between look-alikes) -> claim the exact name.
        # Until its name keys point at it, an account is unreachable, so a
        # crash before that leaves only an orphan that a retry does not trip
        # over; a crash after it, an account whose exact name the next
        # registration of that name completes (see _name_key_holder).
        alike = [self._keys.name_key(key) for key in sorted(set(name_keys))]
        async with self._guard():
            for _ in range(3):
                user_id = int(await self._client.incr(self._keys.user_id_counter))
                account = Account(user_id, user_name, password_hash)
                await self._client.hset(
                    self._keys.account(user_id),
                    mapping={
                        keys.ACCOUNT_NAME: user_name,
                        keys.ACCOUNT_PASSWORD_HASH: password_hash,
                    },
                )
                if alike:
                    holder = await self._claim_name_keys(keys=alike, args=[user_id])
                    if holder is not None:
                        await self._discard_orphan(user_id)
                        found = await self._name_key_holder(int(holder), user_name, alike)
                        if found is not None:
                            return found, False
                        continue
                previous = await self._client.set(
                    self._keys.name(user_name), user_id, nx=True, get=True
                )
                # Our own id: a registration of the same name found our name
                # keys and completed the exact name for us.
                if previous is None or int(previous) == user_id:
                    return account, True
                # An account of this exact name from before name keys (or a
                # racing registration without them): it keeps the name, and
                # the name keys go to it.
                winner = await self._account_by_name(user_name)
                if alike:
                    await self._move_name_keys(
                        keys=alike, args=[user_id, "" if winner is None else winner.user_id]
                    )
                await self._discard_orphan(user_id)
                if winner is not None:
                    return winner, False
            raise Unavailable(f"store unavailable: cannot claim user name {user_name!r}")

    async def _name_key_holder(
        self, holder_id: int, user_name: str, alike: Sequence[str]
    ) -> Account | None:
        """The account holding one of a new name's keys: a look-alike, or the
        account of the same exact name (whose registration is finished here
        if it stopped before claiming the exact name). None if the key was
        held by nobody real and was freed: try again."""
        holder = await self._get_account(holder_id)
        if holder is None:
            # Only an account deleted behind our back gets here (the keys
            # are claimed after the account is written).
            log.warning("name keys point at missing account %s: freeing them", holder_id)
            await self._move_name_keys(keys=list(alike), args=[holder_id, ""])
            return None
        if holder.user_name != user_name:
            return holder
        previous = await self._client.set(self._keys.name(user_name), holder_id, nx=True, get=True)
        if previous is None or int(previous) == holder_id:
            return holder
        return await self._account_by_name(user_name)

    async def index_names(self, keys_of: Callable[[str], Collection[str]]) -> int:
        # Walks the user ids up to the counter, from the mark a previous walk
        # left, a chunk at a time: read the accounts, keep those their exact
        # name points at (an orphan never got a name), give each of their
        # keys to them unless someone holds it, and raise the mark. Several
        # routes walking at once only repeat each other's work.
        def marks(pipe: _Pipe) -> None:
            pipe.get(self._keys.user_id_counter)
            pipe.get(self._keys.names_indexed_through)

        async with self._guard():
            top_raw, mark_raw = await self._pipeline(marks)
        top, start = int(top_raw or 0), int(mark_raw or 0)
        added = 0
        while start < top:
            end = min(start + self._chunk_size, top)
            async with self._guard():
                named = await self._committed_names(range(start + 1, end + 1))
            name_keys: list[str] = []
            holders: list[int] = []
            for user_id, user_name in named:
                for key in sorted(set(keys_of(user_name))):
                    name_keys.append(self._keys.name_key(key))
                    holders.append(user_id)
            async with self._guard():
                added += int(
                    await self._index_names(
                        keys=[*name_keys, self._keys.names_indexed_through], args=[*holders, end]
                    )
                )
            start = end
        return added

    async def _committed_names(self, user_ids: Sequence[int]) -> list[tuple[int, str]]:
        """(user id, name) of each of the accounts whose exact name points at
        them (an orphan never got its name)."""

        def read_names(pipe: _Pipe) -> None:
            for user_id in user_ids:
                pipe.hget(self._keys.account(user_id), keys.ACCOUNT_NAME)

        names = await self._pipeline(read_names)
        found = zip(user_ids, names, strict=True)
        named = [(uid, _text(name)) for uid, name in found if name is not None]
        if not named:
            return []

        def read_owners(pipe: _Pipe) -> None:
            for _, user_name in named:
                pipe.get(self._keys.name(user_name))

        owners = await self._pipeline(read_owners)
        return [
            (uid, user_name)
            for (uid, user_name), owner in zip(named, owners, strict=True)
            if owner is not None and int(owner) == uid
        ]

    async def _discard_orphan(self, user_id: int) -> None:
        try:
            await self._client.delete(self._keys.account(user_id))
        except _DOWN_ERRORS as exc:  # best effort: the orphan is unreachable anyway
            log.warning("could not delete orphan account %s: %s", user_id, exc)

    async def _account_by_name(self, user_name: str) -> Account | None:
        """The account the name points at; repairs an entry pointing at nothing."""
        name_key = self._keys.name(user_name)
        raw_id = await self._client.get(name_key)
        if raw_id is None:
            return None
        user_id = int(raw_id)
        account = await self._get_account(user_id)
        if account is None or account.user_name != user_name:
            # Only an account deleted behind our back gets here (the name is
            # claimed after the account is written): free the name.
            log.warning("name %r points at missing account %s: freeing it", user_name, user_id)
            await self._delete_name_if(keys=[name_key], args=[user_id])
            return None
        return account

    async def _get_account(self, user_id: int) -> Account | None:
        fields = await self._client.hmget(self._keys.account(user_id), keys.ACCOUNT_FIELDS)
        return _account(user_id, fields)

    async def get_account(self, user_id: int) -> Account | None:
        async with self._guard():
            return await self._get_account(user_id)

    async def get_account_by_name(self, user_name: str) -> Account | None:
        async with self._guard():
            return await self._account_by_name(user_name)

    async def get_accounts(self, user_ids: Sequence[int]) -> dict[int, Account]:
        wanted = list(dict.fromkeys(user_ids))
        if not wanted:
            return {}

        def build(pipe: _Pipe) -> None:
            for user_id in wanted:
                pipe.hmget(self._keys.account(user_id), keys.ACCOUNT_FIELDS)

        async with self._guard():
            results = await self._pipeline(build)
        found = {uid: _account(uid, row) for uid, row in zip(wanted, results, strict=True)}
        return {uid: account for uid, account in found.items() if account is not None}

    async def set_account_disabled(
        self, user_id: int, disabled: bool, reason: str = ""
    ) -> bool | None:
        async with self._guard():
            was = await self._set_disabled(
                keys=[self._keys.account(user_id)], args=["1" if disabled else "0", reason]
            )
        return None if int(was) < 0 else bool(int(was))

    # --- sessions ---------------------------------------------------------
    async def claim_session(
        self,
        record: SessionRecord,
        ttl: float,
        replace_session_id: str | None = None,
        *,
        pending_only: bool = False,
    ) -> SessionRecord | None:
        ttl_ms = _ttl_ms(ttl)
        expiry = _now_ms() + ttl_ms if record.connected else None
        args = [
            record.session_id,
            record.server_id,
            record.device_id,
            "1" if record.connected else "0",
            ttl_ms,
            "" if expiry is None else expiry,
            "0" if replace_session_id is None else "1",
            replace_session_id or "",
            "1" if pending_only else "0",
        ]

        def build(pipe: _Pipe) -> None:
            self._queue(pipe, self._claim, [self._keys.session(record.user_id)], args)
            if expiry is not None:
                pipe.zadd(self._keys.online, {str(record.user_id): expiry}, gt=True)

        async with self._guard():
            results = await self._pipeline(build)
        return _session(record.user_id, results[0])

    async def get_session(self, user_id: int) -> SessionRecord | None:
        async with self._guard():
            fields = await self._client.hmget(self._keys.session(user_id), keys.SESSION_FIELDS)
        return _session(user_id, fields)

    async def get_sessions(self, user_ids: Sequence[int]) -> list[SessionRecord | None]:
        if not user_ids:
            return []
        async with self._guard():
            return await self._read_sessions(user_ids)

    async def _read_sessions(self, user_ids: Sequence[int]) -> list[SessionRecord | None]:
        def build(pipe: _Pipe) -> None:
            for user_id in user_ids:
                pipe.hmget(self._keys.session(user_id), keys.SESSION_FIELDS)

        results = await self._pipeline(build)
        return [_session(uid, row) for uid, row in zip(user_ids, results, strict=True)]

    async def mark_connected(
        self, user_id: int, session_id: str, server_id: str, ttl: float
    ) -> SessionRecord | None:
        ttl_ms = _ttl_ms(ttl)
        expiry = _now_ms() + ttl_ms

        def build(pipe: _Pipe) -> None:
            self._queue(
                pipe,
                self._mark_connected,
                [self._keys.session(user_id)],
                [session_id, server_id, ttl_ms, expiry],
            )
            # Unconditional (one round trip): an entry for a session that lost
            # the race is harmless, the walk checks the session itself.
            pipe.zadd(self._keys.online, {str(user_id): expiry}, gt=True)

        async with self._guard():
            results = await self._pipeline(build)
        row = results[0]
        if row is None:
            return None
        return SessionRecord(user_id, _text(row[0]), _text(row[1]), _text(row[2]), True)

    async def refresh_sessions(self, sessions: Sequence[tuple[int, str]], ttl: float) -> list[bool]:
        if not sessions:
            return []
        ttl_ms = _ttl_ms(ttl)
        expiry = _now_ms() + ttl_ms

        def build(pipe: _Pipe) -> None:
            for user_id, session_id in sessions:
                self._queue(
                    pipe, self._refresh, [self._keys.session(user_id)], [session_id, ttl_ms, expiry]
                )
            # GT: an index score only grows, so it never falls below the expiry
            # of a live session, whichever refresh lands last.
            pipe.zadd(self._keys.online, {str(uid): expiry for uid, _ in sessions}, gt=True)

        async with self._guard():
            results = await self._pipeline(build)
        return [bool(flag) for flag in results[: len(sessions)]]

    async def release_session(
        self, user_id: int, session_id: str, server_id: str | None = None
    ) -> bool:
        args = [session_id, "0" if server_id is None else "1", server_id or ""]
        async with self._guard():
            indexed = await self._release(keys=[self._keys.session(user_id)], args=args)
            if indexed is None:
                return False
            if indexed:
                # Only while the entry still holds this session's expiry: a
                # newer session of the user has pushed it forward.
                await self._drop_from_index(
                    keys=[self._keys.online], args=[str(user_id), _text(indexed)]
                )
        return True

    async def online_sessions(self) -> AsyncGenerator[SessionRecord, None]:
        # ZSCAN walks the index a chunk at a time (it may repeat a member while
        # the set is rehashed: `seen` keeps each user once). The session key is
        # the truth, the index only says where to look; entries that point at
        # nothing are dropped on the way, each only while its score is still
        # the one seen (a newer session of the user raises it).
        seen: set[int] = set()
        cursor = 0
        while True:
            async with self._guard():
                cursor, entries = await self._client.zscan(
                    self._keys.online, cursor, count=self._chunk_size
                )
            now = _now_ms()
            stale: list[tuple[int, float]] = []
            candidates: list[tuple[int, float]] = []
            for member, raw_score in entries:
                user_id, score = int(member), float(raw_score)
                if score < now:  # past the expiry of every session that wrote it
                    stale.append((user_id, score))
                elif user_id not in seen:
                    seen.add(user_id)
                    candidates.append((user_id, score))
            connected: list[SessionRecord] = []
            if candidates:
                async with self._guard():
                    records = await self._read_sessions([uid for uid, _ in candidates])
                for (user_id, score), record in zip(candidates, records, strict=True):
                    if record is not None and record.connected:
                        connected.append(record)
                    else:
                        stale.append((user_id, score))
            if stale:
                args = [str(part) for user_id, score in stale for part in (user_id, int(score))]
                async with self._guard():
                    await self._drop_from_index(keys=[self._keys.online], args=args)
            for record in connected:
                yield record
            if cursor == 0:
                return

    # --- inboxes ---------------------------------------------------------
    def _inbox_keys(self, user_id: int) -> list[str]:
        return [
            self._keys.inbox_meta(user_id),
            self._keys.inbox(user_id),
            self._keys.inbox_bodies(user_id),
        ]

    async def append_inbox(
        self, items: Sequence[InboxItem], retention: Retention
    ) -> list[Appended]:
        if not items:
            return []
        now, stamp = _stamped()
        bounds = [
            retention.max_messages,
            _bound_ms(retention.max_age),
            _bound_ms(retention.id_window),
        ]

        def build(pipe: _Pipe) -> None:
            # One script per item, all in one round trip (per node); a user's
            # items keep their order, so they get their seqs in that order.
            for item in items:
                uid = item.user_id
                names = [
                    *self._inbox_keys(uid),
                    self._keys.inbox_ids(uid),
                    self._keys.inbox_id_seqs(uid),
                    self._keys.session(uid),
                ]
                args = [item.message_id, stamp + item.payload, now, *bounds]
                if item.send is not None:
                    if item.send.owner_id != uid:
                        raise ValueError("an append claims only sends its receiver owns")
                    names.append(self._sent_key(item.send))
                    args.append(
                        _claim_value(keys.SEND_RUNNING, item.send, item.message_id.encode())
                    )
                self._queue(pipe, self._append_inbox, names, args)

        async with self._guard():
            # Rerunning the batch after a NOSCRIPT is safe: a message id already
            # appended gets its seq back (one that claimed its send finds its
            # own claim, and its caller appends it again under that id).
            rows = await self._pipeline(build)
        return [_appended(item, row) for item, row in zip(items, rows, strict=True)]

    async def read_inbox(
        self, user_id: int, after_seq: int, limit: int, retention: Retention
    ) -> InboxPage:
        limit = max(limit, 0)
        while True:
            page, last_seq = await self._read_inbox_page(user_id, after_seq, limit, retention)
            # A page whose every pointer lost its body would leave a replay's
            # cursor where it was: read on past it instead.
            if page.entries or not page.more or limit == 0:
                return page
            after_seq = last_seq

    async def _read_inbox_page(
        self, user_id: int, after_seq: int, limit: int, retention: Retention
    ) -> tuple[InboxPage, int]:
        """A page, pointers resolved (two round trips), and the last seq it read."""
        args = [
            after_seq,
            limit,
            _now_ms(),
            retention.max_messages,
            _bound_ms(retention.max_age),
        ]
        async with self._guard():
            flat = await self._read_inbox(keys=self._inbox_keys(user_id), args=args)
            skip = keys.INBOX_TIME_DIGITS
            rows = [(int(flat[i]), bytes(flat[i + 1])[skip:]) for i in range(3, len(flat), 2)]
            pointers = [(seq, keys.parse_pointer(entry)) for seq, entry in rows]
            bodies = await self._resolve([where for _, where in pointers if where is not None])
        entries = []
        for (seq, entry), (_, where) in zip(rows, pointers, strict=True):
            if where is None:
                entries.append(InboxEntry(seq, entry))
                continue
            body = bodies.get((where[0], where[2]))
            if body is not None:  # else the conversation's retention dropped it
                entries.append(InboxEntry(seq, body, where[0], where[1]))
        page = InboxPage(entries, int(flat[0]), int(flat[1]), more=int(flat[2]) > limit)
        return page, rows[-1][0] if rows else after_seq

    async def _resolve(
        self, pointers: Sequence[tuple[str, int, str]]
    ) -> dict[tuple[str, str], bytes]:
        """The bodies of pointers, by (conversation id, message id): one HMGET
        per conversation, all in one round trip (per node)."""
        if not pointers:
            return {}
        wanted: dict[str, list[str]] = {}
        for conversation_id, _, message_id in pointers:
            wanted.setdefault(conversation_id, []).append(message_id)

        def build(pipe: _Pipe) -> None:
            for conversation_id, message_ids in wanted.items():
                pipe.hmget(self._keys.conversation_bodies(conversation_id), message_ids)

        found = await self._pipeline(build)
        skip = keys.INBOX_TIME_DIGITS
        bodies = {}
        for (conversation_id, message_ids), values in zip(wanted.items(), found, strict=True):
            for message_id, value in zip(message_ids, values, strict=True):
                if value is not None:
                    bodies[(conversation_id, message_id)] = bytes(value)[skip:]
        return bodies

    async def ack_inbox(
        self, acks: Sequence[tuple[int, int]], retention: Retention | None = None
    ) -> None:
        # Each ack on its own, in order (one past the head is ignored, so the
        # highest of a user's acks is not always the one that counts).
        if not acks:
            return

        now = _now_ms()
        window = _bound_ms((retention or Retention()).id_window)

        def build(pipe: _Pipe) -> None:
            for user_id, seq in acks:
                self._queue(pipe, self._ack_inbox, self._inbox_keys(user_id), [seq, now, window])

        async with self._guard():
            await self._pipeline(build)

    # --- conversations ----------------------------------------------------
    def _conversation_keys(self, conversation_id: str) -> list[str]:
        return [
            self._keys.conversation_meta(conversation_id),
            self._keys.conversation_log(conversation_id),
            self._keys.conversation_bodies(conversation_id),
        ]

    def _conversation_call(
        self, item: ConversationItem, now: int, stamp: bytes, retention: Retention
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of conv_append for one item."""
        cid = item.conversation_id
        names = [
            *self._conversation_keys(cid),
            self._keys.conversation_members(cid),
            self._keys.conversation_pending(cid),
        ]
        claim = self._conversation_claim(item, names)
        args = [
            item.message_id,
            stamp + item.payload,
            now,
            retention.history_max_messages,
            _bound_ms(retention.history_max_age),
            _bound_ms(retention.id_window),
            claim,
            item.group_sender,
            item.known_version,
            _bound_ms(retention.repair_after),
        ]
        return names, args

    def _conversation_claim(self, item: ConversationItem, names: list[str]) -> bytes:
        """The claim value of the send an append carries (b"": none), its key
        added to ``names``."""
        if item.send is None:
            return b""
        if item.send.conversation != item.conversation_id:
            raise ValueError("an append claims only its own conversation's sends")
        names.append(self._sent_key(item.send))
        return _claim_value(keys.SEND_RUNNING, item.send, item.message_id.encode())

    @staticmethod
    def _conversation_appended(item: ConversationItem, row: Sequence[Any]) -> ConversationAppended:
        first = int(row[0])
        if first == -1:
            earlier = _send_claim(str(item.send), row[1]) or SendClaim(
                item.message_id, None, item.send.digest if item.send else None
            )
            return ConversationAppended(0, earlier)
        if first < 0:
            refused = NOT_A_MEMBER if first == -2 else GROUP_DELETED
            return ConversationAppended(0, refused=refused)
        unfinished = _unfinished(row[1])
        if item.group_sender:
            version = int(row[2])
            members = (
                None
                if version == item.known_version
                else tuple(sorted(int(uid) for uid in row[3:]))
            )
            return ConversationAppended(first, None, version, members, "", unfinished)
        return ConversationAppended(first, unfinished=unfinished)

    def _pointer_keys(self, user_id: int) -> list[str]:
        return [
            *self._inbox_keys(user_id),
            self._keys.inbox_ids(user_id),
            self._keys.inbox_id_seqs(user_id),
            self._keys.session(user_id),
            self._keys.conversation_list(user_id),
        ]

    def _sender_keys(self, user_id: int) -> list[str]:
        return [self._keys.conversation_list(user_id), self._keys.read_cursors(user_id)]

    async def append_conversations(
        self, items: Sequence[ConversationItem], retention: Retention
    ) -> list[ConversationAppended]:
        if not items:
            return []
        now, stamp = _stamped()

        def build(pipe: _Pipe) -> None:
            # One script per item in one round trip (per node): the items of
            # one conversation keep their order, so their positions do too.
            for item in items:
                names, args = self._conversation_call(item, now, stamp, retention)
                self._queue(pipe, self._conv_append, names, args)

        async with self._guard():
            # Safe to rerun after a NOSCRIPT: a message id in the log gets its
            # position back; one that claimed its send finds its own claim.
            rows = await self._pipeline(build)
        return [
            self._conversation_appended(item, row) for item, row in zip(items, rows, strict=True)
        ]

    async def append_pointers(
        self,
        items: Sequence[PointerItem],
        retention: Retention,
        senders: Sequence[OwnSend] = (),
    ) -> list[Appended]:
        if not items and not senders:
            return []
        now, stamp = _stamped()
        bounds = [
            retention.max_messages,
            _bound_ms(retention.max_age),
            _bound_ms(retention.id_window),
        ]

        def build(pipe: _Pipe) -> None:
            for item in items:
                entry = keys.pointer(item.conversation_id, item.position, item.message_id)
                self._queue(
                    pipe,
                    self._pointers,
                    self._pointer_keys(item.user_id),
                    [item.message_id, stamp + entry, now, *bounds, item.conversation_id],
                )
            # The senders' sides ride in the same round trip (their own slots).
            for own in senders:
                self._queue(
                    pipe,
                    self._sender,
                    self._sender_keys(own.user_id),
                    [own.conversation_id, now, own.position],
                )

        async with self._guard():
            rows = await self._pipeline(build)  # idempotent by message id: safe to rerun
        return [
            Appended(int(row[0]), _session(item.user_id, row[1:]))
            for item, row in zip(items, rows[: len(items)], strict=True)
        ]

    @property
    def clustered(self) -> bool:
        """On a Redis Cluster (keys of different hash tags on different nodes)."""
        return isinstance(self._client, RedisCluster)

    async def append_pointed(
        self, items: Sequence[PointedItem], retention: Retention
    ) -> list[PointedAppended]:
        if not items:
            return []
        if self.clustered:
            # The conversation's and the receiver's keys live on different
            # nodes: the two round trips, each one pipeline per node.
            return await append_then_point(self, items, retention)
        now, stamp = _stamped()
        shared = [
            now,
            retention.history_max_messages,
            _bound_ms(retention.history_max_age),
            _bound_ms(retention.id_window),
            retention.max_messages,
            _bound_ms(retention.max_age),
            _bound_ms(retention.repair_after),
            stamp,
        ]
        calls = []
        for first in range(0, len(items), _POINTED_PER_CALL):
            names: list[str] = []
            args: list[Any] = list(shared)
            for item in items[first : first + _POINTED_PER_CALL]:
                conversation = item.conversation
                cid = conversation.conversation_id
                sender = item.sender_id or item.receiver_id  # keys either way; '0': unused
                names += self._pointer_keys(item.receiver_id)
                names += self._conversation_keys(cid)
                names += (
                    self._keys.conversation_members(cid),
                    self._keys.conversation_pending(cid),
                    *self._sender_keys(sender),
                )
                claim = self._conversation_claim(conversation, names)
                args += (
                    15 if claim else 14,
                    conversation.message_id,
                    stamp + conversation.payload,
                    claim,
                    cid,
                    _FLAGS[bool(item.sender_id), item.fresh],
                )
            calls.append((names, args))

        def build(pipe: _Pipe) -> None:
            # One script per chunk of items, both steps, in one round trip:
            # on one node a script may touch the conversations' and the
            # receivers' keys.
            for names, args in calls:
                self._queue(pipe, self._conv_point, names, args)

        async with self._guard():
            replies = await self._pipeline(build)  # both steps idempotent by message id
        rows = [row for reply in replies for row in reply]
        out = []
        for item, row in zip(items, rows, strict=True):
            stored = self._conversation_appended(item.conversation, row)
            if stored.position <= 0:
                out.append(PointedAppended(stored, None))
                continue
            pointer = Appended(int(row[2]), _session(item.receiver_id, row[3:]))
            out.append(PointedAppended(stored, pointer, settled=True))
        return out

    # --- conversation lists, read cursors, receipts ---------------------------
    async def list_conversations(
        self, user_id: int, before_ms: int, before_id: str, limit: int
    ) -> ConversationPage:
        limit = max(limit, 0)
        names = [self._keys.conversation_list(user_id), self._keys.read_cursors(user_id)]
        async with self._guard():
            flat = await self._list_page(keys=names, args=[before_ms, before_id, limit])
        found = int(flat[0])
        page = [
            (_text(flat[i]), int(float(flat[i + 1])), int(flat[i + 2]))
            for i in range(1, len(flat), 3)
        ]
        if not page:
            return ConversationPage([], more=found > limit)
        peers = [_peer(cid, user_id) for cid, _, _ in page]
        line_keys = [
            [
                self._keys.conversation_meta(cid),
                self._keys.conversation_bodies(cid),
                self._keys.conversation_members(cid),
                self._keys.conversation_reads(cid),
            ]
            for cid, _, _ in page
        ]
        cluster = isinstance(self._client, RedisCluster)

        def build(pipe: _Pipe) -> None:
            if cluster:  # each line on its conversation's node, all in one round trip
                for names, peer in zip(line_keys, peers, strict=True):
                    self._queue(pipe, self._summary, names, [user_id, peer])
            else:  # one node: one script for the page
                every = [name for names in line_keys for name in names]
                self._queue(pipe, self._summaries, every, [user_id, *peers])

        async with self._guard():
            replies = await self._pipeline(build)
        flat = [value for reply in replies for value in reply]
        rows = [flat[i : i + 5] for i in range(0, len(flat), 5)]
        lines, stale = [], []
        skip = keys.INBOX_TIME_DIGITS
        for (cid, activity, read), peer, row in zip(page, peers, rows, strict=True):
            head, body = int(row[0]), row[1]
            line = ConversationLine(
                cid, activity, read, head, None if body is None else bytes(body)[skip:]
            )
            if peer:
                lines.append(replace(line, peer_read=int(row[4])))
            elif row[3] is None:
                stale.append(cid)  # a group they left or were removed from
            else:
                joined = int(_text(row[3]).rsplit("|", 1)[1])
                lines.append(replace(line, group_name=_text(row[2]), joined=joined))
        if stale:
            async with self._guard():
                await self._client.zrem(self._keys.conversation_list(user_id), *stale)
        return ConversationPage(lines, more=found > limit)

    async def mark_read(self, marks: Sequence[ReadMark]) -> list[ReadMarked]:
        if not marks:
            return []
        if isinstance(self._client, RedisCluster):
            return await self._mark_read_in_two(marks)

        def build(pipe: _Pipe) -> None:
            # One script per mark (the conversation's keys and the user's on
            # one node), the sessions to notify beside them.
            for mark in marks:
                self._queue(
                    pipe,
                    self._mark_read,
                    [*self._read_conv_keys(mark), self._keys.read_cursors(mark.user_id)],
                    [mark.user_id, mark.position, "1" if mark.group else "0", mark.conversation_id],
                )
            for mark in marks:
                if mark.notify_id:
                    pipe.hmget(self._keys.session(mark.notify_id), keys.SESSION_FIELDS)

        async with self._guard():
            rows = await self._pipeline(build)  # raising twice is raising once: safe to rerun
        sessions = iter(rows[len(marks) :])
        done = []
        for mark, row in zip(marks, rows, strict=False):
            session = _session(mark.notify_id, next(sessions)) if mark.notify_id else None
            if int(row[0]) < 0:
                done.append(ReadMarked(refused=True))
                continue
            cursor, head, moved, joined, capped = (int(v) for v in row)
            done.append(ReadMarked(cursor, head, capped if moved else 0, joined, session=session))
        return done

    def _read_conv_keys(self, mark: ReadMark) -> list[str]:
        cid = mark.conversation_id
        return [
            self._keys.conversation_meta(cid),
            self._keys.conversation_members(cid),
            self._keys.conversation_reads(cid),
        ]

    async def _mark_read_in_two(self, marks: Sequence[ReadMark]) -> list[ReadMarked]:
        """On a cluster: the conversations' side (membership, cap, receipt),
        then the users' cursors with the sessions to notify."""

        def conversations(pipe: _Pipe) -> None:
            for mark in marks:
                self._queue(
                    pipe,
                    self._read_conv,
                    self._read_conv_keys(mark),
                    [mark.user_id, mark.position, "1" if mark.group else "0"],
                )

        async with self._guard():
            sides = await self._pipeline(conversations)
        accepted = [
            (mark, side) for mark, side in zip(marks, sides, strict=True) if int(side[0]) >= 0
        ]

        def users(pipe: _Pipe) -> None:
            for mark, side in accepted:
                self._queue(
                    pipe,
                    self._read_user,
                    [self._keys.read_cursors(mark.user_id)],
                    [mark.conversation_id, int(side[0])],
                )
            for mark, _ in accepted:
                if mark.notify_id:
                    pipe.hmget(self._keys.session(mark.notify_id), keys.SESSION_FIELDS)

        rows: list[Any] = []
        if accepted:
            async with self._guard():
                rows = await self._pipeline(users)
        cursors = iter(rows[: len(accepted)])
        sessions = iter(rows[len(accepted) :])
        done = []
        for mark, side in zip(marks, sides, strict=True):
            if int(side[0]) < 0:
                done.append(ReadMarked(refused=True))
                continue
            capped, head, moved, joined = (int(v) for v in side)
            session = _session(mark.notify_id, next(sessions)) if mark.notify_id else None
            done.append(
                ReadMarked(
                    int(next(cursors)), head, capped if moved else 0, joined, session=session
                )
            )
        return done

    async def read_receipts(
        self,
        conversation_id: str,
        user_id: int,
        group: bool,
        cursor: int,
        min_position: int,
        count: int,
    ) -> ReceiptPage:
        names = self._read_conv_keys(ReadMark(user_id, conversation_id, 0))
        args = [user_id, "1" if group else "0", cursor, min_position, max(count, 1)]
        async with self._guard():
            flat = await self._receipts(keys=names, args=args)
        if int(flat[0]) < 0:
            return ReceiptPage([], 0, 0, refused=True)
        readers = [(int(flat[i]), int(flat[i + 1])) for i in range(2, len(flat), 2)]
        return ReceiptPage(readers, int(flat[0]), int(flat[1]))

    async def read_history(
        self, conversation_id: str, before: int, limit: int, retention: Retention
    ) -> HistoryPage:
        names = self._conversation_keys(conversation_id)
        return _history_page(await self._page_of(names, before, limit, retention), limit)

    async def read_group_history(
        self, group_id: str, reader_id: int, before: int, limit: int, retention: Retention
    ) -> HistoryPage | None:
        # One script on the group's tag: the reader's check and the page.
        names = self._group_keys(group_id)
        flat = await self._page_of(names, before, limit, retention, reader_id)
        return None if int(flat[0]) < 0 else _history_page(flat, limit)

    async def _page_of(
        self,
        names: list[str],
        before: int,
        limit: int,
        retention: Retention,
        *reader: int,
    ) -> list[Any]:
        """What the history script returns (see _HISTORY)."""
        args = [
            before,
            max(limit, 0),
            _now_ms(),
            retention.history_max_messages,
            _bound_ms(retention.history_max_age),
            *reader,
        ]
        async with self._guard():
            flat: list[Any] = await self._history(keys=names, args=args)
        return flat

    async def conversations_since(self) -> float:
        if self._since is None:
            name = self._keys.conversations_since
            async with self._guard():
                found = await self._client.get(name)
                if found is None:
                    # No account yet, so no send the older code claimed: no
                    # window. (Two keys in two slots: read, then SET NX.)
                    fresh = not await self._client.exists(self._keys.user_id_counter)
                    mark = 0 if fresh else _now_ms()
                    earlier = await self._client.set(name, str(mark), nx=True, get=True)
                    since = mark if earlier is None else int(earlier)
                else:
                    since = int(found)
            self._since = since / 1000
        return self._since

    async def read_sends(self, sends: Sequence[SendKey]) -> list[SendClaim | None]:
        if not sends:
            return []
        names = [self._sent_key(send) for send in sends]

        def build(pipe: _Pipe) -> None:
            for name in names:
                pipe.get(name)

        async with self._guard():
            found = await self._pipeline(build)
        return [_send_claim(name, value) for name, value in zip(names, found, strict=True)]

    # --- groups -------------------------------------------------------------
    def _group_keys(self, group_id: str) -> list[str]:
        return [
            *self._conversation_keys(group_id),
            self._keys.conversation_members(group_id),
            self._keys.conversation_left(group_id),
        ]

    async def new_group_number(self) -> int:
        async with self._guard():
            return int(await self._client.incr(self._keys.group_ids))

    async def count_group_creation(self, user_id: int) -> int:
        name = self._keys.groups_made(user_id)

        def build(pipe: _Pipe) -> None:
            pipe.incr(name)
            # The window starts at the minute's first creation.
            pipe.pexpire(name, 60_000, nx=True)

        async with self._guard():
            made, _ = await self._pipeline(build)
        return int(made)

    async def read_group(self, group_id: str) -> Group | None:
        meta_key, _, _, members_key, left_key = self._group_keys(group_id)

        def build(pipe: _Pipe) -> None:
            pipe.hgetall(meta_key)
            pipe.hgetall(members_key)
            pipe.hgetall(left_key)

        async with self._guard():
            meta, members, left = await self._pipeline(build)
        meta = {_text(k): _text(v) for k, v in meta.items()}
        if not meta.get(keys.GROUP_VERSION):
            return None
        parsed = {}
        for uid, value in members.items():
            role, joined = _text(value).split("|")
            parsed[int(uid)] = Member(int(uid), role, int(joined))
        return Group(
            group_id,
            meta.get(keys.GROUP_NAME, ""),
            int(meta.get(keys.GROUP_OWNER, "0")),
            int(meta.get(keys.GROUP_CREATED, "0")),
            int(meta[keys.GROUP_VERSION]),
            meta.get(keys.GROUP_DELETED) == "1",
            parsed,
            {int(uid): int(at) for uid, at in left.items()},
        )

    async def group_versions(self, group_ids: Sequence[str]) -> list[int]:
        if not group_ids:
            return []

        def build(pipe: _Pipe) -> None:
            for group_id in group_ids:
                pipe.hget(self._keys.conversation_meta(group_id), keys.GROUP_VERSION)

        async with self._guard():
            found = await self._pipeline(build)
        return [int(version) if version else 0 for version in found]

    async def apply_group(
        self, change: Change, event_id: str, event: bytes, retention: Retention
    ) -> int | None:
        now = _now_ms()
        args: list[Any] = [
            change.version,
            event_id,
            b"%0*d" % (keys.INBOX_TIME_DIGITS, now) + event,
            now,
            retention.history_max_messages,
            _bound_ms(retention.history_max_age),
            len(change.set_roles),
        ]
        for user_id, role in change.set_roles.items():
            args += [user_id, role]
        args += [len(change.drop), *change.drop, len(change.meta)]
        for name, value in change.meta.items():
            args += [name, value]
        names = [
            *self._group_keys(change.group_id),
            self._keys.conversation_pending(change.group_id),
        ]
        async with self._guard():
            position, _ = await self._group_apply(keys=names, args=args)
        return int(position) or None

    async def count_groups(self, user_ids: Sequence[int]) -> list[int]:
        if not user_ids:
            return []

        def build(pipe: _Pipe) -> None:
            for user_id in user_ids:
                pipe.zcard(self._keys.user_groups(user_id))

        async with self._guard():
            return [int(n) for n in await self._pipeline(build)]

    async def index_groups(self, entries: Sequence[tuple[int, str, bool]]) -> None:
        if not entries:
            return

        def build(pipe: _Pipe) -> None:
            for user_id, group_id, member in entries:
                name = self._keys.user_groups(user_id)
                if member:
                    pipe.zadd(name, {group_id: int(group_id.split(":", 1)[1])})
                else:
                    pipe.zrem(name, group_id)

        async with self._guard():
            await self._pipeline(build)

    async def list_groups(self, user_id: int, after: int, limit: int) -> list[str]:
        if limit <= 0:
            return []
        async with self._guard():
            found = await self._client.zrangebyscore(
                self._keys.user_groups(user_id), f"({after}", "+inf", start=0, num=limit
            )
        return [_text(gid) for gid in found if isinstance(gid, (bytes, str))]

    # --- idempotent sends -------------------------------------------------
    # The key holds the message id while the send runs, its result once
    # finished, each with the send's digest (see cim.store.keys).
    def _sent_key(self, send: SendKey) -> str:
        if send.conversation:
            return self._keys.conversation_sent(
                send.conversation, send.sender_id, send.client_msg_id
            )
        return self._keys.sent(send.owner_id, send.sender_id, send.client_msg_id)

    async def claim_sends(
        self, claims: Sequence[tuple[SendKey, str]], ttl: float
    ) -> list[SendClaim | None]:
        if not claims:
            return []
        px = _ttl_ms(ttl)
        names = [self._sent_key(send) for send, _ in claims]

        def build(pipe: _Pipe) -> None:
            # SET NX GET: claims the key, or returns what is there, in one atomic step.
            for name, (send, message_id) in zip(names, claims, strict=True):
                value = _claim_value(keys.SEND_RUNNING, send, message_id.encode())
                pipe.set(name, value, nx=True, get=True, px=px)

        async with self._guard():
            found = await self._pipeline(build)
        return [_send_claim(name, value) for name, value in zip(names, found, strict=True)]

    async def finish_sends(
        self,
        results: Sequence[tuple[SendKey, bytes]],
        ttl: float,
        fanned_out: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not results and not fanned_out:
            return
        px = _ttl_ms(ttl)
        # One ZREM per conversation: a batch often holds several of its messages.
        confirmed: dict[str, list[str]] = defaultdict(list)
        for conversation_id, message_id in fanned_out:
            confirmed[conversation_id].append(message_id)

        names = [self._sent_key(send) for send, _ in results]
        values = [_claim_value(keys.SEND_FINISHED, send, result) for send, result in results]
        cluster = self.clustered

        def build(pipe: _Pipe) -> None:
            if cluster:  # each key on its own node
                for name, value in zip(names, values, strict=True):
                    pipe.set(name, value, px=px)
            elif names:
                self._queue(pipe, self._set_all, names, [px, *values])
            for conversation_id, message_ids in confirmed.items():
                pipe.zrem(self._keys.conversation_pending(conversation_id), *message_ids)

        async with self._guard():
            await self._pipeline(build)

    # --- token sessions (revocation) ---------------------------------------
    async def set_token_session(self, user_id: int, session_id: str, ttl: float) -> bool:
        names = [self._keys.session(user_id), self._keys.token_session(user_id)]
        async with self._guard():
            done = await self._set_token_session(keys=names, args=[session_id, _ttl_ms(ttl)])
        return bool(done)

    async def get_token_session(self, user_id: int) -> str | None:
        async with self._guard():
            found = await self._client.get(self._keys.token_session(user_id))
        return None if found is None else _text(found)

    async def revoke_token_session(self, user_id: int, session_id: str) -> bool:
        async with self._guard():
            done = await self._revoke_token_session(
                keys=[self._keys.token_session(user_id)], args=[session_id]
            )
        return bool(done)

    async def aclose(self) -> None:
        await self._client.aclose()
