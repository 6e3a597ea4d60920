"""One app per port. Every replica of a Serve app binds its port with SO_REUSEPORT, and the kernel
lets any process of the same user join such a port, so two `serve` commands given one port would
both listen and split the clients between two models. Before it binds, a replica takes this
machine's lock for the port and asks whoever listens there which app it is; it binds only if
nobody listens or its own app does, and it holds the lock until it listens, so the next one sees it.

An app is the Serve application on one Ray cluster: a second `serve` on the same cluster replaces
the first (Serve's own rule), so it is let in; a `serve` on another cluster is not. This guards
against mistakes, not against the same user binding the port on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path

from .errors import ConfigError

APP_HEADER = "x-ray-sentiment-app"  # on /healthz answers: which app this server belongs to
LOCK_WAIT_S = 30.0


def app_identity(cluster: str, app_name: str) -> str:
    """A name for the app that says nothing about the cluster's address."""
    return hashlib.sha256(f"{cluster}/{app_name}".encode()).hexdigest()[:16]


@contextlib.asynccontextmanager
async def claimed_port(host: str, port: int, *, app: str, holder: str):
    """Held while a replica binds and starts listening; refuses, in one line, a port that another
    app listens on. `holder` is what a refused command is told about this one."""
    path = Path(tempfile.gettempdir()) / f"ray-sentiment-port-{port}.lock"
    with open(path, "a+", encoding="utf-8") as lock:
        await _lock(lock, port)
        try:
            listening = await asyncio.to_thread(app_on_port, host, port)
            if listening is not None and listening != app:
                lock.seek(0)
                who = lock.read().strip() if listening else ""
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {who or 'a server that is not this app'} listens there; "
                    "choose another --port"
                )
            yield
            lock.seek(0)
            lock.truncate()
            lock.write(holder)
            lock.flush()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def _lock(lock, port: int) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ConfigError(f"port {port}: another replica held its lock for {LOCK_WAIT_S:.0f} s") from None
            await asyncio.sleep(0.05)


def app_on_port(host: str, port: int, timeout: float = 5.0) -> str | None:
    """The app of the ray-sentiment server listening on host:port, "" for a listener that is not
    one (or does not answer), None if nothing listens."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
    except ConnectionRefusedError:
        return None
    except OSError:
        return ""
    for line in head.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == APP_HEADER.encode():
            return value.strip().decode("ascii", "replace")
    return ""


def holder_line(model: str) -> str:
    return f"ray-sentiment serving {model} (replica pid {os.getpid()})"
