"""Stream scoring against a local redis-server: sustained throughput and end-to-end latency.

One run measures, on tweets resampled from tweets/train:
  1. the in-process ceiling: `Predictor.predict_proba` on batches of --batch-size, no Ray, no Redis;
  2. a plain consumer loop in this process, no Ray (read → score → commit, the same broker code),
     with a producer process adding entries at full speed;
  3. the Ray consumer actors (`StreamRunner`), same producer at full speed;
  4. the Ray consumer actors with the producer paced at half of (3)'s rate: latency from the input
     entry's id time to the output entry's id time (one Redis clock), p50 and p99;
  5. the plain loop of (2) in turns, without and with event time (a created_at per entry, 20 per
     second of event time, so 60-s windows close every 1,200 entries) and alerts on: the cost of
     both, as the median ratio on ÷ off;
  6. the live page (`ray-sentiment live`, its own process) in headless Chromium while the plain
     loop scores a producer paced at --page-rate: the delay from a commit (Redis' totals, sampled
     every 20 ms) to the page showing it (a MutationObserver on the page's totals, in the browser).
The model is the `seed` preset with untrained weights: speed does not depend on what they hold.
redis-server runs with its append-only file on (fsync every second), as an exactly-once feed would.

    python benchmarks/stream_throughput.py [--entries 60000] [--consumers 1] [--batch-size 256] \
        [--page-rate 2000] [--page-seconds 20]
"""

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.settings import StreamSettings
from ray_sentiment.stream.broker import open_broker
from ray_sentiment.stream.runner import StreamRunner, score_entries

from _common import DATASETS, add_json_option, finish, free_port, random_bundle, ratios

BRANDS = ["acme", "globex", "initech"]


