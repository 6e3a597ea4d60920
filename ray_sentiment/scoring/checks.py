"""`evaluate`'s checks before Ray starts: the bundle, the data's columns, and labels the model knows."""

from __future__ import annotations

from ..errors import DataError
from ..inputs import check_labelled, total
from ..model.bundle import ModelBundle, load_bundle


def check_evaluate(
    model: str,
    data: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
    split: tuple[str, ...],
    group_column: str | None = None,
) -> ModelBundle:
    """The bundle, then the data: its columns, and labels the model knows. Returns the bundle."""
    bundle = load_bundle(model)
    counts = check_labelled(data, text_column, label_column, split_column, group_column)
    if counts is None:
        return bundle
    found = total(counts, split or None)
    if split_column and not found:
        raise DataError(f"{data}: no row has {split_column} in {', '.join(split)}")
    unknown_labels(set(found), bundle.labels, data)
    return bundle


def unknown_labels(found: set[str], labels: list[str], data: str) -> None:
    unknown = found - set(labels)
    if unknown:
        raise DataError(
            f"{data} has labels the model does not know: {', '.join(sorted(unknown))}; "
            f"the model's labels are: {', '.join(labels)}"
        )
