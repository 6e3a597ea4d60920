"""ray-sentiment: train an LSTM on labelled comments, score them in batch, over HTTP and in streams."""

__version__ = "0.1.0"

from .predictor import Predictor  # noqa: E402

__all__ = ["Predictor", "__version__"]
