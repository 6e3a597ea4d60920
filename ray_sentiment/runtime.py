"""Connecting to Ray: the cluster named by RAY_ADDRESS (as inside `ray job submit`), else a new local one."""

from __future__ import annotations

import logging
import os
import signal
import threading

import ray


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # Ray (2.59 and later) turns token authentication on for a local cluster, and that token is
    # what keeps other machines out: Ray's own gRPC servers listen on every interface, and Ray
    # replaces a node address of 127.0.0.1 with the machine's own. The dashboard (jobs API) stays
    # on loopback. A test checks both.
    # "local" always starts a fresh instance: an address-less init would try to join whatever
    # cluster Ray's temp folder remembers, even one whose head was killed.
    # Metrics collection is off: its Prometheus endpoint would listen, unauthenticated, on every
    # interface (Ray binds it to loopback only when the node address is loopback, which it never is
    # here) and tell anyone session names, process ids and the machine's address.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        dashboard_host="127.0.0.1",  # the dashboard serves the state API that Ray Train relies on
        logging_level=logging.WARNING,
        _system_config={"enable_metrics_collection": False},
    )


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, for commands that finish their work in flight before exiting.
    Call it after Ray starts: ray.init installs a SIGTERM handler that exits at once."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def quiet_ray_data() -> None:
    """No per-operator progress bars from Ray Data: our own progress lines say what matters."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def cpus_per_process(count: int, use_gpu: bool) -> float:
    """CPUs to reserve for each of `count` Train workers or model actors: one each, unless that
    would leave no CPU for Ray Data's read and tokenise tasks, which then wait forever."""
    total = ray.cluster_resources().get("CPU", 1.0)
    if use_gpu or total - count >= 1:
        return 1.0
    return max(0.25, (total - 1) / count)
