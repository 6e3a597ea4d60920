"""The Redis Streams consumer against a real redis-server (one per module, emptied for each test)
and, for the consumer actors, the session's local Ray. Scoring entries and refusals are unit tests."""

import json
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ray_sentiment import Predictor
from ray_sentiment.errors import ConfigError, RaySentimentError
from ray_sentiment.settings import StreamSettings
from ray_sentiment.stream.broker import Entry, Result, open_broker, open_reader, shown_url, window_counts, with_password
from ray_sentiment.stream.checks import check_stream
from ray_sentiment.stream.runner import RunTotals, StreamRunner, StreamSummary, event_time_ms, score_entries
from ray_sentiment.stream.webhook import GROUP as WEBHOOK_GROUP
from ray_sentiment.stream.webhook import WebhookSender

from conftest import actor_pids, cli_in_process, cli_process, free_port, random_texts, run_cli

BRANDS = ["acme", "globex", "initech"]


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor.load(bundle)


def settings(server, **overrides) -> StreamSettings:
    values = dict(
        broker=server.url,
        input_stream="comments",
        output_stream="scored",
        key_field="brand",
        batch_size=50,
        block_ms=200,
        claim_idle_ms=1000,
    )
    return StreamSettings(**{**values, **overrides})


def produce(client, n: int, seed: int = 0, stream: str = "comments") -> dict[str, str]:
    """Add n comments; returns entry id → text."""
    texts = random_texts(n, seed)
    pipe = client.pipeline(transaction=False)
    for i, text in enumerate(texts):
        pipe.xadd(stream, {"text": text, "brand": BRANDS[i % 3], "user": f"u{i}"})
    return {id_.decode(): text for id_, text in zip(pipe.execute(), texts)}


def outputs(client, stream: str = "scored") -> list[dict]:
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()} for _, fields in client.xrange(stream)
    ]


def entry(id_: str, deliveries: int = 1, **fields) -> Entry:
    return Entry(
        id_,
        int(id_.split("-")[0]),
        {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()},
        deliveries,
    )


# -- turning entries into results (no broker) -----------------------------------------------------


def test_entries_that_cannot_be_scored_become_dead_letters_with_a_reason(predictor):
    s = StreamSettings(max_text_chars=50, max_deliveries=3, key_field="brand")
    entries = [
        entry("61000-0", text="love the update", brand="acme", label="mine", user="u1"),
        entry("61000-1", brand="acme"),
        entry("61000-2", text=b"\xff\xfe broken"),
        entry("61000-3", text="   "),
        entry("61000-4", text="x" * 51),
        entry("61000-5", deliveries=4, text="love it"),
    ]
    results = score_entries(predictor, entries, s)
    reasons = [dict(r.fields).get("reason") for r in results]
    assert reasons == [
        None,
        "entry has no 'text' field",
        "text is not valid UTF-8",
        "text is empty",
        "text is 51 characters, more than --max-text-chars 50",
        "delivered 4 times, more than --max-deliveries 3",
    ]
    assert [r.label is None for r in results] == [False] + [True] * 5
    assert dict(results[2].fields)[b"text"] == b"\xff\xfe broken"  # the original fields, byte for byte
    good = dict(results[0].fields)
    expected = predictor.predict_proba(["love the update"])[0]
    assert good["source_id"] == "61000-0" and good["label"] == predictor.labels[int(expected.argmax())]
    np.testing.assert_allclose([float(good[f"p_{label}"]) for label in predictor.labels], expected, rtol=1e-6)
    assert good[b"brand"] == b"acme" and good[b"user"] == b"u1" and good["input_label"] == b"mine"
    assert results[0].window_ms == 60000 and results[0].key == "acme"


