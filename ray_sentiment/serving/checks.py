"""`serve`'s checks before Ray starts: the bundle, the API key and the port."""

from __future__ import annotations

import sys

from ..access import API_KEY_ENV, api_key_digest, bind, is_loopback
from ..model.bundle import ModelBundle, load_bundle
from ..settings import ServeSettings


def check_serve(s: ServeSettings) -> ModelBundle:
    """The bundle, the API key (set but empty is refused) and the port (busy is refused); a
    warning when the host is open to other machines and no key is set. Returns the bundle."""
    bundle = load_bundle(s.model)
    if api_key_digest() is None and not is_loopback(s.host):
        print(
            f"warning: serving on {s.host} without an API key: anyone who reaches this machine can use it; "
            f"set {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )
    bind(s.host, s.port).close()
    return bundle
