"""Who may use a server this package opens (`serve`, `live`), and where it listens: the API key
from RAY_SENTIMENT_API_KEY, held only as a salted digest, and a socket bound to --host:--port
that says in one line what is wrong. Pure Python: starts nothing."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import sys
from dataclasses import dataclass

from .errors import ConfigError

API_KEY_ENV = "RAY_SENTIMENT_API_KEY"


@dataclass(frozen=True)
class KeyDigest:
    """A salted SHA-256 of the API key: what the replicas hold. The key itself never leaves the
    process that read it, so no runtime_env, deployment config or Ray log can carry it."""

    salt: str
    sha256: str

    @classmethod
    def of(cls, key: str) -> KeyDigest:
        salt = secrets.token_hex(16)
        return cls(salt, _sha256(salt, key))

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(_sha256(self.salt, key), self.sha256)

    def allows(self, scope) -> bool:
        """`Authorization: Bearer <key>`, the scheme in any case (RFC 7235)."""
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and self.matches(given.strip())


def _sha256(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode("utf-8", "surrogatepass")).hexdigest()


def api_key_digest() -> KeyDigest | None:
    """From RAY_SENTIMENT_API_KEY where it is set; an empty value is refused, not taken as 'no key'."""
    key = os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        raise ConfigError(f"{API_KEY_ENV} is set but empty; set a key, or unset it to serve without one")
    return KeyDigest.of(key)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port, or a ConfigError in one line naming what is wrong."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    return sock


def warn_if_open(host: str, *, what: str, exposes: str) -> KeyDigest | None:
    """The API key's digest, if one is set; without one, a warning when `host` is open to other
    machines. `what` listens there; anyone who reaches it can then `exposes`."""
    key = api_key_digest()
    if key is None and not is_loopback(host):
        print(
            f"warning: {what} on {host} without an API key: anyone who reaches this machine can {exposes}; "
            f"set {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )
    return key


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False
