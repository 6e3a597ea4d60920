"""Redis Streams as the comment feed: a consumer group, XAUTOCLAIM for entries whose consumer died,
and a commit script that writes results, counts and acknowledgements in one atomic step.

Keys, for output stream O:
    O                    scored entries: source_id, label, confidence, p_<label>..., passed-through fields
    <dead-letter stream> entries that cannot be scored: source_id, reason, the original fields
    O:counts:<ms>[:<key>] hash label → comments, per window starting at <ms> (and per --key-field value),
                         by the entry's --time-field, else by when Redis accepted it
    O:windows            sorted set of those hashes, scored by window start
    O:totals             hash: scored, dead_lettered, late (scored; older than the counts keep, behind the
                         watermark), alerts, window_s, watermark (the latest window counted in: those before
                         it are closed)
    O:alerts             stream of alerts (see alerts.py), at most one per window and key
    O:alerted:<ms>[:<key>]  the alert raised for that window (and key): none is raised again
    O:examples:<ms>[:<key>] list: the first entries of the alert label in that window (and key)
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
from ..text.redact import redact
from .alerts import Alert, alerts_stream
from .broker import PASSWORD_ENV, BrokerError, Entry, Result, shown_url, with_password

log = logging.getLogger(__name__)

# Why a script and not MULTI/EXEC: both are atomic, but only a script can skip an entry that is no
# longer pending. That makes a commit safe to retry after a connection lost mid-commit, and stops a
# slow consumer from writing an entry that another consumer took over and already committed. The
# alerts are decided in the same step, so a consumer killed and restarted neither repeats nor misses one.
#
# Per entry: id, label ('' for a dead letter), window start, key, and the fields to write. A window
# closes when a comment of a later window is counted (the stream's watermark passes it); from then
# on every commit that counts in it checks it for an alert until one is raised, so comments a dead
# consumer left pending still count.
COMMIT = """
local input, output, dead, windows, totals, alerts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local alert_label, threshold, min_count = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local baseline_windows, window_ms, keyed = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local text_field = ARGV[10]

local function name(kind, window, key)
  local n = output .. ':' .. kind .. ':' .. string.format('%.0f', window)
  if keyed then n = n .. ':' .. key end
  return n
end

-- The stream's clock is the latest window counted in (its watermark): an entry whose window is
-- older than the counts keep, behind it, is late: written and totalled, counted in no window.
local mark = tonumber(redis.call('HGET', totals, 'watermark'))
local newest, i = mark, 11
while i <= #ARGV do
  local window = tonumber(ARGV[i + 2])
  if ARGV[i + 1] ~= '' and (not newest or window > newest) then newest = window end
  i = i + 5 + tonumber(ARGV[i + 4])
end
local oldest = newest and newest - ttl * 1000 or 0

