"""A worker node killed in the middle of each runtime's work, on a real multi-node Ray cluster on
this machine: a head with no CPUs (as a GPU cluster's head) and three worker nodes of one CPU each
(tests/cluster.py). The bundle, inputs, checkpoints and outputs live in an S3-compatible bucket
(moto's server), so no node reads the driver's disk. Every ray-sentiment command joins the cluster
with --address, as a user's would.

    python benchmarks/chaos.py [--rows 100000] [--entries 100000] [--runtimes score,stream,serve,train]

Per runtime, one row: what was killed and when, entries in and out, duplicated and lost (counted
by id, not by exit code), and recovery_s, the seconds from the kill until the runtime was whole
again: score and train, the job finished; stream, every entry out and none pending; serve, Serve
had started the replacement replica and it answered. tests/test_multinode.py runs the same
scenarios on small inputs and asserts 0 lost and 0 duplicated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import requests

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from cluster import BIN, HeadNode, free_port, wait_for  # noqa: E402

from _common import DATASETS, add_json_option, finish  # noqa: E402
from conftest import RedisServer, S3Server, random_texts, write_random_bundle  # noqa: E402

BRANDS = ["acme", "globex", "initech"]
WORKERS = ("node_a", "node_b", "node_c")


# Ray's head marks a node dead after missed health checks: by default about 15-30 s after it went.
# Tests, which count entries rather than time, set the checks this much faster.
# Not much faster: on a loaded machine a node that is slow to answer must not be taken for dead.
QUICK_NODE_DEATH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1500",
    "RAY_health_check_failure_threshold": "5",
}


class ChaosCluster:
    """The cluster, the bucket, a redis-server and a bundle in the bucket; `restore` brings the
    cluster back to three worker nodes after a kill. `quick_node_death`: see QUICK_NODE_DEATH."""

    def __init__(self, s3: S3Server, redis_dir: Path, bundle_dir: Path, quick_node_death: bool = False):
        self.s3 = s3
        self.head = HeadNode({**s3.env, **(QUICK_NODE_DEATH if quick_node_death else {})}, num_cpus=0)
        self.restore()
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(redis_dir)
        local, _ = write_random_bundle(bundle_dir / "bundle")
        self.bundle = s3.uri(f"chaos-{uuid.uuid4().hex[:8]}/bundle")
        pafs.copy_files(str(local), self.bundle.removeprefix("s3://"), destination_filesystem=s3.filesystem())

    def restore(self) -> None:
        """Three live worker nodes: those killed, or whose raylet is gone, started again."""
        for name in WORKERS:
            node = self.head.workers.get(name)
            if node is not None and node.raylet() is None:
                self.head.kill_worker(name)
            if name not in self.head.workers:
                self.head.add_worker(name)

    def command(self, *args: str) -> subprocess.Popen:
        """`ray-sentiment ARGS` joined to the cluster, in a process group of its own."""
        return subprocess.Popen(
            [str(BIN / "ray-sentiment"), args[0], "--address", self.head.address, *args[1:]],
            env=self.head.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def files(self, prefix: str) -> list[str]:
        listed = self.s3.filesystem().get_file_info(
            pafs.FileSelector(f"{S3Server.BUCKET}/{prefix}", allow_not_found=True)
        )
        return [f.path for f in listed if f.path.endswith(".parquet")]

    def stop(self) -> None:
        self.head.stop()
        self.redis.stop()


def ended(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", f"ran past {timeout} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def on_nodes(c: ChaosCluster, title: str, count: int, what: str) -> dict[int, str]:
    """Wait until `count` actors of that class run on `count` different worker nodes."""

    def spread():
        actors = c.head.actors(title)
        return actors if len(set(actors.values()) - {"head"}) >= count else None

    return wait_for(spread, 180, what)


def counted(ids: list, expected: set) -> dict:
    seen = Counter(ids)
    return {
        "in": len(expected),
        "out": len(ids),
        "duplicated": sum(n - 1 for n in seen.values()),
        "lost": len(expected - set(seen)),
    }


def score(c: ChaosCluster, rows: int) -> dict:
    """score --concurrency 3: one actor per node; the node of one is killed once output is being
    written. If the job fails instead of finishing, the resume (same command, --id-column)
    completes it, and the row says so."""
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    texts = random_texts(rows, seed=1)
    fs = c.s3.filesystem()
    for part, ids in enumerate(np.array_split(np.arange(rows), 6)):
        with fs.open_output_stream(f"{S3Server.BUCKET}/{prefix}/in/part-{part}.parquet") as f:
            pd.DataFrame({"id": ids, "text": [texts[i] for i in ids]}).to_parquet(f, index=False)
    args = ["--model", c.bundle, "--input", c.s3.uri(f"{prefix}/in"), "--output", c.s3.uri(f"{prefix}/out")]
    args += ["--id-column", "id", "--concurrency", "3", "--batch-size", "256"]
    proc = c.command("score", *args)
    actors = on_nodes(c, "MapWorker", 3, "score's actors on 3 nodes")
    victim = sorted(set(actors.values()) - {"head"})[-1]
    wait_for(lambda: c.files(f"{prefix}/out") or proc.poll() is not None, 300, "score's first output file")
    running_at_kill = proc.poll() is None
    killed_at = time.monotonic()
    c.head.kill_worker(victim)
    code, out, err = ended(proc)
    recovery = time.monotonic() - killed_at
    resumed = code != 0
    if resumed:
        c.restore()
        code, out, err = ended(c.command("score", *args))
        recovery = time.monotonic() - killed_at
    table = pads.dataset(c.files(f"{prefix}/out"), filesystem=fs, format="parquet").to_table(columns=["id"])
    return {
        "runtime": "score",
        "killed": f"{victim}, 1 of 3 actors, output being written",
        **counted(table["id"].to_pylist(), set(range(rows))),
        "recovery_s": recovery,
        "nodes": sorted(set(actors.values())),
        "running_at_kill": running_at_kill,
        "resumed": resumed,
        "exit": code,
        "stdout": out,
        "stderr": err,
    }


def stream(c: ChaosCluster, entries: int) -> dict:
    """stream --consumers 2, one per node; the node of one is killed a fifth of the way through."""
    client = c.redis.client()
    client.flushall()
    texts = random_texts(entries, seed=2)
    produced = set()
    for first in range(0, entries, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(entries, first + 1000)):
            pipe.xadd("comments", {"text": texts[i], "brand": BRANDS[i % 3]})
        produced.update(i.decode() for i in pipe.execute())
    args = ["--model", c.bundle, "--broker", c.redis.url, "--input-stream", "comments", "--output-stream", "scored"]
    args += ["--key-field", "brand", "--consumers", "2", "--batch-size", "100", "--block-ms", "200"]
    args += ["--claim-idle-ms", "2000"]
    proc = c.command("stream", *args)
    actors = on_nodes(c, "StreamConsumer", 2, "stream consumers on 2 nodes")
    wait_for(lambda: client.xlen("scored") >= entries // 5 or proc.poll() is not None, 300, "a fifth scored")
    before = client.xlen("scored")
    victim = sorted(set(actors.values()) - {"head"})[-1]
    killed_at = time.monotonic()
    c.head.kill_worker(victim)

    def whole():
        done = client.xlen("scored") + client.xlen("comments:dead-letter") >= entries
        return done and client.xpending("comments", "ray-sentiment")["pending"] == 0

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: whole() or proc.poll() is not None, 600, "every entry scored")
    recovery = time.monotonic() - killed_at
    proc.send_signal(signal.SIGTERM)
    code, out, err = ended(proc, timeout=120)
    ids = [fields[b"source_id"].decode() for _, fields in client.xrange("scored")]
    return {
        "runtime": "stream",
        "killed": f"{victim}, 1 of 2 consumers, {before:,} of {entries:,} scored",
        **counted(ids, produced),
        "recovery_s": recovery,
        "dead_letters": client.xlen("comments:dead-letter"),
        "nodes": sorted(set(actors.values())),
        "running_at_kill": before < entries,
        "exit": code,
        "stdout": out,
        "stderr": err,
    }


RESET_RETRIES = 3  # tries on a new connection after a reset, 0.2 s apart, as urllib3's Retry would


class Traffic:
    """Clients, each on its own keep-alive connection, asking one text at a time. A 503 is retried
    after its Retry-After; a reset connection is counted and the request retried on a new one,
    up to RESET_RETRIES times, as a client of any HTTP service does with an idempotent request.
    A request with no 200 after that is lost."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.stop = url, threading.Event()
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _client(self, i: int) -> None:
        session, n = requests.Session(), 0
        while not self.stop.is_set():
            n += 1
            self._count("requests")
            resets = 0
            while True:
                try:
                    answer = session.post(self.url, json={"texts": [f"client {i} request {n}"]}, timeout=30)
                except requests.ConnectionError:
                    self._count("connection_resets")
                    resets += 1
                    session = requests.Session()
                    if resets > RESET_RETRIES:
                        self._count("lost")
                        break
                    time.sleep(0.2)
                    continue
                if answer.status_code == 503 and "Retry-After" in answer.headers:
                    self._count("503_with_retry_after")
                    time.sleep(float(answer.headers["Retry-After"]))
                    continue
                self._count("ok" if answer.status_code == 200 else f"status_{answer.status_code}")
                break

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return self.counts


