"""Consumes encoded transitions from a Redis Stream through a consumer group, losing nothing on restart.

Reading order: this consumer's own pending entries first (delivered before a crash, never acknowledged),
then entries other, dead consumers left pending (claimed with XAUTOCLAIM once idle for a few seconds;
again every `reclaim_interval_s`), then new entries. The group is created at id 0 with MKSTREAM, so
transitions published before the learner ever started are read too. Entries are acknowledged by the
caller after use (`ack`), so a crash between reading and using them re-delivers them.

Entries that do not decode are copied to the dead-letter stream `<stream>:dead` (bounded), acknowledged
and counted; they never reach the caller.

Backpressure (`skip_backlog`): gateways never wait for the learner, so a slow learner faces an ever
older backlog. When more than a threshold of entries wait undelivered, the group's position jumps to
the stream's newest entry (XGROUP SETID) and the entries jumped over are counted exactly: from the
group's `lag` where Redis reports it (7.0+; it also counts entries MAXLEN trimmed before they were
read), else by counting ids with XRANGE in chunks (Redis 6.2, which cannot count trimmed entries).
Pending entries are untouched by the jump: they are still read, used and acknowledged. The jump
assumes this consumer is the group's only reader, as the learner is.

Errors: every Redis failure (connection refused or lost, timeouts, a group deleted under us) is raised
as `StreamUnavailable`, translated from the redis-py error; the caller backs off and calls `connect()`
again, which re-creates the group if needed and re-reads what is still pending.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from rtrl.redis_client import connect_redis, redacted_url
from rtrl.transitions import STREAM_FIELD, Transition, TransitionDecodeError, decode

log = logging.getLogger(__name__)

TRANSITION_FIELD = STREAM_FIELD.encode()
"""Stream entry field holding one `rtrl.transitions.encode` record."""
DEAD_LETTER_SUFFIX = ":dead"
DEFAULT_READ_COUNT = 64
DEFAULT_BLOCK_MS = 50
DEFAULT_RECLAIM_MIN_IDLE_MS = 5_000
DEFAULT_RECLAIM_INTERVAL_S = 10.0
DEFAULT_DEAD_LETTER_MAXLEN = 10_000
DEAD_LETTER_LOG_INTERVAL_S = 30.0
# Entries per XRANGE while counting a backlog on Redis 6.2: each reply carries observations, so keep it
# small enough that no single command holds Redis (and the gateways' XADDs) for long.
COUNT_CHUNK = 256


class StreamError(RuntimeError):
    """Base of the stream consumer's errors."""


class StreamUnavailable(StreamError):
    """Redis could not be reached or refused a command; reconnect with `connect()` after a pause."""


@dataclass(frozen=True)
class StreamEntry:
    """One decoded entry, to be acknowledged by id after use."""

    entry_id: bytes
    transition: Transition


@dataclass(frozen=True)
class ReadResult:
    """What one `read` returned: decoded entries, and how many it dead-lettered and acknowledged itself."""

    entries: list[StreamEntry]
    invalid: int


@dataclass(frozen=True)
class StreamStats:
    """Stream length, the group's unacknowledged entries, and entries not yet delivered (-1: unknown)."""

    length: int
    pending: int
    lag: int


@dataclass(frozen=True)
class Backlog:
    """What `skip_backlog` found: entries not yet delivered to the group, and how many it skipped."""

    undelivered: int
    """Entries after the group's position (-1 when Redis 6.2 could not tell without counting and the
    stream is too short to exceed the threshold)."""
    skipped: int
    """Entries jumped over (0 when the backlog was within the threshold)."""
    trimmed: int
    """Of those, entries MAXLEN had already removed before they were delivered (Redis 7.0+; 0 on 6.2)."""


class _Phase(Enum):
    OWN_PENDING = "own pending"
    RECLAIM = "reclaim"
    NEW = "new"


