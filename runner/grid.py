"""Manifest -> a stream of Cells: pure, deterministic, in bounded memory.

**Order.** The grid is the product of the axes in manifest order, the last axis varying
fastest; then the ``include`` entries in order. Each distinct request yields its replicas
``0..repeat-1`` back to back. The same manifest always expands to the same cells in the same
order. A manifest whose grid is empty and which has ``include`` entries is made of those
entries alone.

**A cell's request** merges, lowest first: ``zimage.MODEL_DEFAULTS[model]``, ``defaults``,
``models[model]``, the grid's constants, then the cell's axis values (grid cells) or the
entry (include cells). Templates are rendered with the cell's variables. ``exclude`` entries
drop grid cells whose request (or variables) match every key of the entry; a ``prompt``
key matches the rendered prompt or the template it came from.

**Seeds.** A ``random`` (or absent) seed is pinned to ``pin_seed(seed_base, request, replica)``:
the first 4 bytes of BLAKE2b over ``seed_base``, the canonical request without its seed and
the replica index, an integer in ``0..2**32-1``. So a manifest always expands to the same
seeds, replicas of a random-seed cell get different seeds (and images), and the batch name
does not matter (renaming a batch keeps its images).

**Duplicates.** Two cells with the same request (seed pinned, replica 0) are one: the later
is dropped and counted. Seen requests are kept as 16-byte BLAKE2b digests in an
open-addressing table of two ``array('Q')``s, about 32 bytes per distinct request.

**Keys.** ``key`` is the hex BLAKE2b-128 of the canonical JSON (sorted keys, no spaces, UTF-8)
of ``{"batch": name, "replica": r, "request": request, "v": 1}``: independent of YAML key
order and formatting (numbers are normalized on reading: ``1.0`` is ``1``), changed by any
request field. The externalId is ``zb-<key>-a<attempt>`` (40-odd characters of
``[A-Za-z0-9_-]``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from runner import prompts, zimage
from runner.manifest import RANDOM, Manifest
from runner.manifest_checks import has_grid_cells

KEY_VERSION = 1
SEED_SPACE = 2**32
EXTERNAL_ID_PREFIX = "zb"


@dataclass(frozen=True)
class Cell:
    """One request of the batch (one replica of it), with its stable key."""

    key: str  # 32 hex characters
    replica: int
    request: Mapping[str, object]  # every input field, in zimage.FIELDS order, seed pinned
    vars: Mapping[str, str] = field(default_factory=dict)

    def external_id(self, attempt: int) -> str:
        """The API externalId of this cell's ``attempt`` (``[A-Za-z0-9_-]``, <= 128 chars)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        return f"{EXTERNAL_ID_PREFIX}-{self.key}-a{attempt}"

    def step_input(self) -> dict[str, object]:
        """The imageGen step input for this cell (``zimage.step_input``)."""
        return zimage.step_input(self.request)


@dataclass(frozen=True)
class ExpansionStats:
    """What an expansion did; final once ``complete``."""

    axes: tuple[tuple[str, int], ...]  # (axis name, size) in manifest order
    product: int  # grid combinations (0 when the grid makes no cells)
    excluded: int = 0  # grid combinations dropped by exclude
    included: int = 0  # include entries
    duplicates: int = 0  # combinations and entries collapsed into an earlier identical one
    repeat: int = 1
    cells: int = 0  # cells yielded, replicas included
    images: int = 0  # sum of the yielded cells' quantity
    complete: bool = False


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, non-ASCII kept: the one spelling hashed for keys and seeds."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cell_key(batch: str, replica: int, request: Mapping[str, object]) -> str:
    """The hex key of one replica of ``request`` in batch ``batch``."""
    return _key(canonical_json(batch), replica, canonical_json(request))


def _key(batch_json: str, replica: int, request_json: str) -> str:
    text = (
        f'{{"batch":{batch_json},"replica":{replica},"request":{request_json},"v":{KEY_VERSION}}}'
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def pin_seed(seed_base: int, request: Mapping[str, object], replica: int) -> int:
    """The pinned seed of a ``random``-seed request: stable, in ``0..2**32-1``."""
    without_seed = {name: value for name, value in request.items() if name != "seed"}
    return _pin(seed_base, canonical_json(without_seed), replica)


def _pin(seed_base: int, request_json: str, replica: int) -> int:
    text = f"{seed_base}\n{request_json}\n{replica}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big")


