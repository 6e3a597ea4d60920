"""Local paths and cloud URIs (s3://, gs://, file:// and whatever else pyarrow understands).

Credentials and endpoints come from the usual environment of each store (AWS_* for S3,
GOOGLE_APPLICATION_CREDENTIALS for GCS), so nothing here names a cloud."""

from __future__ import annotations

import contextlib
import os

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import BundleError, DataError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def resolve_filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or any URI pyarrow understands."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local directory's files to `uri` (a bundle: a handful of small files)."""
    with failing_as(BundleError, f"cannot write the model bundle to {uri}"):
        fs, target = resolve_filesystem(uri)
        fs.create_dir(target, recursive=True)
        pafs.copy_files(local_dir, target, destination_filesystem=fs)


def download_dir(uri: str, local_dir: str) -> None:
    """Copy the files directly under `uri` into a local directory: a bundle's parts, not the
    directories beside them (a teacher/, a pretrained/ encoder), which loading it does not read.
    A missing or non-directory URI is a BundleError."""
    with failing_as(BundleError, f"cannot read the model bundle at {uri}"):
        fs, source = resolve_filesystem(uri)
        if fs.get_file_info(source).type != pafs.FileType.Directory:
            raise BundleError(f"model bundle {uri} is not a directory")
        os.makedirs(local_dir, exist_ok=True)
        for info in fs.get_file_info(pafs.FileSelector(source)):
            if info.type == pafs.FileType.File:
                pafs.copy_files(info.path, os.path.join(local_dir, info.base_name), source_filesystem=fs)


def write_text(path: str, text: str) -> None:
    """Write a small text file (a report) to a local path or a URI."""
    with failing_as(DataError, f"cannot write {path}"):
        fs, target = resolve_filesystem(path)
        fs.create_dir(os.path.dirname(target), recursive=True)
        with fs.open_output_stream(target) as f:
            f.write(text.encode("utf-8"))


@contextlib.contextmanager
def failing_as(error: type[Exception], message: str):
    """pyarrow's and the OS's errors (no such bucket, no permission) as `error`, after `message`."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise error(f"{message}: {exc}") from None
