"""Every runtime on a real multi-node Ray cluster, and a worker node killed mid-job: a head with no
CPUs and three 1-CPU worker nodes on this machine (tests/cluster.py), the bundle, inputs,
checkpoints and outputs in the S3 server's bucket, each command joined with --address as a user's
would be. The scenarios are benchmarks/chaos.py's, on small inputs, with Ray's head told to mark a
lost node dead in seconds rather than its default half-minute; entries are counted by id.

Ray's own account of a lost node (tasks retried, a node marked dead) never reaches the terminal;
ours is one line on stderr."""

import sys

import pytest

from conftest import ROOT, ray_lines

sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos

pytestmark = pytest.mark.integration
WORKER_NODES = {"node_a", "node_b", "node_c"}


@pytest.fixture(scope="module")
def cluster(session_s3, tmp_path_factory):
    c = chaos.ChaosCluster(
        session_s3, tmp_path_factory.mktemp("redis"), tmp_path_factory.mktemp("bundle"), quick_node_death=True
    )
    yield c
    c.stop()


@pytest.fixture
def restored(cluster):
    """Three worker nodes again after the previous test's kill."""
    cluster.restore()
    return cluster


def assert_nothing_lost(row: dict) -> None:
    details = row["stdout"][-2000:] + row["stderr"][-3000:]
    assert row["running_at_kill"], "the job ended before the kill; the test proves nothing"
    assert (row["out"], row["duplicated"], row["lost"]) == (row["in"], 0, 0), details
    assert row["exit"] == 0, details
    assert ray_lines(row["stdout"] + row["stderr"]) == [], details


def test_score_on_three_nodes_loses_and_duplicates_no_row_when_one_dies(restored):
    row = chaos.score(restored, rows=12_000)
    assert set(row["nodes"]) == WORKER_NODES  # one actor per node, none on the head
    assert_nothing_lost(row)
    assert not row["resumed"]  # Ray Data's retries finished the job: no resume was needed


def test_stream_consumers_on_two_nodes_lose_and_duplicate_no_entry_when_one_dies(restored):
    row = chaos.stream(restored, entries=5_000)
    assert len(row["nodes"]) == 2 and set(row["nodes"]) <= WORKER_NODES
    assert row["dead_letters"] == 0
    assert_nothing_lost(row)
    assert "scored 5000, dead-lettered 0, still pending 0" in row["stdout"]


def test_serve_on_two_nodes_answers_every_request_when_one_dies(restored):
    row = chaos.serve(restored, seconds=6)
    assert len(row["nodes"]) == 2 and set(row["nodes"]) <= WORKER_NODES
    assert "stopped in" in row["stdout"]  # its replicas and Serve's controller removed from the cluster
    row["running_at_kill"] = True  # the traffic ran on both sides of the kill
    assert_nothing_lost(row)
    assert row["other_statuses"] == {}
    # A reset per connection open at the kill, and at times a second on the retry, which can
    # reach the lost replica's socket before the kernel has closed it.
    assert row["resets"] <= 2 * 4
    assert len(row["nodes_after"]) == 2  # Serve replaced the lost replica on a surviving node
    assert row["in"] > 100


def test_train_on_two_nodes_resumes_from_the_checkpoint_in_the_bucket_when_one_dies(restored):
    row = chaos.train(restored, max_failures=1, epochs=3, rows=1500)
    assert len(row["nodes"]) == 2 and set(row["nodes"]) <= WORKER_NODES
    assert row["bundle_written"], row["stdout"][-2000:] + row["stderr"][-3000:]
    restarts = row["restarts"]
    assert len(restarts) == 1 and restarts[0]["resumed_after_epoch"] >= 1, restarts
    # The history runs on from the checkpoint: no epoch twice, none missing.
    assert row["epochs"] == list(range(1, len(row["epochs"]) + 1))
    assert len(row["epochs"]) == 3 or row["stopped_early"]
    row["in"] = len(row["epochs"])
    assert_nothing_lost(row)
    [kept] = row["checkpoints_kept"]  # the latest only, a restart's checkpoints included
    assert row["checkpoint"].endswith(f"/{kept}"), (row["checkpoint"], kept)


def test_train_without_max_failures_names_the_lost_node_and_writes_no_bundle(restored):
    row = chaos.train(restored, max_failures=0, epochs=3, rows=1500)
    assert row["running_at_kill"] and not row["bundle_written"]
    assert row["exit"] == 2, row["stdout"][-2000:] + row["stderr"][-3000:]
    error = row["stderr"].strip().splitlines()[-1]
    assert error.startswith("ray-sentiment: error: a training worker was lost: its node was lost (node ")
    assert "give --max-failures N" in error
    assert ray_lines(row["stdout"] + row["stderr"]) == []
