"""User errors against bugs: what a user can fix becomes one line (exit 2), anything else is a
bug (exit 1, with its traceback written down), even when Ray wrapped it."""

import pyarrow as pa
import pytest
from ray.exceptions import RayTaskError

from ray_sentiment import cli
from ray_sentiment.errors import DataError, user_cause, user_errors


def wrapped(cause: Exception) -> RayTaskError:
    """The error a Ray task's exception reaches the driver as (Ray's own class, no Ray started)."""
    return RayTaskError("read_parquet", "Traceback (most recent call last):\n  ...", cause)


def test_what_a_user_can_fix_is_found_inside_rays_wrapper():
    arrow = pa.lib.ArrowInvalid("Parquet magic bytes not found in footer")
    assert user_cause(wrapped(arrow)) is arrow
    assert user_cause(wrapped(arrow).as_instanceof_cause()) is arrow
    missing = FileNotFoundError("no such file: a.parquet")
    assert user_cause(wrapped(missing)) is missing
    ours = DataError("a.csv has no column 'text'")
    assert user_cause(wrapped(ours)) is ours


def test_a_bug_is_not_taken_for_a_user_error_even_inside_rays_wrapper():
    assert user_cause(KeyError("label")) is None
    try:  # a bug in the handling of a missing file is a bug
        try:
            raise FileNotFoundError("a.parquet")
        except FileNotFoundError:
            {}["label"]
    except KeyError as bug:
        assert bug.__context__ is not None and user_cause(bug) is None
    assert user_cause(wrapped(KeyError("label"))) is None
    assert user_cause(wrapped(TypeError("unsupported operand")).as_instanceof_cause()) is None


def test_user_errors_turns_only_fixable_errors_into_one_line():
    fixable = r"^cannot read a\.parquet: Parquet magic bytes not found in footer$"
    with pytest.raises(DataError, match=fixable), user_errors("cannot read a.parquet: "):
        raise wrapped(pa.lib.ArrowInvalid("Parquet magic bytes not found in footer"))
    ours = "^a.csv has no column 'text'$"  # passes unchanged
    with pytest.raises(DataError, match=ours), user_errors("cannot read a.csv: "):
        raise DataError("a.csv has no column 'text'")
    with pytest.raises(RayTaskError) as bug, user_errors("cannot read a.parquet: "):
        raise wrapped(KeyError("label"))
    assert isinstance(bug.value.cause, KeyError)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_exits_1_with_one_line_naming_where_its_traceback_is(monkeypatch, tmp_path, capsys, verbose):
    def buggy(args):
        raise wrapped(KeyError("label"))

    monkeypatch.setattr(cli, "run", buggy)  # no real bug to trigger: this one stands in for it
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code = cli.main(["predict", "--model", "m", "x", *(["-v"] if verbose else [])])
    err = capsys.readouterr().err
    [written] = tmp_path.glob("ray-sentiment-bug-*.txt")
    assert code == 1
    assert "KeyError" in written.read_text() and "Traceback" in written.read_text()
    last = err.strip().splitlines()[-1]
    assert last.startswith("ray-sentiment: internal error, a bug in ray-sentiment") and "KeyError: 'label'" in last
    assert str(written) in last
    assert ("Traceback" in err) == verbose and (len(err.strip().splitlines()) == 1) != verbose


@pytest.mark.integration
def test_ray_datas_own_wrapping_keeps_a_bug_a_bug_and_a_missing_file_the_users(ray_local):
    rows = ray_local.data.from_items([{"x": 1}, {"x": 2}])

    def buggy(batch):
        return {"y": batch["no such column"]}

    def missing(batch):
        raise FileNotFoundError("[Errno 2] No such file or directory: 'a.parquet'")

    with pytest.raises(Exception) as bug, user_errors("scoring: "):
        rows.map_batches(buggy).materialize()
    assert not isinstance(bug.value, DataError) and user_cause(bug.value) is None
    gone = r"^scoring: \[Errno 2\] No such file or directory: 'a.parquet'$"
    with pytest.raises(DataError, match=gone), user_errors("scoring: "):
        rows.map_batches(missing).materialize()


def test_a_fixable_error_reaching_the_cli_unwrapped_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    def denied(args):
        raise wrapped(PermissionError("[Errno 13] Permission denied: 'out/scored.parquet'"))

    monkeypatch.setattr(cli, "run", denied)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert cli.main(["predict", "--model", "m", "x"]) == 2
    assert capsys.readouterr().err == "ray-sentiment: error: [Errno 13] Permission denied: 'out/scored.parquet'\n"
    assert not list(tmp_path.iterdir())  # not a bug: no traceback file


def test_a_training_worker_lost_with_its_node_is_a_machine_failure_however_ray_train_reports_it():
    """Ray Train reports a worker whose node died either as Ray's actor error or as a failed health
    check holding it (seen once the multi-node test's kill landed between epochs); its own error is a bug."""
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from ray_sentiment.train.driver import machine_failed

    def group(failure: Exception) -> WorkerGroupError:
        return WorkerGroupError("Training failed due to worker errors:", {1: failure})

    assert machine_failed(group(ActorDiedError()))
    assert machine_failed(group(WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError())))
    assert machine_failed(group(RuntimeError("[../third_party/gloo] Connection reset by peer")))
    assert not machine_failed(group(ValueError("a bug of ours")))
    assert not machine_failed(group(WorkerHealthCheckFailedError("A worker health check failed.", ValueError("x"))))
