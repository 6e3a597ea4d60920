"""ray-sentiment: train an LSTM on labelled comments, score them in batch, over HTTP and in streams."""

from importlib.metadata import version

__version__ = version("ray-sentiment")
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Imported on first use: the command line refuses bad input before torch is loaded.
    if name == "Predictor":
        from .model.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'ray_sentiment' has no attribute {name!r}")
