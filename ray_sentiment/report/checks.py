"""`report`'s checks before Ray starts: the input's columns and time format, the output directory,
and the bundle if one is given."""

from __future__ import annotations

from ..model.bundle import load_bundle
from ..outputs import check_apart
from ..settings import ReportSettings
from .page import FILES, check_output
from .source import ReportInput, check_report_input


def check_report(s: ReportSettings) -> ReportInput:
    """The input's columns and time format, the output directory, and the bundle if one is given."""
    source = check_report_input(s)
    check_apart(s.input, source.files, output=s.output, writes=FILES)
    check_output(s.output, s.overwrite)
    if s.model:
        load_bundle(s.model)
    return source
