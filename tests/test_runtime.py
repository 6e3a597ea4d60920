"""The local cluster that the commands start: token authentication on, dashboard on loopback."""
import psutil
import requests


def test_local_cluster_requires_the_token_and_keeps_its_dashboard_on_loopback(ray_local):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()
    host, port = ray_local.worker.get_dashboard_url().rsplit(":", 1)
    assert host == "127.0.0.1"
    bound = [c.laddr.ip for p in psutil.Process().children(recursive=True)
             for c in _connections(p) if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)]
    assert bound == ["127.0.0.1"]  # the dashboard's HTTP server, jobs API included, and nothing else
    assert requests.get(f"http://127.0.0.1:{port}/api/jobs/", timeout=10).status_code == 401  # no token


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except psutil.Error:
        return []
