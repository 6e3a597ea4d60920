"""`ray-sentiment live` as a user runs it: the command's own process against a real redis-server,
fed by a real consumer loop, its page opened in headless Chromium and read from the DOM."""

import os
import socket
import threading
import time

import pandas as pd
import pytest
import requests
from selenium.webdriver.support.wait import WebDriverWait
from test_stream import MINUTE, commit_labelled, windows_of

from ray_sentiment import Predictor
from ray_sentiment.settings import LiveSettings, StreamSettings
from ray_sentiment.stream.broker import open_broker, window_counts
from ray_sentiment.stream.runner import score_entries

from conftest import ARTIFACTS, chromium, cli_in_process, cli_process, dataset, free_port, wait_healthy

AIRLINE = dict(
    input_stream="comments",
    output_stream="scored",
    key_field="airline",
    time_field="created_at",
    time_format="%m/%d/%Y %H:%M",
    window_s=86400,
    alert_label="negative",
    alert_min_count=30,
)


def stream_airline_tweets(server, predictor, stop: threading.Event) -> int:
    """The airline test tweets with their created_at, added as fast as Redis takes them while one
    consumer loop (read, score, commit: what each consumer actor runs) keeps up. Returns how many."""
    tweets = pd.read_parquet(dataset("airline/tweets.parquet"), columns=["text", "airline", "created_at", "split"])
    tweets = tweets[tweets.split == "test"].drop(columns="split")
    client = server.client()

    def produce() -> None:
        for start in range(0, len(tweets), 200):
            pipe = client.pipeline(transaction=False)
            for row in tweets.iloc[start : start + 200].itertuples(index=False):
                pipe.xadd("comments", row._asdict())
            pipe.execute()

    producer = threading.Thread(target=produce)
    producer.start()
    s = StreamSettings(broker=server.url, batch_size=256, block_ms=100, **AIRLINE)
    broker = open_broker(s, "consumer-0")
    broker.ensure_group()
    done = 0
    while done < len(tweets) and not stop.is_set():
        entries = broker.read(s.batch_size, s.block_ms)
        done += broker.commit(score_entries(predictor, entries, s)) if entries else 0
    producer.join()
    broker.close()
    return len(tweets)


def shown_counts(browser) -> dict[tuple[str, str], int]:
    """Per key and label, the counts the page shows for its windows, read from the DOM."""
    cells = browser.execute_script(
        "return [...document.querySelectorAll('section[data-key] tr[data-row=shown] td[data-count]')]"
        ".map(td => [td.closest('section').dataset.key, td.dataset.count, td.textContent])"
    )
    return {(key, label): int(text) for key, label, text in cells if label != "total"}


def redis_counts(server, windows: int) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for row in window_counts(server.url, "scored", windows):
        for label, n in row["counts"].items():
            counts[(row["key"], label)] = counts.get((row["key"], label), 0) + n
    return counts


def test_the_page_follows_a_backfill_of_airline_tweets_and_shows_what_redis_holds(redis_server, hybrid_bundle):
    port = free_port()
    with cli_process(
        "live", "--broker", redis_server.url, "--output-stream", "scored", "--port", str(port), "--refresh-ms", "500"
    ) as live:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60, explain=lambda: live.stderr.read() if live.poll() is not None else "")
        with chromium(width=1100) as browser:
            browser.get(url)
            stop = threading.Event()
            streamed = stream_airline_tweets(redis_server, Predictor.load(hybrid_bundle), stop)
            committed_at = time.monotonic()
            expected = redis_counts(redis_server, LiveSettings().windows)
            late = int(redis_server.client().hget("scored:totals", "late"))
            assert late == 1  # the one tweet of 16 February: over the 7 days kept behind the 24th
            assert sum(expected.values()) == streamed - late
            while shown_counts(browser) != expected:
                assert time.monotonic() - committed_at < 15, (shown_counts(browser), expected)
                time.sleep(0.1)
            keys = browser.execute_script("return [...document.querySelectorAll('section[data-key]')].length")
            assert keys == len({key for key, _ in expected}) == 6  # the six airlines
            bars = browser.execute_script("return document.querySelectorAll('section[data-key] svg rect').length")
            assert bars >= 6 * 3
            scored = browser.execute_script("return document.getElementById('totals').dataset.scored")
            assert int(scored) == streamed
            errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
            assert errors == []
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "live.png"))
        with chromium(width=390) as phone:  # an iPhone's width: nothing wider than the screen
            phone.get(url)
            # drawn once its first fetch comes back, which a busy machine can delay
            WebDriverWait(phone, 15).until(lambda d: d.find_elements("css selector", "section[data-key]"))
            assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        data = requests.get(f"{url}/v1/live", timeout=10).json()
        assert data["window_s"] == 86400 and data["labels"] == ["negative", "neutral", "positive"]
        assert {k["key"]: sum(k["counts"].values()) for k in data["keys"]} == {
            key: sum(n for (k, _), n in expected.items() if k == key) for key, _ in expected
        }
        assert requests.post(f"{url}/v1/live", timeout=10).status_code == 405
        live.terminate()
        assert live.wait(30) == 0 and live.stderr.read() == ""


