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
is dropped and counted. Seen requests are kept as their replica-0 key's 16-byte BLAKE2b
digest in an open-addressing table of two ``array('Q')``s, about 32 bytes per distinct request.

**Speed.** A grid cell differs from its model's merged base only in the fields the axes set,
its prompts and its seed, so the canonical JSON of the other fields is written once per
model and each cell fills in only its own (the result is byte for byte ``canonical_json``);
the fields and variables of all axes but the last are merged once per combination of theirs.

**Keys.** ``key`` is the hex BLAKE2b-128 of the canonical JSON (sorted keys, no spaces, UTF-8)
of ``{"batch": name, "replica": r, "request": request, "v": 1}``: independent of YAML key
order and formatting (numbers are normalized on reading: ``1.0`` is ``1``), changed by any
request field. The externalId is ``zb-<key>-a<attempt>`` (40-odd characters of
``[A-Za-z0-9_-]``); ``runner.identity`` writes it, and the key version, once.

**Rows.** ``store_rows`` streams the cells as the store records them (``identity.PlanRow``):
the one way a manifest's cells reach ``Store.plan_rows``, in production and in the tests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from runner.contract import _zimage as zimage
from runner.identity import KEY_VERSION, PlanRow, external_id, record_json
from runner.manifest import _prompts as prompts
from runner.manifest._checks import has_grid_cells
from runner.manifest._load import RANDOM, Manifest

SEED_SPACE = 2**32


@dataclass(frozen=True)
class Cell:
    """One request of the batch (one replica of it), with its stable key."""

    key: str  # 32 hex characters
    replica: int
    request: Mapping[str, object]  # every input field, in zimage.FIELDS order, seed pinned
    vars: Mapping[str, str] = field(default_factory=dict)

    def external_id(self, attempt: int) -> str:
        """The API externalId of this cell's ``attempt`` (``identity.external_id``)."""
        return external_id(self.key, attempt)

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


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_encode_text = json.encoder.encode_basestring  # what the encoder writes for a str (C)


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, non-ASCII kept: the one spelling hashed for keys and seeds."""
    return _CANONICAL.encode(value)


def _value_json(value: object) -> str:
    """``canonical_json(value)``, quicker for the two commonest types (str and int)."""
    if type(value) is str:
        return _encode_text(value)
    if type(value) is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _CANONICAL.encode(value)


def cell_key(batch: str, replica: int, request: Mapping[str, object]) -> str:
    """The hex key of one replica of ``request`` in batch ``batch``."""
    return _key(canonical_json(batch), replica, canonical_json(request))


def _key(batch_json: str, replica: int, request_json: str) -> str:
    return _key_digest(batch_json, replica, request_json).hex()


def _key_digest(batch_json: str, replica: int, request_json: str) -> bytes:
    text = (
        f'{{"batch":{batch_json},"replica":{replica},"request":{request_json},"v":{KEY_VERSION}}}'
    )
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


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
        """Add ``digest`` (16 bytes); True if it was new."""
        high = int.from_bytes(digest[:8], "little") | 1  # 0 marks an empty slot
        low = int.from_bytes(digest[8:16], "little")
        if not self._insert(high, low):
            return False
        self._count += 1
        if 2 * self._count > self._slots:
            self._grow()
        return True

    def _insert(self, high: int, low: int) -> bool:
        highs, lows = self._high, self._low
        mask = self._slots - 1
        index = low & mask
        while found := highs[index]:
            if found == high and lows[index] == low:
                return False
            index = (index + 1) & mask
        highs[index] = high
        lows[index] = low
        return True

    def _grow(self) -> None:
        old_high, old_low = self._high, self._low
        self._slots *= 2
        self._high = array("Q", bytes(8 * self._slots))
        self._low = array("Q", bytes(8 * self._slots))
        for index, high in enumerate(old_high):
            if high:
                self._insert(high, old_low[index])


class _RequestJson:
    """``canonical_json`` of the requests made from one base that differ from it only in the
    ``varying`` fields: the other fields' text is written once, here, not once per cell."""

    def __init__(
        self, base: Mapping[str, object], varying: frozenset[str], drop: str | None = None
    ) -> None:
        names = [name for name in sorted(zimage.FIELDS) if name != drop]
        self.holes = tuple(name for name in names if name in varying)
        pieces: list[str] = []
        text = ""
        for index, name in enumerate(names):
            text += ("," if index else "{") + _encode_text(name) + ":"
            if name in varying:
                pieces.append(text.replace("%", "%%"))
                text = ""
            else:
                text += _value_json(base[name])
        pieces.append((text + "}").replace("%", "%%"))
        self.format = "%s".join(pieces)

    def render(self, request: Mapping[str, object]) -> str:
        """``canonical_json(request without drop)``; its other fields must be the base's."""
        return self.format % tuple([_value_json(request[name]) for name in self.holes])


