"""Kept for the documented `from ray_sentiment.score import score_parquet`; the code is in
`scoring/score.py`."""

from .scoring.score import score_parquet

__all__ = ["score_parquet"]