def serve(c: ChaosCluster, seconds: float = 10.0) -> dict:
    """serve --replicas 2, one per node, under steady traffic; the node of one is killed."""
    port = str(free_port())
    proc = c.command("serve", "--model", c.bundle, "--port", port, "--replicas", "2")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(base) or proc.poll() is not None, 300, "serve answering")
    actors = on_nodes(c, "ServeReplica", 2, "Serve replicas on 2 nodes")
    traffic = Traffic(f"{base}/v1/sentiment")
    time.sleep(seconds / 2)
    victim = sorted(set(actors.values()) - {"head"})[-1]
    killed_at = time.monotonic()
    c.head.kill_worker(victim)
    survivors = {pid for pid, node in actors.items() if node != victim}

    def replaced():
        now = c.head.actors("ServeReplica")
        return len(now) >= 2 and set(now) - survivors and _healthy(base)

    with contextlib.suppress(TimeoutError):
        wait_for(replaced, 300, "a replacement replica")
    recovery = time.monotonic() - killed_at
    time.sleep(seconds / 2)
    counts = traffic.finish()
    now = c.head.actors("ServeReplica")
    proc.send_signal(signal.SIGTERM)
    code, out, err = ended(proc, timeout=120)
    return {
        "runtime": "serve",
        "killed": f"{victim}, 1 of 2 replicas, under {len(traffic.threads)} clients",
        "in": counts["requests"],
        "out": counts["ok"],
        "duplicated": 0,  # a scoring request changes nothing: a retried one cannot count twice
        "lost": counts["requests"] - counts["ok"],
        "recovery_s": recovery,
        "resets": counts["connection_resets"],
        "503s": counts["503_with_retry_after"],
        "other_statuses": {k: v for k, v in counts.items() if k.startswith("status_")},
        "nodes": sorted(set(actors.values())),
        "nodes_after": sorted(set(now.values())),
        "exit": code,
        "stdout": out,
        "stderr": err,
    }


