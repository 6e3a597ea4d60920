"""Redis Streams as the comment feed: a consumer group, XAUTOCLAIM for entries whose consumer died,
and a commit script that writes results, counts and acknowledgements in one atomic step.

Keys, for output stream O:
    O                    scored entries: source_id, label, confidence, p_<label>..., passed-through fields
    <dead-letter stream> entries that cannot be scored: source_id, reason, the original fields
    O:counts:<ms>[:<key>] hash label → comments, per window starting at <ms> (and per --key-field value),
                         by the entry's --time-field, else by when Redis accepted it
    O:windows            sorted set of those hashes, scored by window start
    O:totals             hash: scored, dead_lettered, late (scored, older than the counts keep), window_s
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import ConfigError
from ..settings import StreamSettings
from .broker import PASSWORD_ENV, BrokerError, Entry, Result, shown_url, with_password

log = logging.getLogger(__name__)

# Why a script and not MULTI/EXEC: both are atomic, but only a script can skip an entry that is no
# longer pending. That makes a commit safe to retry after a connection lost mid-commit, and stops a
# slow consumer from writing an entry that another consumer took over and already committed.
COMMIT = """
local input, output, dead, windows, totals = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local i, acked, counts, window_of, scored, late = 4, {}, {}, {}, 0, 0
while i <= #ARGV do
  local id, key, label, window, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  if #redis.call('XPENDING', input, group, id, id, 1) > 0 then
    if key ~= '' then
      redis.call('XADD', output, '*', unpack(ARGV, i + 5, i + 4 + n))
      counts[key] = counts[key] or {}
      counts[key][label] = (counts[key][label] or 0) + 1
      window_of[key] = window
      scored = scored + 1
    elseif label ~= '' then  -- late: written, counted in no window
      redis.call('XADD', output, '*', unpack(ARGV, i + 5, i + 4 + n))
      scored = scored + 1
      late = late + 1
    else
      redis.call('XADD', dead, '*', unpack(ARGV, i + 5, i + 4 + n))
    end
    acked[#acked + 1] = id
  end
  i = i + 5 + n
end
for first = 1, #acked, 1000 do
  redis.call('XACK', input, group, unpack(acked, first, math.min(first + 999, #acked)))
end
for key, by_label in pairs(counts) do
  for label, n in pairs(by_label) do redis.call('HINCRBY', key, label, n) end
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', windows, window_of[key], key)
end
redis.call('HINCRBY', totals, 'scored', scored)
redis.call('HINCRBY', totals, 'dead_lettered', #acked - scored)
if late > 0 then redis.call('HINCRBY', totals, 'late', late) end
redis.call('ZREMRANGEBYSCORE', windows, '-inf', '(' .. (now - ttl * 1000))
return #acked
"""


def connect(url: str, socket_timeout: float) -> redis.Redis:
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        )
    except ValueError as exc:
        raise ConfigError(f"--broker {shown_url(url)!r}: {exc}") from None
    return client


def not_reached(exc: redis.ConnectionError | redis.TimeoutError, url: str) -> ConfigError:
    """The one line for a Redis that cannot be used: unreachable, or refusing the password; the URL
    shown without its password."""
    where = shown_url(url)
    if isinstance(exc, redis.AuthenticationError):
        if with_password(url) == url and where == url:  # no password given, here or in the environment
            return ConfigError(f"Redis at {where}: authentication required; set {PASSWORD_ENV} or give it in the URL")
        return ConfigError(f"Redis at {where} refused the user name or password")
    return ConfigError(f"cannot reach Redis at {where}: {exc}")


def open_broker(settings: StreamSettings, consumer: str, stop: threading.Event | None = None) -> RedisBroker:
    """The adapter's entry point for `broker.open_broker`."""
    return RedisBroker(settings, consumer, stop)


class RedisBroker:
    def __init__(self, settings: StreamSettings, consumer: str, stop: threading.Event | None = None):
        self.s, self.consumer = settings, consumer
        self.stop = stop or threading.Event()
        self.redis = connect(settings.broker, socket_timeout=settings.block_ms / 1000 + 10)
        self.commit_script = self.redis.register_script(COMMIT)
        out = settings.output_stream
        self.windows_key, self.totals_key = f"{out}:windows", f"{out}:totals"
        # In the order the commit script takes them.
        self.keys = [settings.input_stream, out, settings.dead_letter_stream, self.windows_key, self.totals_key]
        self.claim_cursor = "0-0"
        self.claim_every_s = min(1.0, settings.claim_idle_ms / 2000)
        self.last_claim = 0.0

    # -- the group -----------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing. Fails with a clear message when
        Redis cannot be reached: this is the first call the driver makes."""
        try:
            self.redis.xgroup_create(
                self.s.input_stream, self.s.group, id="0" if self.s.start == "begin" else "$", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise ConfigError(
                    f"cannot create consumer group {self.s.group!r} on {self.s.input_stream!r}: {exc}"
                ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise not_reached(exc, self.s.broker) from None
        self.redis.hset(self.totals_key, "window_s", self.s.window_s)

    def totals(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._retrying(lambda: self.redis.hgetall(self.totals_key)).items()}

    def pending(self) -> int | None:
        try:
            return self._retrying(lambda: self.redis.xpending(self.s.input_stream, self.s.group))["pending"]
        except redis.ResponseError:  # the stream or its group is gone: nothing to count
            return None

    # -- reading -------------------------------------------------------------------------------

    def read(self, count: int, block_ms: int) -> list[Entry]:
        try:
            return self._retrying(lambda: self._claim_stale(count) or self._read_new(count, block_ms))
        except redis.ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise BrokerError(f"reading {self.s.input_stream}: {exc}") from None
            log.warning(
                "stream %s or its group %s is gone (deleted, or Redis restarted without its data); "
                "creating them again",
                self.s.input_stream,
                self.s.group,
            )
            self.ensure_group()
            return []
        except StopRequested:
            return []

    def _read_new(self, count: int, block_ms: int) -> list[Entry]:
        reply = self.redis.xreadgroup(
            self.s.group, self.consumer, {self.s.input_stream: ">"}, count=count, block=block_ms
        )
        return [_entry(id_, fields, 1) for _, messages in reply or [] for id_, fields in messages]

    def _claim_stale(self, count: int) -> list[Entry]:
        """Entries pending longer than --claim-idle-ms (their consumer died or hangs) become ours."""
        if time.monotonic() - self.last_claim < self.claim_every_s:
            return []
        self.last_claim = time.monotonic()
        cursor, messages, *deleted = self.redis.xautoclaim(
            self.s.input_stream, self.s.group, self.consumer, self.s.claim_idle_ms, self.claim_cursor, count=count
        )
        self.claim_cursor = cursor
        if deleted and deleted[0]:
            log.warning(
                "%d pending entries were deleted from %s before anyone scored them (XDEL or XTRIM)",
                len(deleted[0]),
                self.s.input_stream,
            )
        messages = [(id_, fields) for id_, fields in messages if fields is not None]
        if not messages:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for id_, _ in messages:
            pipe.xpending_range(self.s.input_stream, self.s.group, id_, id_, 1)
        deliveries = [info[0]["times_delivered"] if info else 1 for info in pipe.execute()]
        log.warning("%s took over %d entries left pending by another consumer", self.consumer, len(messages))
        return [_entry(id_, fields, n) for (id_, fields), n in zip(messages, deliveries)]

    # -- committing ----------------------------------------------------------------------------

    def commit(self, results: list[Result]) -> int:
        args = [self.s.group, self.s.counts_ttl_s, 0]
        out = self.s.output_stream
        for r in results:
            counted = r.label is not None and not r.late
            counts = f"{out}:counts:{r.window_ms}" + (f":{r.key}" if self.s.key_field else "") if counted else ""
            args += [r.entry_id, counts, r.label or "", r.window_ms, 2 * len(r.fields)]
            args += [part for pair in r.fields for part in pair]

        def run():
            args[2] = int(time.time() * 1000)
            return self.commit_script(keys=self.keys, args=args)

        # Safe to retry: entries a lost-but-applied commit already acknowledged are skipped.
        try:
            return self._retrying(run, keep_trying_s=60)
        except redis.ResponseError as exc:
            raise BrokerError(f"committing to {out}: {exc}") from None

    def close(self) -> None:
        self.redis.close()

    def _retrying(self, call, keep_trying_s: float = 0.0):
        """Run `call`, retrying lost connections with backoff for as long as Redis is away. After a stop
        is asked, give up at once (reads) or after `keep_trying_s` (commits: the batch in flight)."""
        delay, failures, given_up_at = 0.1, 0, None
        while True:
            try:
                result = call()
                if failures:
                    log.warning("%s: Redis is back after %d failed attempts", self.consumer, failures)
                return result
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("%s: lost Redis (%s); retrying with backoff", self.consumer, exc)
                if self.stop.is_set():
                    given_up_at = given_up_at or time.monotonic() + keep_trying_s
                    if time.monotonic() >= given_up_at:
                        raise StopRequested(f"stopping while Redis is unreachable: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


class StopRequested(Exception):
    """A stop was asked while Redis was unreachable; what was not committed stays pending."""


def _entry(raw_id: bytes, fields: dict, deliveries: int) -> Entry:
    entry_id = raw_id.decode()
    return Entry(entry_id, int(entry_id.split("-", 1)[0]), fields, deliveries)


def window_counts(url: str, output_stream: str, last: int = 10) -> list[dict]:
    """broker.window_counts for Redis: from the sorted set of windows and a hash per window (and key)."""
    client = connect(url, socket_timeout=10)
    try:
        members = client.zrange(f"{output_stream}:windows", 0, -1, withscores=True)
        starts = sorted({int(score) for _, score in members})[-last:]
        prefix = f"{output_stream}:counts:"
        rows = []
        for name, score in sorted(members, key=lambda m: (m[1], m[0])):
            if int(score) not in starts:
                continue
            name = name.decode()
            key = name[len(prefix) :].partition(":")[2]
            counts = {k.decode(): int(v) for k, v in client.hgetall(name).items()}
            if counts:
                rows.append({"window_start_ms": int(score), "key": key, "counts": counts})
        return rows
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise not_reached(exc, url) from None
    finally:
        client.close()
