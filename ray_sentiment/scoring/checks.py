"""`evaluate`'s checks before Ray starts: the bundle, the data's columns, and labels the model knows."""

from __future__ import annotations

from ..errors import DataError
from ..inputs import check_labelled, check_split_has_rows, total
from ..model.bundle import ModelBundle, load_bundle
from ..settings import EvaluateSettings


def check_evaluate(s: EvaluateSettings) -> ModelBundle:
    """The bundle, then the data: its columns, and labels the model knows. Returns the bundle."""
    bundle = load_bundle(s.model)
    counts = check_labelled(
        s.data, s.text_column, label_column=s.label_column, split_column=s.split_column, group_column=s.group_column
    )
    if counts is None:
        return bundle
    found = total(counts, s.test_split or None)
    check_split_has_rows(found, s.data, split_column=s.split_column, values=s.test_split)
    unknown_labels(set(found), bundle.labels, s.data)
    return bundle


def unknown_labels(found: set[str], labels: list[str], data: str) -> None:
    unknown = found - set(labels)
    if unknown:
        raise DataError(
            f"{data} has labels the model does not know: {', '.join(sorted(unknown))}; "
            f"the model's labels are: {', '.join(labels)}"
        )
