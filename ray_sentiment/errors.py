"""The errors a user can cause, and how the CLI tells them from bugs.

A user error prints its message on one line and exits 2. Anything else is a bug in ray-sentiment:
exit 1, one line saying so and where the traceback was written (and the traceback itself under -v).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class RaySentimentError(Exception):
    """Base class: something the user can fix (a path, a column, an option, a file)."""


class DataError(RaySentimentError):
    """Input data is missing, unreadable, or not shaped as asked (columns, labels, rows)."""


class BundleError(RaySentimentError):
    """A model bundle directory is missing a part, or a part is corrupt."""


class InvalidTextError(RaySentimentError, ValueError):
    """Texts given to a predictor are null, not strings, or empty."""


class ConfigError(RaySentimentError, ValueError):
    """An option has an impossible value."""


class TrainingError(RaySentimentError):
    """Training cannot produce a usable model (non-finite weights or loss)."""


# Failures of the machines rather than of the input or the code: a worker, actor or node that died
# or ran out of memory. The user's remedy is to run again (a resume, for score); not a bug.
RAY_FAILURES = (
    "ActorDiedError",
    "ActorUnavailableError",
    "NodeDiedError",
    "ObjectLostError",
    "OutOfMemoryError",
    "RayActorError",
    "WorkerCrashedError",
)


def user_cause(exc: BaseException) -> BaseException | None:
    """The error a user can fix inside `exc`, which Ray may have wrapped (a task's error travels as
    its `cause`, Ray Data's as `__cause__`): ours, a file that cannot be opened or read, a schema or
    encoding problem (pyarrow), or a failed machine. None: `exc` is a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current = unwrapped(current)
        if _fixable(current):
            return current
        # Only an explicit `raise ... from`: a bug raised while handling an OSError is still a bug.
        current = current.__cause__
    return None


def unwrapped(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, out of the wrappers it reached the driver in (its `cause`),
    even a wrapper that is also an instance of it."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause  # type: ignore[attr-defined]
    return exc


def _fixable(exc: BaseException) -> bool:
    if isinstance(exc, (RaySentimentError, OSError, UnicodeError)):
        return True
    pyarrow = sys.modules.get("pyarrow")  # loaded wherever pyarrow could have raised
    if pyarrow is not None and isinstance(exc, pyarrow.ArrowException):
        return True
    return type(exc).__module__.startswith("ray.") and type(exc).__name__ in RAY_FAILURES


def user_message(exc: BaseException) -> str:
    """One line for the user: the error's own message (not a wrapper's traceback text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def user_errors(prefix: str) -> Iterator[None]:
    """Inside: an error a user can fix (see `user_cause`), even one Ray wrapped, becomes one
    DataError line, `prefix` + its message. Our own errors raised here pass unchanged, and so does
    anything else: that is a bug, and the CLI reports it as one."""
    try:
        yield
    except RaySentimentError:
        raise
    except Exception as exc:
        cause = user_cause(exc)
        if cause is None:
            raise
        raise DataError(f"{prefix}{user_message(cause)}") from None