class TransitionStream:
    """A consumer of `stream` in `group` under the name `consumer`; used from one thread."""

    def __init__(
        self,
        redis_url: str,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = DEFAULT_READ_COUNT,
        block_ms: int = DEFAULT_BLOCK_MS,
        reclaim_min_idle_ms: int = DEFAULT_RECLAIM_MIN_IDLE_MS,
        reclaim_interval_s: float = DEFAULT_RECLAIM_INTERVAL_S,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
    ) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.dead_letter_stream = stream + DEAD_LETTER_SUFFIX
        self.group = group
        self.consumer = consumer
        self.count = count
        # Training waits on a blocking read only when it has nothing to train on; keep that short anyway.
        self.block_ms = min(block_ms, 50)
        self.reclaim_min_idle_ms = reclaim_min_idle_ms
        self.reclaim_interval_s = reclaim_interval_s
        self.dead_letter_maxlen = dead_letter_maxlen
        self._client: redis.Redis | None = None
        self._phase = _Phase.OWN_PENDING
        self._pending_cursor = b"0"
        self._reclaim_cursor = b"0-0"
        self._reclaim_found_deleted = False
        self._next_reclaim_s = 0.0
        self.dead_lettered = 0
        """Entries moved to the dead-letter stream by this consumer."""
        self._dead_letter_logged_s = -DEAD_LETTER_LOG_INTERVAL_S

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connects, creates the group (at id 0, with the stream) unless it exists, and restarts the
        reading order at this consumer's own pending entries."""
        self.close()
        self._client = connect_redis(
            self.redis_url,
            socket_connect_timeout=1.0,
            # Longer than the blocking read, short enough that stop() is not held up by a hung Redis.
            socket_timeout=2.0,
            health_check_interval=10,
        )
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise self._unavailable("could not create the consumer group", e) from e
        except redis.RedisError as e:
            raise self._unavailable("could not connect", e) from e
        self._phase = _Phase.OWN_PENDING
        self._pending_cursor = b"0"
        self._reclaim_cursor = b"0-0"
        self._reclaim_found_deleted = False

    def close(self) -> None:
        if self._client is not None:
            # Closing a broken connection has nothing left to report.
            with contextlib.suppress(redis.RedisError):
                self._client.close()
            self._client = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise StreamUnavailable("the transition stream is not connected; call connect() first")
        return self._client

    def _unavailable(self, what: str, error: BaseException) -> StreamUnavailable:
        return StreamUnavailable(
            f"Redis at {redacted_url(self.redis_url)} {what} on stream {self.stream!r}: {error}; "
            "check that Redis is running and RTRL_REDIS_URL points at it"
        )

    # -- reading -----------------------------------------------------------------------------------

    def read(self, block: bool) -> ReadResult:
        """Next entries in the reading order; blocks up to `block_ms` for new ones only when `block`."""
        try:
            return self._read(block)
        except redis.RedisError as e:
            raise self._unavailable("failed while reading", e) from e

    def _read(self, block: bool) -> ReadResult:
        client = self._redis()
        if self._phase is _Phase.OWN_PENDING:
            raw = self._entries(
                client.xreadgroup(self.group, self.consumer, {self.stream: self._pending_cursor}, count=self.count)
            )
            if raw:
                self._pending_cursor = raw[-1][0]
                return self._decode(raw)
            self._phase = _Phase.RECLAIM
            self._reclaim_cursor = b"0-0"
            self._reclaim_found_deleted = False
        if self._phase is _Phase.RECLAIM:
            reply = client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.reclaim_min_idle_ms,
                start_id=self._reclaim_cursor,
                count=self.count,
            )
            next_cursor, claimed = reply[0], reply[1]
            # Redis 6.2 claims entries deleted from the stream as nil; they now sit in our pending list,
            # and the own-pending pass acknowledges them so `pending` can drain to zero.
            present = [entry for entry in claimed if entry[0] is not None]
            self._reclaim_found_deleted |= len(present) != len(claimed)
            if next_cursor in (b"0-0", "0-0"):
                self._next_reclaim_s = time.monotonic() + self.reclaim_interval_s
                if self._reclaim_found_deleted:
                    self._phase = _Phase.OWN_PENDING
                    self._pending_cursor = b"0"
                else:
                    self._phase = _Phase.NEW
            else:
                self._reclaim_cursor = next_cursor
            if present:
                log.info("reclaimed %d entries another consumer left pending", len(present))
                return self._decode(present)
            if self._phase is not _Phase.NEW:
                return ReadResult([], 0)
        if time.monotonic() >= self._next_reclaim_s:
            self._phase = _Phase.RECLAIM
            self._reclaim_cursor = b"0-0"
            self._reclaim_found_deleted = False
        raw = self._entries(
            client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self.count,
                # None sends no BLOCK at all (0 would block forever).
                block=self.block_ms if block else None,
            )
        )
        return self._decode(raw)

    @staticmethod
    def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3 replies are keyed by stream name
            return [entry for entries in reply.values() for entry in entries[0]]
        return [entry for _stream, entries in reply for entry in entries]

    def _decode(self, raw: list[tuple[bytes, dict[bytes, bytes]]]) -> ReadResult:
        entries: list[StreamEntry] = []
        invalid = 0
        for entry_id, fields in raw:
            try:
                entries.append(StreamEntry(entry_id, decode(self._payload(fields))))
            # The codec promises TransitionDecodeError; anything else it raises must not stop the learner.
            except (ValueError, struct.error) as e:
                self._dead_letter(entry_id, fields or {}, str(e))
                invalid += 1
        return ReadResult(entries, invalid)

    @staticmethod
    def _payload(fields: dict[bytes, bytes] | None) -> bytes:
        if not fields:
            raise TransitionDecodeError("the entry was deleted from the stream before it could be read")
        payload = fields.get(TRANSITION_FIELD)
        if payload is None and len(fields) == 1:
            # A single-field entry under another name is still worth trying: decode checks the magic bytes.
            (payload,) = fields.values()
        if payload is None:
            names = ", ".join(repr(name) for name in fields)
            raise TransitionDecodeError(f"the entry has no {TRANSITION_FIELD.decode()!r} field (fields: {names})")
        return payload

    # -- acknowledging -----------------------------------------------------------------------------

    def ack(self, entry_ids: list[bytes]) -> None:
        """Acknowledges entries after they were used; they will not be delivered again."""
        if not entry_ids:
            return
        try:
            self._redis().xack(self.stream, self.group, *entry_ids)
        except redis.RedisError as e:
            raise self._unavailable("failed while acknowledging", e) from e

    def dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """Copies an unusable entry to the dead-letter stream with the reason, and acknowledges it."""
        try:
            self._dead_letter(entry_id, fields, reason)
        except redis.RedisError as e:
            raise self._unavailable("failed while dead-lettering", e) from e

    def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        record: dict[Any, Any] = {**fields, b"error": reason.encode(), b"source_id": entry_id}
        # One transaction: the entry is either moved (copied and acknowledged) or left pending.
        with self._redis().pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter_stream, record, maxlen=self.dead_letter_maxlen, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            pipe.execute()
        self.dead_lettered += 1
        # A misconfigured gateway sends nothing but bad entries; one line per 30 s says so well enough.
        now = time.monotonic()
        if now - self._dead_letter_logged_s >= DEAD_LETTER_LOG_INTERVAL_S:
            self._dead_letter_logged_s = now
            log.warning(
                "stream entry %s is not usable and went to %s (%d so far): %s",
                entry_id.decode(),
                self.dead_letter_stream,
                self.dead_lettered,
                reason,
            )

    # -- observing ---------------------------------------------------------------------------------

    def stats(self) -> StreamStats:
        """Stream length, the group's pending entries and lag (one round trip; call it at most ~1/s)."""
        try:
            with self._redis().pipeline(transaction=False) as pipe:
                pipe.xinfo_stream(self.stream)
                pipe.xinfo_groups(self.stream)
                stream_info, groups = pipe.execute()
        except redis.RedisError as e:
            raise self._unavailable("failed while reading stream statistics", e) from e
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if group is None:
            raise StreamUnavailable(
                f"consumer group {self.group!r} of stream {self.stream!r} disappeared (was Redis restarted?); "
                "it will be re-created on reconnect"
            )
        lag = group.get("lag")
        if lag is None:
            # Redis 6.2 does not report lag; it is zero exactly when the group has seen the newest entry,
            # which is what a shutdown waiting for the learner to drain the stream needs to know.
            delivered_all = _text(group.get("last-delivered-id")) == _text(stream_info.get("last-generated-id"))
            lag = 0 if delivered_all else -1
        return StreamStats(length=int(stream_info.get("length", 0)), pending=int(group.get("pending", 0)), lag=int(lag))

    def skip_backlog(self, max_undelivered: int) -> Backlog:
        """Jumps the group to the stream's newest entry when more than `max_undelivered` entries wait
        undelivered; returns the backlog and what was skipped. One snapshot (MULTI) gives the group's
        position and the stream's newest id, so entries added meanwhile are never counted or skipped."""
        try:
            return self._skip_backlog(max_undelivered)
        except redis.RedisError as e:
            raise self._unavailable("failed while checking the backlog", e) from e

    def _skip_backlog(self, max_undelivered: int) -> Backlog:
        client = self._redis()
        with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self.stream)
            pipe.xinfo_groups(self.stream)
            stream_info, groups = pipe.execute()
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if group is None:
            raise StreamUnavailable(
                f"consumer group {self.group!r} of stream {self.stream!r} disappeared (was Redis restarted?); "
                "it will be re-created on reconnect"
            )
        position = _text(group.get("last-delivered-id"))
        newest = _text(stream_info.get("last-generated-id"))
        length = int(stream_info.get("length", 0))
        lag = group.get("lag")
        if position == newest:
            return Backlog(0, 0, 0)
        trimmed = 0
        if lag is not None:  # Redis 7.0+: exact, trimmed entries included
            undelivered = int(lag)
            first = stream_info.get("first-entry")
            if _id_before(position, _text(first[0]) if first else newest):
                # Every entry still in the stream is undelivered; the rest of the lag was trimmed.
                trimmed = max(0, undelivered - length)
        elif length <= max_undelivered:
            # Redis 6.2: at most `length` entries can wait, so there is nothing to count.
            return Backlog(-1, 0, 0)
        else:
            undelivered = self._count_after(client, position, newest, stop_after=max_undelivered + 1)
            if undelivered > max_undelivered:
                undelivered = self._count_after(client, position, newest, stop_after=None)
        if undelivered <= max_undelivered:
            return Backlog(undelivered, 0, 0)
        entries_added = stream_info.get("entries-added")
        # ENTRIESREAD keeps Redis 7's lag exact after the jump; 6.2 knows no such argument.
        client.xgroup_setid(
            self.stream,
            self.group,
            newest,
            entries_read=int(entries_added) if entries_added is not None else None,
        )
        log.warning(
            "the learner fell %d entries behind the stream %r (threshold %d) and jumped to its newest entry; "
            "%d entries skipped (%d of them already trimmed); pending entries are still read",
            undelivered,
            self.stream,
            max_undelivered,
            undelivered,
            trimmed,
        )
        return Backlog(undelivered, undelivered, trimmed)

    def _count_after(self, client: redis.Redis, position: str, newest: str, stop_after: int | None) -> int:
        """Entries with ids in (position, newest], counted in chunks; stops early at `stop_after`."""
        counted = 0
        cursor = position
        while stop_after is None or counted < stop_after:
            chunk = COUNT_CHUNK if stop_after is None else min(COUNT_CHUNK, stop_after - counted)
            entries = client.xrange(self.stream, min="(" + cursor, max=newest, count=chunk)
            if not entries:
                break
            counted += len(entries)
            cursor = _text(entries[-1][0])
            if len(entries) < chunk:
                break
        return counted


def _id_before(left: str, right: str) -> bool:
    """Stream id order: whether `left` < `right` ("ms-seq", compared numerically)."""
    left_ms, _, left_seq = left.partition("-")
    right_ms, _, right_seq = right.partition("-")
    return (int(left_ms), int(left_seq or 0)) < (int(right_ms), int(right_seq or 0))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
