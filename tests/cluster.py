"""A real Ray cluster on this machine, started as a user starts one: `ray start --head`, then worker
nodes with `ray start --address`, each a raylet with its own resources and object store. Each
node's daemons share a process group; its workers (which Ray starts in sessions of their own) are
the raylet's children. So a test can end one node whole, SIGKILL to its raylet and its workers at
once, as when a machine vanishes, and end everything, whatever happens.

Used by test_jobs.py (one head), test_multinode.py and benchmarks/chaos.py (a head with no CPUs
and worker nodes of one CPU each, as a GPU cluster's head has none to spare)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
TIMEOUT_S = 300
NODE_PORTS = (  # each node's own; Ray's defaults would collide between nodes on one machine
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start` and the daemons it leaves behind, all in one process group of their own."""

    def __init__(self, env: dict, temp_dir: str, *args: str):
        ports = [x for flag in NODE_PORTS for x in (flag, str(free_port()))]
        command = [str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, *ports, *args]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.group = self.process.pid  # once `ray start` has exited, its group lives on in the daemons
        out, _ = self.process.communicate(timeout=TIMEOUT_S)
        if self.process.returncode != 0:
            self.kill()  # what it started before failing
            raise RuntimeError(f"ray start failed:\n{out[-3000:]}")

    def daemons(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(process.pid) == self.group:
                    found.append(process)
        return found

    def raylet(self) -> psutil.Process | None:
        for process in self.daemons():
            with contextlib.suppress(psutil.Error):
                if process.name() == "raylet":
                    return process
        return None

    def kill(self) -> None:
        """SIGKILL to the raylet, its workers and the node's other daemons, all at once."""
        raylet = self.raylet()
        workers = raylet.children(recursive=True) if raylet else []
        for process in workers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)


class HeadNode(RayNode):
    """The head: GCS, dashboard (jobs API) on 127.0.0.1, token authentication. `env` is what a
    client (`ray job submit`, `serve deploy`, a ray-sentiment command) needs to join it."""

    def __init__(self, extra_env: dict, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="rs-head-", dir="/tmp")  # short: Ray's socket paths
        self.port = free_port()
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            **extra_env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": os.urandom(16).hex(),
            # the cluster runs this virtualenv's python for `python jobs/...`
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.workers: dict[str, WorkerNode] = {}
        super().__init__(
            self.env,
            self.temp_dir,
            "--head",
            "--port",
            str(self.port),
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            self.dashboard.rsplit(":", 1)[1],
            "--num-cpus",
            str(num_cpus),
            "--disable-usage-stats",
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_worker(self, name: str, num_cpus: int = 1) -> WorkerNode:
        """A worker node advertising the custom resource `name` (e.g. node_a), so that a test can
        see and force where things run."""
        self.workers[name] = WorkerNode(self, name, num_cpus)
        return self.workers[name]

    def kill_worker(self, name: str) -> None:
        self.workers.pop(name).kill()

    def actors(self, title_prefix: str) -> dict[int, str]:
        """This cluster's processes running an actor whose class name starts so (Ray titles them
        "ray::Class..."), each with the name of its node ("head" for the head's)."""
        found = {}
        for name, node in [("head", self), *self.workers.items()]:
            raylet = node.raylet()
            for process in raylet.children(recursive=True) if raylet else []:
                with contextlib.suppress(psutil.Error):
                    title = process.cmdline()[:1]
                    if title and title[0].startswith(f"ray::{title_prefix}"):
                        found[process.pid] = name
        return found

    def stop(self) -> None:
        for node in self.workers.values():
            node.kill()
        self.kill()
        # The address file of this (now dead) cluster lives in its own temp folder, so no later
        # address-less ray.init() can try to join it.
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class WorkerNode(RayNode):
    def __init__(self, head: HeadNode, name: str, num_cpus: int):
        self.name = name
        resources = json.dumps({name: 1})
        super().__init__(
            head.env, head.temp_dir, "--address", head.address, "--num-cpus", str(num_cpus), "--resources", resources
        )


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.2):
    """condition()'s first truthy value, polled; TimeoutError naming `what` if none comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"not within {timeout:.0f} s: {what}")