class _Prompt:
    """A compiled prompt template as a %-format and the variables that fill it, in order."""

    def __init__(self, template: prompts.Template) -> None:
        self.names = tuple(part.name for part in template if isinstance(part, prompts.Var))
        self.format = "".join(
            "%s" if isinstance(part, prompts.Var) else part.replace("%", "%%") for part in template
        )
        self.text = "" if self.names else self.format % ()

    def render(self, variables: Mapping[str, str]) -> str:
        if not self.names:
            return self.text
        return self.format % tuple([variables[name] for name in self.names])


# One axis value, prepared: the request fields it sets, and the variable it sets (or None).
_Patch = tuple[tuple[tuple[str, object], ...], tuple[str, str] | None]


class _Plan:
    """What every cell of one manifest shares, computed once: bases, templates, excludes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.batch_json = canonical_json(manifest.name)
        default_model = manifest.defaults.get("model") or zimage.MODELS[0]
        self.default_model = str(manifest.constants.get("model") or default_model)
        self.bases = {model: self._base(model) for model in zimage.MODELS}
        self.templates: dict[str, prompts.Template] = {}
        self.prompts: dict[str, _Prompt] = {}
        varying = {"prompt", "negativePrompt", "seed"}
        for axis in manifest.axes:
            if axis.name == "size":
                varying |= {"width", "height"}
            elif not axis.name.startswith("vars."):
                varying.add(axis.name)
        fixed = frozenset(varying)
        self.json = {m: _RequestJson(base, fixed) for m, base in self.bases.items()}
        self.pin_json = {m: _RequestJson(base, fixed, "seed") for m, base in self.bases.items()}

    def _base(self, model: str) -> dict[str, object]:
        m = self.manifest
        merged: dict[str, object] = {name: None for name in zimage.FIELDS}
        for level in (zimage.MODEL_DEFAULTS[model], m.defaults, m.models.get(model, {})):
            merged.update(level)
        merged.update(m.constants)
        merged["model"] = model
        merged["loras"] = zimage.lora_dict(merged["loras"])
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
                request[name] = self.prompt(text).render(variables)
        return request, written

    def _template(self, text: str) -> prompts.Template:
        compiled = self.templates.get(text)
        if compiled is None:
            compiled = self.templates[text] = prompts.compile_template(text)
        return compiled

    def prompt(self, text: str) -> _Prompt:
        """The compiled renderer of prompt template ``text`` (cached)."""
        found = self.prompts.get(text)
        if found is None:
            found = self.prompts[text] = _Prompt(self._template(text))
        return found

    def patches(self, name: str, values: tuple[object, ...]) -> tuple[_Patch, ...]:
        """Each value of axis ``name`` as the fields and the variable it sets."""
        if name.startswith("vars."):
            var = name.removeprefix("vars.")
            return tuple(((), (var, str(value))) for value in values)
        found: list[_Patch] = []
        for value in values:
            if name == "size":
                assert isinstance(value, tuple)
                width, height = value
                found.append(((("width", width), ("height", height)), None))
            elif name == "loras":
                found.append(((("loras", zimage.lora_dict(value)),), None))
            else:
                found.append((((name, value),), None))
        return tuple(found)

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


class _Request:
    """One distinct request before its replicas: merged, seed pinned, with its JSON."""

    __slots__ = ("random_json", "request", "request_json", "variables")

    def __init__(
        self,
        request: dict[str, object],
        variables: dict[str, str],
        request_json: str,
        random_json: str | None,
    ) -> None:
        self.request = request  # in zimage.FIELDS order, LoRAs a dict, seed pinned
        self.variables = variables
        self.request_json = request_json  # canonical_json(request)
        self.random_json = random_json  # canonical_json without the seed, if it was random


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

    def store_rows(self) -> Iterator[PlanRow]:
        """The cells as the store records them: key, replica, model, the request and the
        variables as JSON (``identity.record_json``), the formula price."""
        if self._started:
            raise RuntimeError("an Expansion is iterated once; call expand(manifest) again")
        self._started = True
        return self._store_rows()

    def _cells(self) -> Iterator[Cell]:
        for key, replica, request, _, variables in self._expanded():
            yield Cell(key, replica, request, variables)

    def _store_rows(self) -> Iterator[PlanRow]:
        # `tuple.__new__(PlanRow, ...)`: the row as `PlanRow(...)` makes it, in half the
        # time (0.16 us against 0.31 us a row, on the bench machine)
        new_row = tuple.__new__
        prices: dict[tuple[object, ...], int] = {}
        last_vars: object = None
        vars_json = ""
        for key, replica, request, request_json, variables in self._expanded():
            if not request_json.isascii():
                request_json = record_json(request)
            if variables is not last_vars:  # one object for a run of cells: encoded once
                last_vars, vars_json = variables, record_json(variables)
            model = str(request["model"])
            shape = (
                model,
                request["width"],
                request["height"],
                request["steps"],
                request["quantity"],
            )
            price = prices.get(shape)
            if price is None:
                price = prices[shape] = zimage.price_buzz(
                    model=model,
                    width=int(request["width"]),  # type: ignore[call-overload]
                    height=int(request["height"]),  # type: ignore[call-overload]
                    steps=int(request["steps"]),  # type: ignore[call-overload]
                    quantity=int(request["quantity"]),  # type: ignore[call-overload]
                )
            yield new_row(PlanRow, (key, replica, model, request_json, vars_json, price))

    def _expanded(self) -> Iterator[tuple[str, int, dict[str, object], str, dict[str, str]]]:
        """(key, replica, request, its canonical JSON, variables) of every cell, in order."""
        plan = _Plan(self.manifest)
        seen = _DigestSet()
        repeat = self.manifest.repeat
        batch_json = plan.batch_json
        seed_base = self.manifest.seed_base
        excluded = included = duplicates = cells = images = 0
        for found in self._requests(plan):
            if found is None:
                excluded += 1
                continue
            from_grid, one = found
            if not from_grid:
                included += 1
            request = one.request
            request_json = one.request_json
            digest = _key_digest(batch_json, 0, request_json)
            if not seen.add(digest):  # the replica-0 key of an identical, earlier request
                duplicates += 1
                continue
            cells += repeat
            images += int(request["quantity"]) * repeat  # type: ignore[call-overload]
            yield digest.hex(), 0, request, request_json, one.variables
            for replica in range(1, repeat):
                if one.random_json is not None:
                    request = {**one.request, "seed": _pin(seed_base, one.random_json, replica)}
                    request_json = _request_json(plan, request, from_grid)
                key = _key(batch_json, replica, request_json)
                yield key, replica, request, request_json, one.variables
        self._stats = replace(
            self._stats,
            excluded=excluded,
            included=included,
            duplicates=duplicates,
            cells=cells,
            images=images,
            complete=True,
        )

    def _requests(self, plan: _Plan) -> Iterator[tuple[bool, _Request] | None]:
        """(True for grid / False for include, the request), or None if excluded."""
        if self._stats.product:
            yield from self._grid(plan)
        for entry in self.manifest.include:
            fields = {k: v for k, v in entry.items() if not k.startswith("vars.")}
            variables = {
                k.removeprefix("vars."): str(v) for k, v in entry.items() if k not in fields
            }
            request, _ = plan.request(fields, variables)
            final = _final(request)
            random_json = None
            if final["seed"] is None or final["seed"] is RANDOM:
                random_json = canonical_json({k: v for k, v in final.items() if k != "seed"})
                final["seed"] = _pin(plan.manifest.seed_base, random_json, 0)
            yield False, _Request(final, variables, canonical_json(final), random_json)

    def _grid(self, plan: _Plan) -> Iterator[tuple[bool, _Request] | None]:
        """The grid's requests: the product of the axes, the last fastest. The fields and
        variables of all axes but the last are merged once per combination of theirs."""
        m = self.manifest
        axes = [plan.patches(axis.name, axis.values) for axis in m.axes]
        last: tuple[_Patch, ...] = axes.pop() if axes else (((), None),)
        last_sets_var = any(var is not None for _, var in last)
        seed_base = m.seed_base
        exclude = bool(m.exclude)
        for outer in itertools.product(*axes):
            outer_fields: dict[str, object] = {}
            outer_vars: dict[str, str] = {}
            for items, var in outer:
                outer_fields.update(items)
                if var is not None:
                    outer_vars[var[0]] = var[1]
            rendered: dict[tuple[str, str], str] = {}  # prompts of this outer combination
            for items, var in last:
                if var is None:
                    fields, variables = outer_fields, outer_vars
                    if items:
                        fields = {**outer_fields, **dict(items)}
                else:
                    fields, variables = outer_fields, {**outer_vars, var[0]: var[1]}
                model = str(fields.get("model") or plan.default_model)
                request = dict(plan.bases[model])
                request.update(fields)
                request["model"] = model
                request["loras"] = dict(request["loras"])  # type: ignore[call-overload]
                written: dict[str, str] = {}
                for name in ("prompt", "negativePrompt"):
                    text = request[name]
                    if type(text) is str:
                        written[name] = text
                        if last_sets_var:
                            request[name] = plan.prompt(text).render(variables)
                        else:
                            done = rendered.get((name, text))
                            if done is None:
                                done = rendered[name, text] = plan.prompt(text).render(variables)
                            request[name] = done
                random_json = None
                seed = request["seed"]
                if seed is None or seed is RANDOM:
                    random_json = plan.pin_json[model].render(request)
                    request["seed"] = _pin(seed_base, random_json, 0)
                if exclude and plan.excluded(request, variables, written):
                    yield None
                    continue
                request_json = plan.json[model].render(request)
                yield True, _Request(request, variables, request_json, random_json)


def _request_json(plan: _Plan, request: Mapping[str, object], from_grid: bool) -> str:
    if from_grid:
        return plan.json[str(request["model"])].render(request)
    return canonical_json(request)


def _final(request: Mapping[str, object]) -> dict[str, object]:
    """The request in ``zimage.FIELDS`` order with LoRAs as a dict."""
    final = {name: request[name] for name in zimage.FIELDS}
    final["loras"] = zimage.lora_dict(final["loras"])
    return final


def expand(manifest: Manifest) -> Expansion:
    """The manifest's cells, as a stream to iterate once (see the module docstring)."""
    return Expansion(manifest)


def store_rows(manifest: Manifest) -> Iterator[PlanRow]:
    """The manifest's cells as ``Store.plan_rows`` records them, each with its formula price:
    the one path from a manifest to the store (``zbatch run``, the bench and the tests)."""
    return expand(manifest).store_rows()


def count_cells(manifest: Manifest) -> ExpansionStats:
    """The final ``ExpansionStats`` of ``manifest``, expanding it without keeping any cell."""
    expansion = expand(manifest)
    for _ in expansion:
        pass
    return expansion.stats
