"""ray-sentiment: train an LSTM on labelled comments, score them in batch, over HTTP and in streams."""

from importlib.metadata import version

from .predictor import Predictor

__version__ = version("ray-sentiment")
__all__ = ["Predictor", "__version__"]