def test_with_an_api_key_the_data_needs_it_and_examples_are_shown_redacted(redis_server):
    client = redis_server.client()
    s = StreamSettings(
        broker=redis_server.url, output_stream="scored", key_field="brand", alert_label="negative", alert_min_count=20
    )
    broker = open_broker(s, "a")
    broker.ensure_group()
    first = int(time.time()) // 60 - 30  # minutes since 1970
    text = "@united lost my bag, see https://t.co/x2 or call 555-123-4567"
    commit_labelled(broker, client, windows_of("globex", [0.1] * 6 + [0.7], 40, first), text=text)
    commit_labelled(broker, client, [("globex", "positive", (first + 7) * MINUTE)])
    client.xadd("scored:alerts", {"key": "someone else's entry"})  # not ours: left out, not a 500
    port = free_port()
    env = {**os.environ, "RAY_SENTIMENT_API_KEY": "k3y"}
    args = ["live", "--broker", redis_server.url, "--output-stream", "scored", "--port", str(port)]
    with cli_process(*args, env=env):
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60)
        assert requests.get(f"{url}/v1/live", timeout=10).status_code == 401
        assert requests.get(url, timeout=10).status_code == 200  # the page holds no data
        answer = requests.get(f"{url}/v1/live", headers={"Authorization": "Bearer k3y"}, timeout=10)
        [alert] = answer.json()["alerts"]
        assert alert["key"] == "globex" and alert["texts"] == ["@user lost my bag, see <url> or call <phone>"] * 5
        with chromium(width=1000) as browser:
            browser.get(url)
            browser.find_element("id", "key").send_keys("k3y")
            browser.find_element("css selector", "#key-form button").click()
            shown = WebDriverWait(browser, 15).until(
                lambda b: b.find_element("css selector", "section[data-key=globex] .alert li")
            )
            assert shown.text == "@user lost my bag, see <url> or call <phone>"
            page = browser.page_source
            assert "555-123" not in page and "t.co" not in page and "@united" not in page
        redis_server.stop()  # Redis away: said, and the page says it is not updating
        time.sleep(1.2)  # past the snapshot's second
        away = requests.get(f"{url}/v1/live", headers={"Authorization": "Bearer k3y"}, timeout=30)
        assert away.status_code == 503 and away.json()["detail"].startswith("cannot reach Redis at redis://127.0.0.1:")


def test_the_command_refuses_a_busy_port_an_unreachable_redis_and_bad_settings(capsys, redis_server, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = cli_in_process(capsys, "live", "--broker", redis_server.url, "--output-stream", "s", "--port", port)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    unreachable = cli_in_process(capsys, "live", "--broker", "redis://:pw@127.0.0.1:1/0", "--output-stream", "s")
    assert unreachable.returncode == 2 and "cannot reach Redis at redis://:***@127.0.0.1:1/0" in unreachable.stderr
    assert "pw@" not in unreachable.stderr
    args = ["live", "--broker", "redis://127.0.0.1:1/0", "--output-stream", "s", "--host", "0.0.0.0"]
    unkeyed = cli_in_process(capsys, *args)
    assert unkeyed.stderr.startswith("warning: the live page on 0.0.0.0 without an API key: anyone who reaches")
    monkeypatch.setenv("RAY_SENTIMENT_API_KEY", " ")
    empty = cli_in_process(capsys, "live", "--broker", redis_server.url, "--output-stream", "s")
    assert empty.returncode == 2 and "RAY_SENTIMENT_API_KEY is set but empty" in empty.stderr
    with pytest.raises(Exception, match="--refresh-ms must be between 200 and 60000"):
        LiveSettings(refresh_ms=50)