@pytest.mark.parametrize(
    "value, fmt, expected",
    [
        ("2015-02-24T11:35:52Z", None, "2015-02-24T11:35:52+00:00"),
        ("2015-02-24 11:35:52-08:00", None, "2015-02-24T19:35:52+00:00"),
        ("2015-02-24T11:35", None, "2015-02-24T11:35:00+00:00"),  # no zone: UTC
        ("1424777752", None, "2015-02-24T11:35:52+00:00"),  # epoch seconds
        ("1424777752.5", None, "2015-02-24T11:35:52.500000+00:00"),
        ("1424777752000", None, "2015-02-24T11:35:52+00:00"),  # epoch milliseconds
        ("2/24/2015 11:35", "%m/%d/%Y %H:%M", "2015-02-24T11:35:00+00:00"),  # the airline tweets' format
    ],
)
def test_event_times_in_iso_epoch_or_a_given_format(value, fmt, expected):
    ms = event_time_ms(value.encode(), fmt)
    assert datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat() == expected


def test_event_times_window_entries_and_the_unreadable_are_dead(predictor):
    s = StreamSettings(time_field="created_at", window_s=3600, counts_ttl_s=7 * 24 * 3600)
    now = datetime.now(timezone.utc)
    entries = [
        entry("61000-0", text="love it", created_at="2015-02-24T11:35:52Z"),  # a backfill: its own hour
        entry("61000-1", text="love it", created_at=(now - timedelta(days=2)).isoformat()),
        entry("61000-2", text="love it"),
        entry("61000-3", text="love it", created_at="last tuesday"),
    ]
    old, recent, missing, bad = score_entries(predictor, entries, s)
    assert old.window_ms == event_time_ms(b"2015-02-24T11:00:00Z", None) and old.label
    hour = int((now - timedelta(days=2)).timestamp()) // 3600 * 3600 * 1000
    assert recent.window_ms == hour and recent.label
    assert dict(missing.fields)["reason"] == "entry has no 'created_at' field (--time-field)"
    assert dict(bad.fields)["reason"] == (
        "time field 'created_at': 'last tuesday' does not parse as ISO-8601 or epoch seconds/ms; give --time-format"
    )
    airline = StreamSettings(time_field="created_at", time_format="%m/%d/%Y %H:%M", window_s=60)
    [minute] = score_entries(predictor, [entry("61000-4", text="ok", created_at="2/24/2015 11:35")], airline)
    assert minute.window_ms == event_time_ms(b"2015-02-24T11:35:00Z", None)
    assert dict(minute.fields)[b"created_at"] == b"2/24/2015 11:35"  # passed through as it came


def test_settings_refuse_impossible_values():
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        StreamSettings(batch_size=0)
    with pytest.raises(ConfigError, match="three different keys"):
        StreamSettings(input_stream="a", output_stream="a")
    with pytest.raises(ConfigError, match="--broker takes redis://"):
        open_broker(StreamSettings(broker="kafka://broker:9092"), "c")
    with pytest.raises(ConfigError, match="--alert-threshold is a share between 0 and 1, not 15"):
        StreamSettings(alert_label="negative", alert_threshold=15)
    with pytest.raises(ConfigError, match="--alert-webhook needs --alert-label"):
        StreamSettings(alert_webhook="https://hooks.example.com/T0/B0/s3cret")
    with pytest.raises(ConfigError, match="--alert-webhook takes an http:// or https:// URL"):
        StreamSettings(alert_label="negative", alert_webhook="ftp://example.com/hook")
    hooked = StreamSettings(alert_label="negative", alert_webhook="https://hooks.example.com/T0/B0/s3cret")
    assert "s3cret" not in repr(hooked)  # settings shown in a log or an error keep the token out


def test_an_alert_label_the_model_does_not_have_is_refused_before_redis_is_asked(bundle):
    with pytest.raises(ConfigError, match="--alert-label 'angry' is not one of the model's labels: negative, neutral"):
        check_stream(str(bundle), StreamSettings(broker="redis://127.0.0.1:1/0", alert_label="angry"))


