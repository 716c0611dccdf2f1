"""Which records become samples: a seeded draw, optionally stratified by group, that depends only on the
records and the seed (never on tokenization or on how a run is split into processes)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from headattr.data.records import Record
from headattr.errors import HeadattrError


def select_records(
    records: Sequence[Record],
    samples: int | None,
    seed: int,
    stratify_by: str | None = None,
    samples_per_group: int | None = None,
) -> list[Record]:
    """Choose the samples, uniformly without replacement, and return them sorted by row index.

    The choice is a function of `records`, `samples`, `seed` (and the grouping) only. Unstratified, the
    rows are a random permutation's first `samples` entries, so a smaller `samples` with the same seed
    selects a subset of a larger one. Stratified (`stratify_by` given), every group draws from its own
    random stream, derived from `(seed, group name)`. See the module docstring for `None`/`0` and for
    `stratify_by` without `samples_per_group`.
    """
    check_selection_args(samples, seed, stratify_by, samples_per_group)
    if stratify_by is None:
        return _draw(records, samples or len(records), np.random.default_rng(seed), None)
    groups = groups_of(records, stratify_by)
    quotas = _quotas(groups, samples, samples_per_group)
    chosen: list[Record] = []
    for name, members in groups.items():
        chosen += _draw(members, quotas[name], _group_rng(seed, name), name)
    return sorted(chosen, key=lambda record: record.index)


def check_selection_args(
    samples: int | None, seed: int, stratify_by: str | None, samples_per_group: int | None
) -> None:
    """Reject negative counts and seeds, and `samples_per_group` without a field to group by."""
    if samples is not None and samples < 0:
        raise HeadattrError(f"--samples {samples} is negative; give a positive number, or 0 for every row")
    if seed < 0:
        raise HeadattrError(f"--data-seed {seed} is negative; give a seed >= 0")
    if samples_per_group is not None:
        if stratify_by is None:
            raise HeadattrError("--samples-per-group needs --stratify-by FIELD to define the groups")
        if samples_per_group <= 0:
            raise HeadattrError(f"--samples-per-group {samples_per_group} must be at least 1")


def groups_of(records: Iterable[Record], stratify_by: str) -> dict[str, list[Record]]:
    """Group records by `Record.group`, groups in name order, records in file order."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        if record.group is None:
            raise HeadattrError(
                f"row {record.index} has no {stratify_by!r} group; load the data with the same --stratify-by"
            )
        groups.setdefault(record.group, []).append(record)
    return dict(sorted(groups.items()))


def _quotas(groups: dict[str, list[Record]], samples: int | None, per_group: int | None) -> dict[str, int]:
    """Return how many rows each group contributes."""
    if per_group is not None:
        return {name: per_group for name in groups}
    if not samples:
        return {name: len(members) for name, members in groups.items()}
    base, extra = divmod(samples, len(groups))
    return {name: base + (rank < extra) for rank, name in enumerate(groups)}


def _group_rng(seed: int, name: str) -> np.random.Generator:
    """A random stream keyed by (seed, group name) only, so groups do not influence each other."""
    name_key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence([seed, name_key]))


def _draw(records: Sequence[Record], count: int, rng: np.random.Generator, group: str | None) -> list[Record]:
    """Draw `count` of `records` without replacement; sorted by row index."""
    if count > len(records):
        if group is None:
            raise HeadattrError(
                f"--samples {count} is more than the {len(records)} rows of the dataset; "
                f"lower --samples to at most {len(records)}"
            )
        raise HeadattrError(
            f"group {group!r} has {len(records)} rows, fewer than the {count} to draw from it; "
            "lower --samples-per-group (or --samples) or merge small groups"
        )
    order = rng.permutation(len(records))[:count]
    return [records[position] for position in sorted(order.tolist())]
