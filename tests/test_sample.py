"""`zbatch run --sample N`'s choice (issue 15, item 2): every value of every axis once N
allows, deterministic, in grid order."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from runner.identity import PlanRow
from runner.ops._sample import choose_sample


def grid(sizes: list[int]) -> list[PlanRow]:
    """A full grid over axes of `sizes` values (axis `a0` is the model), a seed per cell."""
    rows = []
    for n, values in enumerate(itertools.product(*(range(size) for size in sizes))):
        request = {f"a{i}": v for i, v in enumerate(values) if i} | {"seed": n}
        rows.append(PlanRow(f"{n:032x}", 0, f"m{values[0]}", json.dumps(request), "{}", 1))
    return rows


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(1, 20))
def test_every_value_of_every_axis_is_shown_when_n_allows(sizes: list[int], n: int) -> None:
    rows = grid(sizes)
    keys = choose_sample(rows, n)
    assert len(keys) == min(n, len(rows)) == len(set(keys))
    assert keys == [r.key for r in rows if r.key in set(keys)]  # grid order
    assert choose_sample(rows, n) == keys  # deterministic
    if n >= sum(sizes):
        chosen = [r for r in rows if r.key in set(keys)]
        assert {r.model for r in chosen} == {f"m{v}" for v in range(sizes[0])}
        for axis, size in enumerate(sizes[1:], start=1):
            shown = {json.loads(r.request_json)[f"a{axis}"] for r in chosen}
            assert shown == set(range(size))


def test_the_seed_is_not_an_axis_to_cover() -> None:
    """Seeds differ in every cell: covering them would only mean the first N cells."""
    rows = grid([1, 3])  # 3 cells, one axis of 3 values
    assert choose_sample(rows, 3) == [r.key for r in rows]
    assert len(choose_sample(grid([2, 1]), 1)) == 1