# -- the broker against a real redis-server -------------------------------------------------------


def test_a_commit_retried_after_it_applied_writes_nothing_twice(redis_server, predictor):
    client = redis_server.client()
    produce(client, 30)
    broker = open_broker(settings(redis_server), "a")
    broker.ensure_group()
    results = score_entries(predictor, broker.read(100, 100), broker.s)
    assert broker.commit(results) == 30
    assert broker.commit(results) == 0  # as after a reply lost on the way back
    assert client.xlen("scored") == 30 and broker.pending() == 0
    assert broker.totals()["scored"] == 30
    assert sum(sum(w["counts"].values()) for w in window_counts(redis_server.url, "scored")) == 30


def test_backfilled_entries_are_counted_in_the_windows_of_their_time_and_the_too_old_as_late(redis_server, predictor):
    client = redis_server.client()
    now = datetime.now(timezone.utc)
    days = [now - timedelta(days=d) for d in (1, 1, 3, 30)]  # the last is 29 days behind: past a 7-day keep
    for i, day in enumerate(days):
        client.xadd("comments", {"text": f"great service {i}", "brand": "acme", "created_at": day.isoformat()})
    client.xadd("comments", {"text": "great", "brand": "acme", "created_at": "soon"})
    s = settings(redis_server, time_field="created_at", window_s=86400)
    broker = open_broker(s, "a")
    broker.ensure_group()
    assert broker.commit(score_entries(predictor, broker.read(100, 100), s)) == 5
    windows = {w["window_start_ms"]: sum(w["counts"].values()) for w in window_counts(redis_server.url, "scored")}
    day_ms = [int(d.timestamp()) // 86400 * 86400 * 1000 for d in days]
    assert windows == {day_ms[0]: 2, day_ms[2]: 1}  # not the day it was streamed, nor the late one's
    # Late by the stream's own clock, the latest window counted in: a backfill of 2015 alone is not late.
    assert broker.totals() == {"scored": 4, "dead_lettered": 1, "late": 1, "window_s": 86400, "watermark": day_ms[0]}
    assert client.xlen("scored") == 4  # the late entry is scored, only not counted
    [dead] = outputs(client, "comments:dead-letter")
    assert dead["reason"].startswith("time field 'created_at': 'soon' does not parse")


MINUTE = 60_000


def commit_labelled(broker, client, rows: list[tuple[str, str, int]], text: str = "a comment") -> list[str]:
    """Entries added, read and committed with the labels and windows given as (key, label, window
    start): the commit script's view, with no model in between. Returns their ids."""
    pipe = client.pipeline(transaction=False)
    for key, _, _ in rows:
        pipe.xadd("comments", {"text": text, "brand": key})
    ids = [i.decode() for i in pipe.execute()]
    delivered = broker.read(len(rows), 100)
    assert [e.id for e in delivered] == ids
    results = [Result(i, [("source_id", i)], label, window, key) for i, (key, label, window) in zip(ids, rows)]
    assert broker.commit(results) == len(rows)
    return ids


def windows_of(key: str, shares: list[float], per_window: int, first: int) -> list[tuple[str, str, int]]:
    """`per_window` comments of `key` in each of consecutive minutes from `first`, the given share negative."""
    rows = []
    for w, share in enumerate(shares):
        negative = round(share * per_window)
        labels = ["negative"] * negative + ["positive"] * (per_window - negative)
        rows += [(key, label, (first + w) * MINUTE) for label in labels]
    return rows


def test_a_rise_in_one_keys_negative_share_raises_one_alert_once_its_window_closes(redis_server, capsys):
    client = redis_server.client()
    s = settings(redis_server, alert_label="negative", alert_threshold=0.2, alert_min_count=20)
    broker = open_broker(s, "a")
    broker.ensure_group()
    first = 29_000_000  # minutes since 1970: 2025
    rows = windows_of("globex", [0.1] * 6 + [0.6], 40, first)  # a burst in the 7th minute
    rows += windows_of("acme", [0.1] * 6 + [0.2], 40, first)  # quiet: under the threshold
    rows += windows_of("initech", [0.0] * 6 + [1.0], 3, first)  # a jump, on too few comments
    ids = commit_labelled(broker, client, rows)
    assert client.xlen("scored:alerts") == 0  # the 7th minute is still open
    commit_labelled(broker, client, [("acme", "positive", (first + 7) * MINUTE)])  # the stream moves on
    [alert] = broker_alerts(redis_server)
    assert (alert.key, alert.window_start_ms, alert.label) == ("globex", (first + 6) * MINUTE, "negative")
    assert (alert.count, alert.total, alert.baseline_count, alert.baseline_total) == (24, 40, 24, 240)
    assert (alert.share, alert.baseline, alert.baseline_windows) == (0.6, 0.1, 6) and alert.z > 5
    burst = ids[6 * 40 : 7 * 40]
    assert alert.examples == burst[:5] and set(alert.examples) <= set(burst)
    # More of that window, late, and a retried commit: the window has had its alert.
    commit_labelled(broker, client, [("globex", "negative", (first + 6) * MINUTE)] * 30)
    commit_labelled(broker, client, [("acme", "positive", (first + 8) * MINUTE)])
    assert client.xlen("scored:alerts") == 1 and broker.totals()["alerts"] == 1
    shown = cli_in_process(capsys, "stream-stats", "--broker", redis_server.url, "--output-stream", "scored").stdout
    assert "alerts, newest first (1):" in shown and "globex: negative 60% of 40 in the window from" in shown
    assert "against 10% over the 6 windows before" in shown


def test_a_window_closed_before_a_dead_consumers_entries_came_back_still_alerts(redis_server):
    client = redis_server.client()
    s = settings(redis_server, alert_label="negative", alert_threshold=0.2, alert_min_count=20)
    broker = open_broker(s, "a")
    broker.ensure_group()
    first = 29_000_000
    commit_labelled(broker, client, windows_of("globex", [0.1] * 6 + [0.1], 40, first))
    commit_labelled(broker, client, [("globex", "positive", (first + 7) * MINUTE)])  # closes minute 7
    assert client.xlen("scored:alerts") == 0
    # What a killed consumer held for minute 7 comes back after its window closed: counted, and checked.
    commit_labelled(broker, client, [("globex", "negative", (first + 6) * MINUTE)] * 20)
    [alert] = broker_alerts(redis_server)
    assert (alert.window_start_ms, alert.count, alert.total) == ((first + 6) * MINUTE, 24, 60)


def test_the_webhook_gets_each_alert_at_least_once_through_failures_and_a_restart(redis_server, caplog):
    client = redis_server.client()
    s = settings(redis_server, alert_label="negative", alert_threshold=0.2, alert_min_count=20)
    broker = open_broker(s, "a")
    broker.ensure_group()
    received: list[tuple[int, dict]] = []
    answers = [500, 500]  # then 200

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = answers.pop(0) if answers else 200
            received.append((status, body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/hook?token=s3cret"

    def send_until(done) -> None:
        sender = WebhookSender(url, redis_server.url, "scored")
        sender.start()
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.close()

    try:
        send_until(lambda: True)  # the driver's first run with a webhook: alerts from now on
        first = 29_000_000
        text = "@united lost my bag https://t.co/x2 call 555-123-4567"
        commit_labelled(broker, client, windows_of("globex", [0.1] * 6 + [0.6], 40, first), text=text)
        commit_labelled(broker, client, [("globex", "positive", (first + 7) * MINUTE)])
        send_until(lambda: len(received) == 1)  # stopped after a 500: the alert stays pending
        send_until(lambda: any(status == 200 for status, _ in received))  # the next run sends it again
    finally:
        receiver.shutdown()
    assert [status for status, _ in received] == [500, 500, 200]
    assert received[0][1] == received[2][1]
    sent = received[2][1]
    assert sent["text"].startswith("globex: negative 60% of 40 in the window from")
    assert sent["alert"]["key"] == "globex" and sent["alert"]["texts"] == ["@user lost my bag <url> call <phone>"] * 5
    assert client.xpending("scored:alerts", WEBHOOK_GROUP)["pending"] == 0
    assert int(client.hget("scored:totals", "webhook_failures")) == 2
    assert "webhook http://127.0.0.1:" in caplog.text and "s3cret" not in caplog.text


def broker_alerts(server):
    reader = open_reader(server.url)
    try:
        return reader.alerts("scored", 100)
    finally:
        reader.close()


def test_a_slow_consumer_cannot_commit_entries_another_consumer_took_over(redis_server, predictor):
    client = redis_server.client()
    produce(client, 20)
    s = settings(redis_server, claim_idle_ms=300)
    slow, other = open_broker(s, "slow"), open_broker(s, "other")
    slow.ensure_group()
    slow_batch = slow.read(100, 100)
    time.sleep(0.4)
    taken = other.read(100, 100)
    assert [e.id for e in taken] == [e.id for e in slow_batch] and {e.deliveries for e in taken} == {2}
    assert other.commit(score_entries(predictor, taken, s)) == 20
    assert slow.commit(score_entries(predictor, slow_batch, s)) == 0
    assert client.xlen("scored") == 20 and len({o["source_id"] for o in outputs(client)}) == 20


def test_an_entry_delivered_too_often_is_dead_lettered_and_acknowledged(redis_server, predictor):
    client = redis_server.client()
    produce(client, 1)
    s = settings(redis_server, claim_idle_ms=100, max_deliveries=2)
    broker = open_broker(s, "a")
    broker.ensure_group()
    for expected in (1, 2, 3):  # a consumer that dies before committing, again and again
        time.sleep(0.2)
        broker.last_claim = 0.0
        [delivered] = broker.read(10, 100)
        assert delivered.deliveries == expected
    assert broker.commit(score_entries(predictor, [delivered], s)) == 1
    [dead] = outputs(client, "comments:dead-letter")
    assert dead["reason"] == "delivered 3 times, more than --max-deliveries 2" and dead["brand"] == "acme"
    assert broker.pending() == 0 and client.xlen("scored") == 0


def test_a_group_started_at_new_skips_what_the_stream_already_holds(redis_server):
    client = redis_server.client()
    produce(client, 5)
    broker = open_broker(settings(redis_server, start="new"), "a")
    broker.ensure_group()
    assert broker.read(10, 100) == []
    [later] = produce(client, 1, seed=1)
    assert [e.id for e in broker.read(10, 100)] == [later]


# -- consumer actors on a real local Ray ----------------------------------------------------------


def run_until(runner: StreamRunner, done, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout}s: {runner.progress()}"
        runner.poll(timeout=0.2)


def check_exactly_once(server, produced: dict[str, str], predictor) -> None:
    """Every produced entry has exactly one output, with the predictor's probabilities; nothing is
    pending; the window counts add up to the outputs, per key and label."""
    client = server.client()
    out = outputs(client)
    assert len(out) == len(produced)
    assert sorted(o["source_id"] for o in out) == sorted(produced)
    assert client.xpending("comments", "ray-sentiment")["pending"] == 0
    texts = [produced[o["source_id"]] for o in out]
    got = np.array([[float(o[f"p_{label}"]) for label in predictor.labels] for o in out])
    np.testing.assert_allclose(got, predictor.predict_proba(texts), rtol=1e-5, atol=1e-6)
    counted: dict[tuple[str, str], int] = {}
    for w in window_counts(server.url, "scored", last=1000):
        for label, n in w["counts"].items():
            counted[(w["key"], label)] = counted.get((w["key"], label), 0) + n
    expected = {}
    for o in out:
        expected[(o["brand"], o["label"])] = expected.get((o["brand"], o["label"]), 0) + 1
    assert counted == expected and sum(counted.values()) == len(produced)


def test_every_entry_yields_exactly_one_output_and_bad_ones_a_dead_letter(ray_local, redis_server, bundle, predictor):
    client = redis_server.client()
    produced = produce(client, 5000)
    bad = [{"brand": "acme"}, {"text": ""}, {"text": b"\xc3\x28"}, {"text": "x" * 200_001}]
    for fields in bad:
        client.xadd("comments", fields)
    runner = StreamRunner(str(bundle), settings(redis_server, consumers=2, batch_size=200))
    try:
        run_until(runner, lambda: client.xlen("scored") + client.xlen("comments:dead-letter") >= 5004)
    finally:
        summary = runner.stop()
    check_exactly_once(redis_server, produced, predictor)
    dead = outputs(client, "comments:dead-letter")
    assert sorted(d["reason"] for d in dead) == sorted(
        [
            "entry has no 'text' field",
            "text is empty",
            "text is not valid UTF-8",
            "text is 200,001 characters, more than --max-text-chars 10,000",
        ]
    )
    assert (summary.scored, summary.dead_lettered, summary.pending, summary.restarted_consumers) == (5000, 4, 0, 0)


def produce_burst(client, predictor) -> tuple[dict[str, str], int]:
    """About 4,400 comments on three brands over ten recent minutes (by created_at), a tenth of
    them negative, but for globex in the ninth minute: 60%. The texts are picked by the label
    `predictor` gives them. Returns entry id → text, and the first minute's start (epoch s)."""
    pool = random_texts(6000, seed=3)
    by_label: dict[str, list[str]] = {}
    for text, label in zip(pool, predictor.predict(pool)):
        by_label.setdefault("negative" if label == "negative" else "other", []).append(text)
    start = (int(time.time()) // 60 - 20) * 60
    rows = []
    for minute in range(10):
        for brand in BRANDS:
            n = 40 if minute == 9 else 160
            share = 0.6 if (minute, brand) == (8, "globex") else 0.1
            negatives = round(share * n)
            for i in range(n):
                kind = "negative" if i < negatives else "other"
                text = by_label[kind][(len(rows) * 7 + i) % len(by_label[kind])]
                rows.append({"text": text, "brand": brand, "created_at": str(start + minute * 60 + i % 60)})
    pipe = client.pipeline(transaction=False)
    for fields in rows:
        pipe.xadd("comments", fields)
    return {id_.decode(): fields["text"] for id_, fields in zip(pipe.execute(), rows)}, start


def test_a_consumer_killed_mid_run_loses_duplicates_and_alerts_nothing_twice(ray_local, redis_server, hybrid_bundle):
    """SIGKILL one of two consumers while a burst is on its way: every entry scored once, the counts
    exact, and exactly one alert, for the burst's key and window; the quiet keys raise none."""
    client = redis_server.client()
    hybrid = Predictor.load(hybrid_bundle)  # gives some comments negative, some not
    produced, start = produce_burst(client, hybrid)
    alerting = dict(time_field="created_at", alert_label="negative", alert_threshold=0.2, alert_min_count=50)
    earlier = set(actor_pids("StreamConsumer"))  # an earlier test's consumers, which may still be ending
    runner = StreamRunner(str(hybrid_bundle), settings(redis_server, consumers=2, batch_size=20, **alerting))
    total = len(produced)
    try:
        run_until(runner, lambda: client.xlen("scored") >= 500)
        victims = actor_pids("StreamConsumer", besides=earlier)
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
        assert client.xlen("scored") < total * 0.8, "the burst was scored before the kill; the test proves nothing"
        run_until(
            runner,
            lambda: client.xlen("scored") >= total and client.xpending("comments", "ray-sentiment")["pending"] == 0,
        )
    finally:
        summary = runner.stop()
    check_exactly_once(redis_server, produced, hybrid)
    assert summary.restarted_consumers == 1 and summary.scored == total  # the killed one came back
    [alert] = broker_alerts(redis_server)
    assert (alert.key, alert.window_start_ms, alert.total) == ("globex", (start + 8 * 60) * 1000, 160)
    assert alert.share > alert.baseline + 0.2
    assert summary.alerts == 1


def test_a_redis_restart_mid_run_loses_and_duplicates_nothing(ray_local, redis_server, bundle, predictor):
    client = redis_server.client()
    produced = produce(client, 5000)
    runner = StreamRunner(str(bundle), settings(redis_server, consumers=1, batch_size=10))
    try:
        run_until(runner, lambda: client.xlen("scored") >= 500)
        redis_server.stop()
        time.sleep(2)
        redis_server.start()
        assert client.xlen("scored") < 5000, "the run ended before the restart; the test proves nothing"
        run_until(runner, lambda: client.xlen("scored") >= 5000)
    finally:
        summary = runner.stop()
    check_exactly_once(redis_server, produced, predictor)
    assert summary.pending == 0


def test_a_consumer_that_keeps_failing_is_reported_not_retried_forever(ray_local, redis_server, bundle):
    client = redis_server.client()
    produce(client, 10)
    runner = StreamRunner(str(bundle), settings(redis_server))
    try:
        run_until(runner, lambda: client.xlen("scored") >= 10)
        client.pipeline().delete("comments").set("comments", "not a stream any more").execute()  # atomic
        with pytest.raises(RaySentimentError, match="a stream consumer failed: .*WRONGTYPE"):
            run_until(runner, lambda: False, timeout=60)
    finally:
        runner.stop()


# -- the command line -----------------------------------------------------------------------------


def test_stream_command_scores_until_sigterm_then_exits_0(redis_server, ray_address, bundle):
    client = redis_server.client()
    produced = produce(client, 300)
    with cli_process(
        "stream",
        "--model",
        str(bundle),
        "--redis",
        redis_server.url,
        "--input-stream",
        "comments",
        "--output-stream",
        "scored",
        "--key-field",
        "brand",
        "--block-ms",
        "200",
        env={**os.environ, **ray_address},
    ) as proc:
        deadline = time.monotonic() + 120
        while client.xlen("scored") < 300 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "scored 300, dead-lettered 0, still pending 0" in out
    assert sorted(o["source_id"] for o in outputs(client)) == sorted(produced)

    stats = run_cli("stream-stats", "--broker", redis_server.url, "--output-stream", "scored", "--json", timeout=60)
    rows = [json.loads(line) for line in stats.stdout.splitlines()]
    assert sum(sum(r["counts"].values()) for r in rows) == 300 and {r["key"] for r in rows} == set(BRANDS)
    table = run_cli("stream-stats", "--redis", redis_server.url, "--output-stream", "scored", timeout=60)
    header, *lines = table.stdout.splitlines()
    assert header.split()[:4] == ["window", "start", "(UTC)", "key"] and header.split()[-1] == "total"
    assert sum(int(line.split()[-1]) for line in lines) == 300


def test_totals_that_redis_lost_are_carried_over_and_the_summary_says_so():
    """Redis restarted without persistence: its totals start again from 0 under a running stream."""
    totals = RunTotals({"scored": 100, "dead_lettered": 2})  # earlier runs' entries
    first = totals.update({"scored": 105, "dead_lettered": 3, "late": 2, "alerts": 1})
    assert first == {"scored": 5, "dead_lettered": 1, "late": 2, "alerts": 1}
    assert totals.update({}) == first and totals.lost  # the restart
    assert totals.update({"scored": 4}) == {**first, "scored": 9}
    line = StreamSummary(9, 1, 0, 0, 2.0, totals.lost, late=2, alerts=1).line()
    assert line.startswith("scored 9, dead-lettered 1,") and "Redis lost its totals during the run" in line
    assert "; 2 scored late, older than the counts keep behind the latest window, counted in no window" in line
    assert "; 1 alert(s) raised" in line


# -- passwords --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p%40ss:w@h/1", "rediss://user:***@h/1"),
        ("redis://pw-in-the-user-part@h:6379", "redis://***@h:6379"),
        ("redis://h:6379/0?password=pw&db=2", "redis://h:6379/0?password=***&db=2"),
        ("unix:///run/redis.sock?PASSWORD=pw", "unix:///run/redis.sock?PASSWORD=***"),
        ("redis://:pw@h:notaport/0", "redis://:***@h:notaport/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://[::1:6379/0", "<a URL that cannot be parsed>"),
    ],
)
def test_a_url_is_shown_without_its_password(url, shown):
    assert shown_url(url) == shown


def test_the_password_comes_from_the_environment_unless_the_url_has_one(monkeypatch):
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert with_password("redis://h/0") == "redis://h/0"
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss word")
    assert with_password("redis://h/0") == "redis://h/0?password=p%40ss%20word"
    assert with_password("redis://h/0?db=1") == "redis://h/0?db=1&password=p%40ss%20word"
    assert with_password("redis://:own@h/0") == "redis://:own@h/0"
    assert shown_url(with_password("redis://h/0")) == "redis://h/0?password=***"


def test_a_redis_password_never_shows_and_can_come_from_the_environment(redis_server, ray_address, bundle):
    """In no message of `stream` or `stream-stats` (server down, wrong password, none, a bad port),
    in no output and in no file Ray writes; and REDIS_PASSWORD reaches the consumer actors."""
    secret = f"S3cret{os.urandom(4).hex()}"
    redis_server.client().config_set("requirepass", secret)
    host = f"127.0.0.1:{redis_server.port}"
    refused = {
        f"redis://:{secret}@127.0.0.1:{free_port()}/0": "cannot reach Redis at redis://:***@127.0.0.1:",
        f"redis://:{secret}x@{host}/0": f"Redis at redis://:***@{host}/0 refused the user name or password",
        f"redis://{host}/0": f"Redis at redis://{host}/0: authentication required; set REDIS_PASSWORD",
        f"redis://:{secret}@127.0.0.1:notaport/0": "--broker 'redis://:***@127.0.0.1:notaport/0': Port could not",
    }
    started = time.time()
    try:
        commands = (["stream-stats"], ["stream", "--model", str(bundle), "--input-stream", "comments"])
        runs = [
            (message, [*command, "--redis", url, "--output-stream", "scored"])
            for url, message in refused.items()
            for command in commands
        ]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda run: run_cli(*run[1], timeout=120), runs))
        for (message, args), result in zip(runs, results):
            assert result.returncode == 2 and result.stderr.count("\n") == 1, (args, result.stderr)
            assert message in result.stderr and secret not in result.stdout + result.stderr, (args, result.stderr)

        env = {**os.environ, **ray_address, "REDIS_PASSWORD": secret}
        client = redis_server.client(password=secret)
        produce(client, 20)
        args = ["--input-stream", "comments", "--output-stream", "scored", "--block-ms", "200"]
        with cli_process("stream", "--model", str(bundle), "--redis", f"redis://{host}/0", *args, env=env) as proc:
            deadline = time.monotonic() + 120
            while client.xlen("scored") < 20 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "scored 20, dead-lettered 0" in out, err
        assert secret not in out + err
    finally:
        redis_server.client(password=secret).config_set("requirepass", "")
    leaks = [
        str(p)
        for p in Path(tempfile.gettempdir(), "ray").rglob("*")
        if p.is_file() and p.stat().st_mtime >= started - 1 and secret.encode() in p.read_bytes()
    ]
    assert leaks == []
