"""The local cluster that the commands start (token authentication on, dashboard on loopback), and
when a command works in its own process instead."""

import psutil
import pytest
import requests


def test_local_cluster_requires_the_token_and_keeps_its_dashboard_on_loopback(ray_local):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()
    host, port = ray_local.worker.get_dashboard_url().rsplit(":", 1)
    assert host == "127.0.0.1"
    bound = [
        c.laddr.ip
        for p in psutil.Process().children(recursive=True)
        for c in _connections(p)
        if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)
    ]
    assert bound == ["127.0.0.1"]  # the dashboard's HTTP server, jobs API included, and nothing else
    assert requests.get(f"http://127.0.0.1:{port}/api/jobs/", timeout=10).status_code == 401  # no token


# The autoscaler's and the dashboard head's: Ray 2.60 offers no way to move or stop them for a
# local node; SECURITY.md says so.
DOCUMENTED_METRICS_PORTS = {44217, 44227}


def test_local_cluster_serves_no_metrics_on_other_interfaces_but_the_documented_ones(ray_local):
    """Ray's Prometheus endpoints (no authentication) must not answer on the machine's address."""
    address = ray_local.util.get_node_ip_address()
    answering = []
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        for c in _connections(process):
            if c.status == psutil.CONN_LISTEN and not c.laddr.ip.startswith("127."):
                try:
                    response = requests.get(f"http://{address}:{c.laddr.port}/metrics", timeout=2)
                except requests.RequestException:
                    continue  # not HTTP: one of Ray's gRPC servers, which the token guards
                if (
                    response.status_code == 200
                    and "# TYPE" in response.text
                    and c.laddr.port not in DOCUMENTED_METRICS_PORTS
                ):
                    answering.append((process.name(), c.laddr.port))
    assert answering == []


def test_the_node_agent_listens_on_a_port_the_os_chose(ray_local):
    """Ray's default for it is one fixed port: a second local Ray on the machine (`score` started
    while `serve` runs, or the e2e tests beside the session's) retried it for 3.4 s at start-up
    and then ran without the agent's HTTP server."""
    from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT

    port = ray_local._private.worker.global_worker.node.dashboard_agent_listen_port
    assert port > 0 and port != DEFAULT_DASHBOARD_AGENT_LISTEN_PORT, port
    listening = {
        c.laddr.port
        for p in psutil.Process().children(recursive=True)
        for c in _connections(p)
        if c.status == psutil.CONN_LISTEN
    }
    assert port in listening and DEFAULT_DASHBOARD_AGENT_LISTEN_PORT not in listening


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except psutil.Error:
        return []


def test_a_small_local_input_is_worked_on_in_process_unless_ray_is_named_or_asked_for(tmp_path, monkeypatch):
    from ray_sentiment.errors import ConfigError
    from ray_sentiment.runtime import IN_PROCESS_ENV, in_process

    (tmp_path / "a.parquet").write_bytes(b"x" * 1000)
    files = [str(tmp_path / "a.parquet")]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    assert in_process(str(tmp_path), files) and not in_process("s3://bucket/a.parquet", files)
    for limit, here in (("0", False), ("999", False), ("1000", True)):
        monkeypatch.setenv(IN_PROCESS_ENV, limit)
        assert in_process(str(tmp_path), files) is here, limit
    monkeypatch.setenv(IN_PROCESS_ENV, "32M")
    with pytest.raises(ConfigError, match=r"RAY_SENTIMENT_IN_PROCESS_BYTES must be a number of bytes .*'32M'"):
        in_process(str(tmp_path), files)
    monkeypatch.setenv(IN_PROCESS_ENV, "1000")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster named: its Ray does the work
    assert not in_process(str(tmp_path), files)
