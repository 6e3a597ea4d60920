"""The errors a user can cause. The CLI prints their message on one line and exits 2."""

import re


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


def user_message(exc: BaseException) -> str:
    """The message a user needs from an exception that Ray may have wrapped around a traceback."""
    lines = [line.strip() for line in (str(exc).strip() or type(exc).__name__).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Invalid)\b.*:", line)]
    return raised[-1] if raised else lines[0]