local acked, counts, at, examples, scored, late = {}, {}, {}, {}, 0, 0
i = 11
while i <= #ARGV do
  local id, label, window, key, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], tonumber(ARGV[i + 4])
  if #redis.call('XPENDING', input, group, id, id, 1) > 0 then
    if label == '' then
      redis.call('XADD', dead, '*', unpack(ARGV, i + 5, i + 4 + n))
    else
      redis.call('XADD', output, '*', unpack(ARGV, i + 5, i + 4 + n))
      scored = scored + 1
      if window < oldest then
        late = late + 1
      else
        local hash = name('counts', window, key)
        counts[hash] = counts[hash] or {}
        counts[hash][label] = (counts[hash][label] or 0) + 1
        at[hash] = {window, key}
        if label == alert_label then
          examples[hash] = examples[hash] or {}
          if #examples[hash] < 5 then table.insert(examples[hash], id) end
        end
      end
    end
    acked[#acked + 1] = id
  end
  i = i + 5 + n
end
for first = 1, #acked, 1000 do
  redis.call('XACK', input, group, unpack(acked, first, math.min(first + 999, #acked)))
end

for hash, by_label in pairs(counts) do
  for label, n in pairs(by_label) do redis.call('HINCRBY', hash, label, n) end
  redis.call('EXPIRE', hash, ttl)
  redis.call('ZADD', windows, at[hash][1], hash)
end
redis.call('HINCRBY', totals, 'scored', scored)
redis.call('HINCRBY', totals, 'dead_lettered', #acked - scored)
if late > 0 then redis.call('HINCRBY', totals, 'late', late) end

-- Alerts: the windows this commit closed, and closed ones it counted in.
local function sums(hash)
  local all, of_label, pairs_ = 0, 0, redis.call('HGETALL', hash)
  for j = 1, #pairs_, 2 do
    local n = tonumber(pairs_[j + 1])
    all = all + n
    if pairs_[j] == alert_label then of_label = n end
  end
  return all, of_label
end

local function check(hash, window, key)
  local marker = name('alerted', window, key)
  if redis.call('EXISTS', marker) == 1 then return end
  local total, count = sums(hash)
  if total < min_count then return end
  local base_total, base_count = 0, 0
  for j = 1, baseline_windows do
    local t, c = sums(name('counts', window - j * window_ms, key))
    base_total, base_count = base_total + t, base_count + c
  end
  if base_total < min_count then return end
  local share, baseline = count / total, base_count / base_total
  if share - baseline <= threshold then return end
  local p = (base_count + 0.5) / (base_total + 1)  -- kept off 0 and 1
  local ids = redis.call('LRANGE', name('examples', window, key), 0, -1)
  local alert = redis.call('XADD', alerts, '*',
    'key', key, 'window_start_ms', string.format('%.0f', window), 'window_s', string.format('%.0f', window_ms / 1000),
    'label', alert_label, 'share', string.format('%.4f', share), 'baseline', string.format('%.4f', baseline),
    'count', count, 'total', total, 'baseline_count', base_count, 'baseline_total', base_total,
    'baseline_windows', baseline_windows, 'z', string.format('%.2f', (share - p) / math.sqrt(p * (1 - p) / total)),
    'examples', table.concat(ids, ' '), 'input_stream', input, 'text_field', text_field,
    'raised_at_ms', string.format('%.0f', now))
  redis.call('SET', marker, alert, 'EX', ttl)
  redis.call('HINCRBY', totals, 'alerts', 1)
end

if newest and newest ~= mark then
  redis.call('HSET', totals, 'watermark', string.format('%.0f', newest))
end
if alert_label ~= '' and newest then
  for hash, ids in pairs(examples) do
    local key = name('examples', at[hash][1], at[hash][2])
    redis.call('RPUSH', key, unpack(ids))
    redis.call('LTRIM', key, 0, 4)
    redis.call('EXPIRE', key, ttl)
  end
  local closing = {}
  for hash, where in pairs(at) do
    if where[1] < newest then closing[hash] = where end
  end
  if newest ~= mark then
    local from = mark and string.format('%.0f', mark) or '-inf'
    local prefix = #output + #':counts:' + 1
    for _, hash in ipairs(redis.call('ZRANGEBYSCORE', windows, from, '(' .. string.format('%.0f', newest))) do
      local window, key = string.match(string.sub(hash, prefix), '^(%d+):?(.*)$')
      closing[hash] = {tonumber(window), key}
    end
  end
  for hash, where in pairs(closing) do check(hash, where[1], where[2]) end
end
redis.call('ZREMRANGEBYSCORE', windows, '-inf', '(' .. string.format('%.0f', oldest))
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
        self.keys.append(alerts_stream(out))
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
        s = self.s
        args = [s.group, s.counts_ttl_s, 0, s.alert_label or "", s.alert_threshold, s.alert_min_count]
        args += [s.alert_baseline_windows, s.window_s * 1000, "1" if s.key_field else "", s.text_field]
        for r in results:
            args += [r.entry_id, r.label or "", r.window_ms, r.key, 2 * len(r.fields)]
            args += [part for pair in r.fields for part in pair]

        def run():
            args[2] = int(time.time() * 1000)
            return self.commit_script(keys=self.keys, args=args)

        # Safe to retry: entries a lost-but-applied commit already acknowledged are skipped.
        try:
            return self._retrying(run, keep_trying_s=60)
        except redis.ResponseError as exc:
            raise BrokerError(f"committing to {s.output_stream}: {exc}") from None

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


def open_reader(url: str) -> RedisReader:
    """The adapter's entry point for `broker.open_reader`."""
    return RedisReader(url)


class RedisReader:
    """What `stream` keeps for an output stream, read back: window counts, totals, alerts."""

    def __init__(self, url: str):
        self.url, self.redis = url, connect(url, socket_timeout=10)

    def window_counts(self, output_stream: str, last: int = 10) -> list[dict]:
        """From the sorted set of windows and a hash per window (and key), read in one round trip."""
        members = self._call(lambda: self.redis.zrange(f"{output_stream}:windows", 0, -1, withscores=True))
        starts = set(sorted({int(score) for _, score in members})[-last:])
        shown = sorted((m for m in members if int(m[1]) in starts), key=lambda m: (m[1], m[0]))
        pipe = self.redis.pipeline(transaction=False)
        for name, _ in shown:
            pipe.hgetall(name)
        prefix = f"{output_stream}:counts:"
        rows = []
        for (name, score), counts in zip(shown, self._call(pipe.execute)):
            if counts:
                key = name.decode()[len(prefix) :].partition(":")[2]
                rows.append({"window_start_ms": int(score), "key": key, "counts": _ints(counts)})
        return rows

    def totals(self, output_stream: str) -> dict[str, int]:
        return _ints(self._call(lambda: self.redis.hgetall(f"{output_stream}:totals")))

    def alerts(self, output_stream: str, last: int = 10, examples: bool = False) -> list[Alert]:
        """The `last` alerts, newest first; with `examples`, each with its example comments'
        texts, redacted (those the input stream still holds)."""
        raw = self._call(lambda: self.redis.xrevrange(alerts_stream(output_stream), count=last))
        alerts = []
        for id_, fields in raw:
            try:
                alerts.append(Alert.of(id_.decode(), {k.decode(): v.decode() for k, v in fields.items()}))
            except (TypeError, ValueError, UnicodeDecodeError):  # not written by `stream`: left out, said
                log.warning("%s: entry %s is not an alert as `stream` writes them; left out", output_stream, id_)
        if examples:
            self.add_texts(alerts)
        return alerts

    def add_texts(self, alerts: list[Alert]) -> None:
        """Each alert's example comments, redacted: those the input stream still holds."""
        pipe = self.redis.pipeline(transaction=False)
        for alert in alerts:
            for id_ in alert.examples:
                pipe.xrange(alert.input_stream, id_, id_)
        found = iter(self._call(pipe.execute) if alerts else [])
        for alert in alerts:
            entries = [next(found) for _ in alert.examples]
            texts = [e[0][1].get(alert.text_field.encode(), b"") for e in entries if e]
            alert.texts = [redact(t.decode("utf-8", "replace")[:280]) for t in texts]

    def close(self) -> None:
        self.redis.close()

    def _call(self, call):
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise not_reached(exc, self.url) from None


def _ints(reply: dict) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in reply.items()}
