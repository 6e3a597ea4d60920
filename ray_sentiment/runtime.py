"""Connecting to Ray: the cluster named by RAY_ADDRESS (as inside `ray job submit`, or set from
`--address`), else a new local one."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import re
import signal
import socket
import sys
import threading

from .errors import ConfigError
from .storage import is_uri

# Loggers of Ray's libraries on the driver: quiet unless -v, since our own lines say what matters.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune")
_verbose = False


def set_verbose(verbose: bool) -> None:
    """-v: Ray's own log lines, warnings and worker output, as Ray prints them."""
    global _verbose
    _verbose = verbose


def ensure_ray(num_cpus: int | None = None) -> None:
    import ray  # here, not at the top: the checks before Ray import this module

    if ray.is_initialized():
        return
    quiet = not _verbose
    # Quiet: Ray logs only errors, and workers' output stays in Ray's log files (our progress
    # reaches the driver through progress.py, not stdout). The same on a cluster as on a local Ray.
    quiet_options = {"logging_level": logging.ERROR if quiet else logging.WARNING, "log_to_driver": not quiet}
    address = os.environ.get("RAY_ADDRESS")  # set by `ray job submit`, or by --address
    if address:
        _check_reachable(address)
        ray.init(address=address, **quiet_options)
    else:
        # Ray (2.59 and later) turns token authentication on for a local cluster, and that token is
        # what keeps other machines out: Ray's own gRPC servers listen on every interface, and Ray
        # replaces a node address of 127.0.0.1 with the machine's own. The dashboard (jobs API)
        # stays on loopback. A test checks both.
        # "local" always starts a fresh instance: an address-less init would try to join whatever
        # cluster Ray's temp folder remembers, even one whose head was killed.
        # Metrics collection is off: its Prometheus endpoint would listen, unauthenticated, on every
        # interface (Ray binds it to loopback only when the node address is loopback, which it never
        # is here) and tell anyone session names, process ids and the machine's address.
        with _agent_port_from_the_os():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                dashboard_host="127.0.0.1",  # the dashboard serves the state API that Ray Train relies on
                _system_config={"enable_metrics_collection": False},
                **quiet_options,
            )
    # Quiet, even Ray's ERROR lines go (a failed Ray Data task logs its traceback twice): the
    # failure reaches the user as our one error line, and -v shows Ray's own account of it.
    if quiet:
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        _drop_native_noise()
        _quiet_cluster_messages()
    configure_ray_data(logging.CRITICAL if quiet else logging.WARNING)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A head at HOST:PORT that does not answer: one line now, where ray.init would retry for minutes."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return  # "auto", or a scheme Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _agent_port_from_the_os():
    """Ray's per-node dashboard agent listens on one fixed port (52365) unless told otherwise, and
    ray.init cannot tell it (ray-project/ray#14763). So a second local Ray on the machine (`score`
    started while `serve` runs) had its agent retry that port for 3.4 s while ray.init waited, then
    run without its HTTP server. Here the OS picks a free port, as it does for Ray's other agents."""
    from ray._private import parameter

    ray_params = parameter.RayParams
    if "dashboard_agent_listen_port" not in inspect.signature(ray_params).parameters:
        yield  # a Ray that has no such setting any more: nothing to choose
        return

    class AgentPortFromTheOS(ray_params):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = AgentPortFromTheOS
    try:
        yield
    finally:
        parameter.RayParams = ray_params


# A line of Ray's C++ log: "[2026-11-29 13:46:31,152 E 27453 27453] core_worker.cc:2465: ...".
NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ ([IWEF]) \d+ \d+\] [\w.]+:\d+: ")
# Error lines Ray logs in normal operation: Ray Data's actors get their code through the object
# store, and Ray warns once per process that a restart would need it (ray-project/ray#53727);
# after a node is lost, Ray rebuilds the objects it held, and says so.
NATIVE_NOISE = (b"has constructor arguments in the object store", b"Attempting to recover")


