"""The `score` output directory: which files a run wrote, so that no other file is ever deleted.

A run first writes a marker file (`_ray_sentiment_score.json`, listing its run id) and then only
files named `scored-<run id>_*.parquet`. A later run with --overwrite deletes exactly those files;
a resume (an id column) reads them. A directory holding anything else is refused, with the
foreign files named: they are the user's, and no option makes the tool touch them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from .errors import DataError
from .inputs import is_glob
from .storage import failing_as, is_uri, resolve_filesystem

MARKER = "_ray_sentiment_score.json"
FILE_PREFIX = "scored-"
WRITES = (f"{FILE_PREFIX}0_0.parquet",)  # the kind of name a run writes (Ray Data adds the suffix)


@dataclass
class OutputDir:
    fs: pafs.FileSystem
    path: str  # within fs
    shown: str  # as the user wrote it
    runs: list[str] = field(default_factory=list)  # run ids whose files are in the directory
    files: list[str] = field(default_factory=list)  # those files (within fs)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def target(self) -> str:
        """Where Ray Data writes: a relative directory is this process's, not each worker's."""
        return self.shown if is_uri(self.shown) else os.path.abspath(self.shown)

    @property
    def file_prefix(self) -> str:
        """Ray Data's write names each file `<this>_<write uuid>_<task>.parquet`."""
        return f"{FILE_PREFIX}{self.run_id}"

    def claim(self, keep_previous: bool) -> None:
        """Write the marker before any output, naming this run (and the previous ones if kept)."""
        self.runs = (self.runs if keep_previous else []) + [self.run_id]
        with failing_as(DataError, f"cannot write to output {self.shown}"):
            self.fs.create_dir(self.path, recursive=True)
            with self.fs.open_output_stream(f"{self.path}/{MARKER}") as f:
                f.write(json.dumps({"written_by": "ray-sentiment score", "runs": self.runs}).encode())

    def delete_previous(self) -> None:
        for path in self.files:
            self.fs.delete_file(path)
        self.files = []

    def left_by_failure(self, resumable: bool) -> str:
        """What a failed run leaves, and how a rerun goes on from there."""
        try:
            entries = self.fs.get_file_info(pafs.FileSelector(self.path))
        except OSError:
            return ""
        written = sum(os.path.basename(e.path).startswith(self.file_prefix) for e in entries)
        if not written:
            return f"; nothing but its marker was written to {self.shown}, and the same command starts again clean"
        if resumable:
            return f"; {written} output files hold the rows scored so far, and the same command scores the rest"
        return (
            f"; {written} output files hold part of the rows: rerun with --overwrite to replace them "
            "(with --id-column, a rerun scores only the rest)"
        )

    def owned(self, name: str) -> bool:
        match = re.fullmatch(rf"{FILE_PREFIX}([0-9a-f]+)_.*\.parquet", name)
        return match is not None and match.group(1) in self.runs


def open_output(output: str) -> OutputDir:
    """What the output directory holds; refused if it is a file or holds files this tool did not write."""
    with failing_as(DataError, f"cannot use output {output}"):
        return _open_output(output)


def _open_output(output: str) -> OutputDir:
    fs, path = resolve_filesystem(output)
    out = OutputDir(fs, path.rstrip("/"), output)
    info = fs.get_file_info(out.path)
    if info.type == pafs.FileType.File:
        raise DataError(f"output {output} is a file; give a directory")
    if info.type == pafs.FileType.NotFound:
        return out
    entries = fs.get_file_info(pafs.FileSelector(out.path, recursive=True))
    files = [e.path for e in entries if e.type == pafs.FileType.File]
    if not files:
        return out
    marker = f"{out.path}/{MARKER}"
    if marker not in files:
        raise DataError(
            f"output {output} holds files that ray-sentiment score did not write "
            f"({_listed(out.path, files)}); give a new or empty directory"
        )
    try:
        with fs.open_input_stream(marker) as f:
            out.runs = [str(r) for r in json.loads(f.read())["runs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{output}/{MARKER} is damaged ({exc}); give a new or empty directory") from None
    mine = [p for p in files if os.path.dirname(p) == out.path and out.owned(os.path.basename(p))]
    foreign = [p for p in files if p != marker and p not in mine]
    if foreign:
        raise DataError(
            f"output {output} holds files that ray-sentiment score did not write "
            f"({_listed(out.path, foreign)}); move them away or give another directory"
        )
    out.files = mine
    return out


def _listed(base: str, paths: list[str], shown: int = 3) -> str:
    names = [os.path.relpath(p, base) for p in sorted(paths)]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_apart(input_path: str, input_files: list[str], *, output: str, writes: tuple[str, ...]) -> None:
    """Refuse an output that equals, contains or lies inside the input (after resolving symlinks
    and `..`): scoring would delete the input, or read its own output. For a glob input, the output
    is inside it when a file the command `writes` there would match the glob."""
    out = _canonical(output)
    roots = [_canonical(f) for f in input_files]
    overlaps = any(_within(out, root) or _within(root, out) for root in roots)
    if is_glob(input_path):
        pattern = _canonical(input_path)
        overlaps = overlaps or any(fnmatch.fnmatch(f"{out}/{name}", pattern) for name in writes)
    else:
        root = _canonical(input_path)
        overlaps = overlaps or _within(out, root) or _within(root, out)
    if overlaps:
        raise DataError(
            f"output {output} overlaps the input {input_path}: give an output directory "
            "outside the input, and not containing it"
        )


def _canonical(path: str) -> str:
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        if scheme != "file":
            return f"{scheme}://{os.path.normpath('/' + rest.lstrip('/'))}"
        path = rest
    return os.path.realpath(path)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
