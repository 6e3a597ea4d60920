"""Kept so that Serve config files written for earlier versions (`import_path:
ray_sentiment.serve:app_builder`) and the documented `ray_sentiment.serve.build`/`start` still
work; the code is in `serving/app.py`."""

from .serving.app import app_builder, build, start

__all__ = ["app_builder", "build", "start"]
