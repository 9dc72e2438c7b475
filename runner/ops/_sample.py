"""`zbatch run --sample N`: N cells spread across every axis of the manifest, chosen before
the big spend, run under the batch's own record so that the full run later reuses them.

The choice is greedy and deterministic: each pick is the cell that shows the most values
not yet shown (of the model, every request field but the seed, and every template
variable), the earliest in grid order on a tie. So every value of every axis is shown once
N allows it (at most the sum of the axes' sizes is ever needed; usually far fewer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from runner.identity import PlanRow


def choose_sample(rows: Iterable[PlanRow], n: int) -> list[str]:
    """The keys of `n` cells of `rows` (fewer when there are fewer), in grid order.

    Memory: a small set of value ids per cell; time: n passes over the cells."""
    keys: list[str] = []
    features: list[frozenset[int]] = []
    ids: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    for row in rows:
        if row.key in seen:
            continue
        seen.add(row.key)
        keys.append(row.key)
        features.append(frozenset(ids.setdefault(pair, len(ids)) for pair in _values(row)))
    shown: set[int] = set()
    picked: set[int] = set()
    for _ in range(min(n, len(keys))):
        best, gain = -1, -1
        for index, values in enumerate(features):
            if index in picked:
                continue
            new = len(values - shown)
            if new > gain:
                best, gain = index, new
        picked.add(best)
        shown |= features[best]
    return [keys[index] for index in sorted(picked)]


def _values(row: PlanRow) -> list[tuple[str, str]]:
    """(axis, value) of every input of a cell but its seed, each value as canonical JSON."""
    request = json.loads(row.request_json)
    pairs = [("model", row.model)]
    pairs += [
        (name, json.dumps(value, sort_keys=True))
        for name, value in request.items()
        if name != "seed"
    ]
    pairs += [
        ("vars." + name, json.dumps(value, sort_keys=True))
        for name, value in json.loads(row.vars_json).items()
    ]
    return pairs