def _drop_native_noise() -> None:
    """Ray's C++ core worker logs to this process's stderr (file descriptor 2), past Python's
    logging. Its info and warning lines, and the error lines it logs in normal operation, are
    dropped by a thread between descriptor 2 and the terminal; anything else, ours included,
    passes. Installed after ray.init, so Ray's daemons keep the real stderr."""
    read_end, write_end = os.pipe()
    terminal = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                native = NATIVE_LINE.match(line)
                if native and (native.group(1) in b"IW" or any(n in line for n in NATIVE_NOISE)):
                    continue
                os.write(terminal, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: the pipe closes, the thread writes what is left and ends
        # Ray's own exit hook runs after this one (registered before it, at ray.init), and its
        # core worker logs as it stops ("Attempting to recover ... lost objects" after a lost
        # node): stopped here, it does so through the filter.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stderr.flush()
        os.dup2(terminal, 2)
        thread.join(timeout=5)

    atexit.register(restore)


NODE_LOST = re.compile(r"node id: (\w+) and address: ([\w.:\[\]-]+).*has been marked dead")


def _quiet_cluster_messages() -> None:
    """Ray prints the cluster's error messages (a task it retries, a node marked dead) on the
    driver's stdout, past logging and log_to_driver. Quiet, they go: Ray's retries are how the
    commands survive a lost node, and say nothing the user must act on. A lost node is said in one
    line of ours on stderr."""
    from ray._private import worker

    if not hasattr(worker, "print_to_stdstream"):
        return  # a Ray that prints them some other way: they stay

    def print_ours(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            lost = NODE_LOST.search(line)
            if lost:
                print(
                    f"ray-sentiment: lost a node of the cluster (node {lost.group(1)[:12]} at {lost.group(2)}); "
                    "Ray retries its work on the others",
                    file=sys.stderr,
                    flush=True,
                )

    worker.print_to_stdstream = print_ours


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, for commands that finish their work in flight before exiting.
    Call it after Ray starts: ray.init installs a SIGTERM handler that exits at once."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def configure_ray_data(level: int) -> None:
    """No per-operator progress bars from Ray Data (our own progress lines say what matters), and
    a failed map's own exception, not Ray Data's text-only wrapper of it, so that errors.py can
    tell a user's error (a file that cannot be read) from a bug."""
    import ray.data  # first: importing it sets up its logger, which would undo the level set here

    logging.getLogger("ray.data").setLevel(level)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.raise_original_map_exception = True


# A local input up to this size, with no cluster to join, is worked on in this process: starting
# Ray costs more than the work (the 3,000 airline test tweets scored: under a second).
# $RAY_SENTIMENT_IN_PROCESS_BYTES changes it; 0: always on Ray.
IN_PROCESS_BYTES = 32 << 20
IN_PROCESS_ENV = "RAY_SENTIMENT_IN_PROCESS_BYTES"


def in_process(path: str, files: list[str]) -> bool:
    """Whether a command's input (`path`, listed as `files`) is small and local, with no
    RAY_ADDRESS (or --address) naming a cluster, so that Ray need not start for it."""
    if os.environ.get("RAY_ADDRESS") or is_uri(path):
        return False
    limit = os.environ.get(IN_PROCESS_ENV, "").strip()
    if limit and not limit.isdigit():
        raise ConfigError(f"${IN_PROCESS_ENV} must be a number of bytes (0: always use Ray), not {limit[:40]!r}")
    return sum(os.path.getsize(f) for f in files) <= (int(limit) if limit else IN_PROCESS_BYTES)


def cpus_per_process(count: int, use_gpu: bool) -> float:
    """CPUs to reserve for each of `count` Train workers or model actors: one each, unless that
    would leave a node that holds them too little for a Ray Data task (task_cpus), which would
    then wait forever. The processes spread over the nodes that have CPUs (a GPU cluster's head
    often has none), so the smallest such node decides. Never 0: a process that reserves no CPU
    may be placed on a head that has none."""
    if use_gpu:
        return 1.0
    nodes = cpu_nodes()
    if sum(nodes) - count >= 1:
        return 1.0
    per_node = -(-count // len(nodes))
    return min(1.0, max(0.01, (min(nodes) - task_cpus()) / per_node))


def task_cpus() -> float:
    """CPUs each Ray Data task beside the model actors asks for: one, or half of a 1-CPU node."""
    return min(1.0, min(cpu_nodes()) / 2)


def threads_per_actor(actors: int) -> int:
    """Torch threads for each of `actors` model actors: the CPUs of a node shared among the actors
    it will hold (actors spread over the nodes)."""
    nodes = cpu_nodes()
    return max(1, int(min(nodes) // -(-actors // len(nodes))))


def cpu_nodes() -> list[float]:
    """The CPUs of each live node that has any."""
    import ray

    nodes = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return [cpus for cpus in nodes if cpus > 0] or [1.0]