def _healthy(base: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{base}/healthz", timeout=5).status_code == 200
    return False


def train(c: ChaosCluster, max_failures: int = 1, epochs: int = 6, rows: int | None = None) -> dict:
    """train --num-workers 2 (one per node) on the airline train split (or `rows` of it) in the
    bucket, checkpoints in the bucket; once the first checkpoint is registered, the node of one
    worker is killed and a new node added. With --max-failures the run resumes from that
    checkpoint; without, it ends with one error line, and writes no bundle."""
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    fs = c.s3.filesystem()
    tweets = pd.read_parquet(DATASETS / "airline" / "tweets.parquet", columns=["text", "label", "split"])
    tweets = tweets[tweets["split"] == "train"].drop(columns="split")
    tweets = tweets.sample(rows, random_state=0) if rows else tweets
    with fs.open_output_stream(f"{S3Server.BUCKET}/{prefix}/train.parquet") as f:
        tweets.to_parquet(f, index=False)
    storage, bundle = f"{prefix}/checkpoints", f"{prefix}/bundle"
    args = ["--train", c.s3.uri(f"{prefix}/train.parquet"), "--output", c.s3.uri(bundle), "--preset", "seed"]
    args += ["--storage-path", c.s3.uri(storage), "--num-workers", "2", "--epochs", str(epochs), "--seed", "1"]
    args += ["--max-failures", str(max_failures)] if max_failures else []
    proc = c.command("train", *args)
    actors = on_nodes(c, "RayTrainWorker", 2, "Train workers on 2 nodes")

    def checkpointed():
        found = fs.get_file_info(
            pafs.FileSelector(f"{S3Server.BUCKET}/{storage}", recursive=True, allow_not_found=True)
        )
        return any(f.base_name == "checkpoint_manager_snapshot.json" for f in found) or proc.poll() is not None

    wait_for(checkpointed, 300, "the first checkpoint")
    running_at_kill = proc.poll() is None
    victim = sorted(set(actors.values()) - {"head"})[-1]
    killed_at = time.monotonic()
    c.head.kill_worker(victim)
    if max_failures:
        c.restore()  # a new node in its place, as an autoscaler would add: the restart needs two
    code, out, err = ended(proc, timeout=420)
    recovery = time.monotonic() - killed_at
    metrics = {}
    with contextlib.suppress(OSError), fs.open_input_stream(f"{S3Server.BUCKET}/{bundle}/metrics.json") as f:
        metrics = json.loads(f.read())
    stored = fs.get_file_info(pafs.FileSelector(f"{S3Server.BUCKET}/{storage}", recursive=True))
    kept = sorted({f.path.split("/")[-2] for f in stored if f.path.split("/")[-2].startswith("checkpoint_")})
    epochs_seen = [h["epoch"] for h in metrics.get("history", [])]
    return {
        "runtime": "train" if max_failures else "train, no --max-failures",
        "killed": f"{victim}, 1 of 2 workers, after the first checkpoint",
        "in": epochs,
        "out": len(epochs_seen),
        "duplicated": len(epochs_seen) - len(set(epochs_seen)),
        "lost": (metrics.get("epochs_run", 0) - len(set(epochs_seen))) if metrics else epochs,
        "recovery_s": recovery,
        "restarts": metrics.get("restarts", []),
        "epochs": epochs_seen,
        "stopped_early": metrics.get("stopped_early"),
        "nodes": sorted(set(actors.values())),
        "running_at_kill": running_at_kill,
        "bundle_written": bool(metrics),
        "checkpoint": metrics.get("checkpoint"),  # the one the bundle came from
        "checkpoints_kept": kept,
        "exit": code,
        "stdout": out,
        "stderr": err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows for score")
    parser.add_argument("--entries", type=int, default=100_000, help="entries for the stream")
    parser.add_argument("--runtimes", default="score,stream,serve,train")
    add_json_option(parser)
    args = parser.parse_args()
    import tempfile

    rows = []
    s3 = S3Server()
    with tempfile.TemporaryDirectory() as work:
        c = ChaosCluster(s3, Path(work) / "redis", Path(work))
        try:
            runs = {
                "score": lambda: score(c, args.rows),
                "stream": lambda: stream(c, args.entries),
                "serve": lambda: serve(c),
                "train": lambda: train(c),
            }
            for name in args.runtimes.split(","):
                row = runs[name]()
                c.restore()
                if row["exit"] != 0:
                    print(f"{name} exited {row['exit']}: {row['stderr'][-2000:]}", file=sys.stderr)
                rows.append({k: row[k] for k in ("runtime", "killed", "in", "out", "duplicated", "lost", "recovery_s")})
        finally:
            c.stop()
            s3.stop()
    finish(rows, args, "A worker node killed mid-job (head with no CPUs, three 1-CPU worker nodes, one machine)")


if __name__ == "__main__":
    main()
