"""The stream consumer: a comment log in, scored entries out, exactly once."""

from ..moved import moved

__getattr__ = moved(__name__, {"Broker": ".broker", "StreamRunner": ".runner"})
