"""Training on Ray Train: the `train` and `pretrain` commands."""

from ..moved import moved

__getattr__ = moved(__name__, {"train": ".driver"})
