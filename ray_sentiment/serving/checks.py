"""`serve`'s checks before Ray starts: the bundle, the API key and the port."""

from __future__ import annotations

from ..access import bind, warn_if_open
from ..model.bundle import ModelBundle, load_bundle
from ..settings import ServeSettings


def check_serve(s: ServeSettings) -> ModelBundle:
    """The bundle, the API key (set but empty is refused) and the port (busy is refused); a
    warning when the host is open to other machines and no key is set. Returns the bundle."""
    bundle = load_bundle(s.model)
    warn_if_open(s.host, what="serving", exposes="use it")
    bind(s.host, s.port).close()
    return bundle