def start_redis(directory: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


EVENT_START_S = 1_767_225_600  # 2026-01-01: event times, when the producer gives them
EVENTS_PER_S = 20


def produce(port: int, stream: str, texts: list[str], rate: float | None, event_time: bool = False) -> None:
    """Runs in its own process. Full speed: pipelines of 500 entries. Paced: 10 entries every 10/rate s."""
    client = redis.Redis(port=port)
    chunk = 10 if rate else 500
    started = time.perf_counter()
    for first in range(0, len(texts), chunk):
        if rate:
            time.sleep(max(0.0, started + first / rate - time.perf_counter()))
        pipe = client.pipeline(transaction=False)
        for i, text in enumerate(texts[first : first + chunk], first):
            fields = {"text": text, "brand": BRANDS[i % 3]}
            if event_time:
                fields["created_at"] = str(EVENT_START_S + i // EVENTS_PER_S)
            pipe.xadd(stream, fields)
        pipe.execute()


def start_producer(port: int, stream: str, texts: list[str], rate: float | None = None, event_time: bool = False):
    process = multiprocessing.get_context("spawn").Process(target=produce, args=(port, stream, texts, rate, event_time))
    process.start()
    return process


def wait_for_outputs(client: redis.Redis, stream: str, count: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while client.xlen(stream) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stream}: {client.xlen(stream)} of {count} outputs after {timeout}s")
        time.sleep(0.02)
    return time.perf_counter()


def plain_loop(
    settings: StreamSettings, predictor: Predictor, port: int, texts: list[str], rate: float | None = None
) -> float:
    """What a user would write without Ray: one process reading, scoring and committing."""
    client = redis.Redis(port=port)
    broker = open_broker(settings, "plain")
    broker.ensure_group()
    producer = start_producer(port, settings.input_stream, texts, rate, event_time=settings.time_field is not None)
    started, done = time.perf_counter(), 0
    while done < len(texts):
        entries = broker.read(settings.batch_size, settings.block_ms)
        if entries:
            done += broker.commit(score_entries(predictor, entries, settings))
    rate = len(texts) / (time.perf_counter() - started)
    producer.join()
    assert client.xlen(settings.output_stream) == len(texts)
    broker.close()
    return rate


def latencies_ms(client: redis.Redis, stream: str, after: bytes) -> np.ndarray:
    out = []
    for id_, fields in client.xrange(stream, min=b"(" + after):
        out.append(int(id_.split(b"-")[0]) - int(fields[b"source_id"].split(b"-")[0]))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=60_000, help="entries per throughput phase")
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--alert-rounds", type=int, default=3, help="turns of alerts off and on, half --entries each")
    parser.add_argument("--page-rate", type=float, default=2000.0, help="entries/s while the live page is timed")
    parser.add_argument("--page-seconds", type=float, default=20.0)
    add_json_option(parser)
    args = parser.parse_args()

    train = pd.read_parquet(DATASETS / "tweets/train.parquet")
    rng = np.random.default_rng(0)
    texts = [t for t in rng.choice(train["text"].to_numpy(), args.entries) if t.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = random_bundle(train["text"].tolist(), tmp / "bundle")
        redis_process, port = start_redis(tmp)
        client = redis.Redis(port=port)
        try:
            rows = measure(args, texts, bundle, port, client)
        finally:
            import ray

            ray.shutdown()
            redis_process.terminate()
            redis_process.wait()
    title = (
        f"seed preset, batch {args.batch_size}, {args.consumers} Ray consumer(s), {psutil.cpu_count()} CPUs, "
        f"{len(texts):,} entries per throughput phase; × plain loop: entries/s over the plain consumer loop's"
    )
    finish(ratios(rows, "entries/s", rows[1]["entries/s"], "× plain loop"), args, title)


def measure(args, texts: list[str], bundle: Path, port: int, client: redis.Redis) -> list[dict]:
    torch.set_num_threads(psutil.cpu_count())
    predictor = Predictor.load(bundle)
    predictor.predict_proba(texts[:2048])
    started = time.perf_counter()
    predictor.predict_proba(texts, batch_size=args.batch_size)
    ceiling = len(texts) / (time.perf_counter() - started)

    base = dict(broker=f"redis://127.0.0.1:{port}/0", key_field="brand", batch_size=args.batch_size, block_ms=100)
    plain = plain_loop(
        StreamSettings(**base, input_stream="plain", output_stream="plain:scored"), predictor, port, texts
    )

    settings = StreamSettings(**base, input_stream="comments", output_stream="scored", consumers=args.consumers)
    runner = StreamRunner(str(bundle), settings)
    warm_up = texts[:1000]
    start_producer(port, "comments", warm_up).join()
    wait_for_outputs(client, "scored", len(warm_up))  # actors built and warm

    producer = start_producer(port, "comments", texts)
    started = time.perf_counter()
    sustained = len(texts) / (wait_for_outputs(client, "scored", len(warm_up) + len(texts)) - started)
    producer.join()

    marker = client.xrevrange("scored", count=1)[0][0]
    wanted = int(sustained / 2 * args.latency_seconds)
    paced = (texts * (wanted // len(texts) + 1))[:wanted]
    producer = start_producer(port, "comments", paced, rate=sustained / 2)
    started = time.perf_counter()
    paced_rate = len(paced) / (wait_for_outputs(client, "scored", len(warm_up) + len(texts) + len(paced)) - started)
    producer.join()
    latency = latencies_ms(client, "scored", marker)
    summary = runner.stop()
    assert summary.pending == 0 and summary.scored == len(warm_up) + len(texts) + len(paced), summary.line()
    # Off and on in turns, on streams of their own, so that neither gets the quieter moments.
    alerting = dict(time_field="created_at", alert_label=predictor.labels[0], alert_min_count=30)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for turn in range(2 * args.alert_rounds):
        on = bool(turn % 2)
        names = dict(input_stream=f"turn{turn}", output_stream=f"turn{turn}:scored")
        s = StreamSettings(**base, **names, **(alerting if on else {}))
        rates[on].append(plain_loop(s, predictor, port, texts[: len(texts) // 2]))
    page = page_delays_ms(args, predictor, base, port, texts)
    return [
        {"measure": "in-process ceiling: Predictor.predict_proba", "entries/s": ceiling, "p50 ms": "", "p99 ms": ""},
        {"measure": "plain consumer loop, one process, no Ray", "entries/s": plain},
        {"measure": f"Ray consumers ({args.consumers}), producer at full speed", "entries/s": sustained},
        {
            "measure": f"Ray consumers, producer at {sustained / 2:,.0f}/s (half)",
            "entries/s": paced_rate,
            "p50 ms": float(np.percentile(latency, 50)),
            "p99 ms": float(np.percentile(latency, 99)),
        },
        {
            "measure": f"plain loop in turns: event time and alerts off (median of {args.alert_rounds})",
            "entries/s": float(np.median(rates[False])),
        },
        {
            "measure": f"plain loop in turns: event time and alerts on (median of {args.alert_rounds})",
            "entries/s": float(np.median(rates[True])),
            "on ÷ off": float(np.median(rates[True]) / np.median(rates[False])),
        },
        {
            "measure": f"live page: commit → shown in Chromium, producer at {args.page_rate:,.0f}/s",
            "entries/s": page["rate"],
            "p50 ms": float(np.percentile(page["delays"], 50)),
            "p99 ms": float(np.percentile(page["delays"], 99)),
        },
    ]


def page_delays_ms(args, predictor: Predictor, base: dict, port: int, texts: list[str]) -> dict:
    """The plain loop scores a paced producer while the page is open; commit times are sampled from
    Redis here, display times recorded in the browser, both on this machine's clock."""
    from conftest import chromium, wait_healthy

    wanted = int(args.page_rate * args.page_seconds)
    paced = (texts * (wanted // len(texts) + 1))[:wanted]
    s = StreamSettings(**base, input_stream="page", output_stream="page:scored", time_field="created_at")
    live_port = free_port()
    command = ["live", "--broker", s.broker, "--output-stream", "page:scored", "--port", str(live_port)]
    live = subprocess.Popen([sys.executable, "-m", "ray_sentiment.cli", *command], start_new_session=True)
    client = redis.Redis(port=port)
    commits: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            scored = int(client.hget("page:scored:totals", "scored") or 0)
            if not commits or scored > commits[-1][1]:
                commits.append((time.time() * 1000, scored))
            time.sleep(0.02)

    try:
        wait_healthy(f"http://127.0.0.1:{live_port}", timeout=60)
        with chromium(width=1000) as browser:
            browser.get(f"http://127.0.0.1:{live_port}/")
            browser.execute_script(RECORD_RENDERS)
            sampler = threading.Thread(target=sample)
            sampler.start()
            rate = plain_loop(s, predictor, port, paced, rate=args.page_rate)
            time.sleep(3)  # the last commit shown
            sampling.set()
            sampler.join()
            renders = browser.execute_script("return window.renders")
    finally:
        live.terminate()
        live.wait(30)
    delays = []
    for at, scored in commits[1:]:
        shown = next((t for t, n in renders if n >= scored), None)
        if shown is None:
            raise RuntimeError(f"the page never showed {scored} scored")
        delays.append(shown - at)
    return {"rate": rate, "delays": np.array(delays)}


# Installed in the page by the benchmark, not shipped in it: each change of the totals line, with the time.
RECORD_RENDERS = """
window.renders = [];
const totals = document.getElementById('totals');
new MutationObserver(() => window.renders.push([Date.now(), Number(totals.dataset.scored)]))
    .observe(totals, {attributes: true, childList: true, subtree: true});
"""


if __name__ == "__main__":
    main()