class _DigestSet:
    """A set of 128-bit digests in two flat arrays (open addressing, linear probing)."""

    def __init__(self) -> None:
        self._slots = 1024
        self._high = array("Q", bytes(8 * self._slots))
        self._low = array("Q", bytes(8 * self._slots))
        self._count = 0

    def add(self, digest: bytes) -> bool:
        """Add ``digest``; True if it was new."""
        high = int.from_bytes(digest[:8], "little") | 1  # 0 marks an empty slot
        low = int.from_bytes(digest[8:16], "little")
        if self._insert(high, low):
            self._count += 1
            if 2 * self._count > self._slots:
                self._grow()
            return True
        return False

    def _insert(self, high: int, low: int) -> bool:
        mask = self._slots - 1
        index = high & mask
        while self._high[index]:
            if self._high[index] == high and self._low[index] == low:
                return False
            index = (index + 1) & mask
        self._high[index], self._low[index] = high, low
        return True

    def _grow(self) -> None:
        old_high, old_low = self._high, self._low
        self._slots *= 2
        self._high = array("Q", bytes(8 * self._slots))
        self._low = array("Q", bytes(8 * self._slots))
        for index, high in enumerate(old_high):
            if high:
                self._insert(high, old_low[index])


class _Plan:
    """What every cell of one manifest shares, computed once: bases, templates, excludes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.batch_json = canonical_json(manifest.name)
        default_model = manifest.defaults.get("model") or zimage.MODELS[0]
        self.default_model = str(manifest.constants.get("model") or default_model)
        self.bases = {model: self._base(model) for model in zimage.MODELS}
        self.templates: dict[str, prompts.Template] = {}

    def _base(self, model: str) -> dict[str, object]:
        m = self.manifest
        merged: dict[str, object] = {name: None for name in zimage.FIELDS}
        for level in (zimage.MODEL_DEFAULTS[model], m.defaults, m.models.get(model, {})):
            merged.update(level)
        merged.update(m.constants)
        merged["model"] = model
        return merged

    def request(
        self, fields: Mapping[str, object], variables: Mapping[str, str]
    ) -> tuple[dict[str, object], dict[str, str]]:
        """The merged request (seed not pinned yet) and the templates its prompts came from."""
        model = str(fields.get("model") or self.default_model)
        request = dict(self.bases[model])
        request.update(fields)
        request["model"] = model
        written: dict[str, str] = {}
        for name in ("prompt", "negativePrompt"):
            text = request[name]
            if isinstance(text, str):
                written[name] = text
                request[name] = prompts.render(self._template(text), variables)
        return request, written

    def _template(self, text: str) -> prompts.Template:
        compiled = self.templates.get(text)
        if compiled is None:
            compiled = self.templates[text] = prompts.compile_template(text)
        return compiled

    def excluded(
        self,
        request: Mapping[str, object],
        variables: Mapping[str, str],
        written: Mapping[str, str],
    ) -> bool:
        for entry in self.manifest.exclude:
            if all(
                _matches(name, value, request, variables, written) for name, value in entry.items()
            ):
                return True
        return False


def _matches(
    name: str,
    value: object,
    request: Mapping[str, object],
    variables: Mapping[str, str],
    written: Mapping[str, str],
) -> bool:
    if name.startswith("vars."):
        return variables.get(name.removeprefix("vars.")) == value
    if name in written and written[name] == value:
        return True
    return bool(request.get(name) == value)


def _axis_fields(
    names: tuple[str, ...], combination: tuple[object, ...]
) -> tuple[dict[str, object], dict[str, str]]:
    fields: dict[str, object] = {}
    variables: dict[str, str] = {}
    for name, value in zip(names, combination, strict=True):
        if name.startswith("vars."):
            variables[name.removeprefix("vars.")] = str(value)
        elif name == "size":
            assert isinstance(value, tuple)
            fields["width"], fields["height"] = value
        else:
            fields[name] = value
    return fields, variables


class Expansion:
    """The cells of one manifest, streamed once; ``stats`` are final after iteration."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        axes = tuple((axis.name, len(axis.values)) for axis in manifest.axes)
        grid = has_grid_cells(manifest.axes, manifest.constants, manifest.include)
        product = math.prod(size for _, size in axes) if grid else 0
        self._stats = ExpansionStats(axes=axes, product=product, repeat=manifest.repeat)
        self._started = False

    @property
    def stats(self) -> ExpansionStats:
        """The counts so far (``complete`` once the iteration has ended)."""
        return self._stats

    def __iter__(self) -> Iterator[Cell]:
        if self._started:
            raise RuntimeError("an Expansion is iterated once; call expand(manifest) again")
        self._started = True
        return self._cells()

    def _cells(self) -> Iterator[Cell]:
        plan = _Plan(self.manifest)
        seen = _DigestSet()
        counts = {"excluded": 0, "included": 0, "duplicates": 0, "cells": 0, "images": 0}
        for request, variables, from_grid in self._requests(plan):
            if from_grid is None:
                counts["excluded"] += 1
                continue
            if not from_grid:
                counts["included"] += 1
            cells = self._replicas(plan, request, variables, seen)
            if cells is None:
                counts["duplicates"] += 1
                continue
            for cell in cells:
                counts["cells"] += 1
                counts["images"] += int(cell.request["quantity"])  # type: ignore[call-overload]
                yield cell
        self._stats = replace(
            self._stats,
            excluded=counts["excluded"],
            included=counts["included"],
            duplicates=counts["duplicates"],
            cells=counts["cells"],
            images=counts["images"],
            complete=True,
        )

    def _requests(
        self, plan: _Plan
    ) -> Iterator[tuple[dict[str, object], dict[str, str], bool | None]]:
        """(request, variables, True for grid / False for include / None if excluded)."""
        m = self.manifest
        names = tuple(axis.name for axis in m.axes)
        if self._stats.product:
            for combination in itertools.product(*(axis.values for axis in m.axes)):
                fields, variables = _axis_fields(names, combination)
                request, written = plan.request(fields, variables)
                _pin_first(plan, request)
                excluded = m.exclude and plan.excluded(request, variables, written)
                yield request, variables, None if excluded else True
        for entry in m.include:
            fields = {k: v for k, v in entry.items() if not k.startswith("vars.")}
            variables = {
                k.removeprefix("vars."): str(v) for k, v in entry.items() if k not in fields
            }
            request, _ = plan.request(fields, variables)
            _pin_first(plan, request)
            yield request, variables, False

    def _replicas(
        self,
        plan: _Plan,
        request: dict[str, object],
        variables: dict[str, str],
        seen: _DigestSet,
    ) -> list[Cell] | None:
        """The cell's replicas, or None if an identical request came before."""
        random_seed = request.pop("_random", False)
        final = _final(request)
        request_json = canonical_json(final)
        if not seen.add(hashlib.blake2b(request_json.encode(), digest_size=16).digest()):
            return None
        cells = [Cell(_key(plan.batch_json, 0, request_json), 0, final, variables)]
        for replica in range(1, self.manifest.repeat):
            if random_seed:
                final = _final(request | {"seed": _pin_request(plan, request, replica)})
                request_json = canonical_json(final)
            key = _key(plan.batch_json, replica, request_json)
            cells.append(Cell(key, replica, final, variables))
        return cells


def _final(request: Mapping[str, object]) -> dict[str, object]:
    """The request in ``zimage.FIELDS`` order with LoRAs as a dict."""
    final = {name: request[name] for name in zimage.FIELDS}
    final["loras"] = zimage.lora_dict(final["loras"])
    return final


def _pin_request(plan: _Plan, request: Mapping[str, object], replica: int) -> int:
    return pin_seed(plan.manifest.seed_base, _final(request), replica)


def _pin_first(plan: _Plan, request: dict[str, object]) -> None:
    """Pin a random seed (replica 0) in place, marking the request ``_random``."""
    if request.get("seed") is None or request["seed"] is RANDOM:
        request["seed"] = None
        request["seed"] = _pin_request(plan, request, 0)
        request["_random"] = True


def expand(manifest: Manifest) -> Expansion:
    """The manifest's cells, as a stream to iterate once (see the module docstring)."""
    return Expansion(manifest)


def count_cells(manifest: Manifest) -> ExpansionStats:
    """The final ``ExpansionStats`` of ``manifest``, expanding it without keeping any cell."""
    expansion = expand(manifest)
    for _ in expansion:
        pass
    return expansion.stats
