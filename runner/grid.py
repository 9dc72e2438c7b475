"""Manifest -> a stream of Cells: pure, deterministic, in bounded memory.

**Order.** The grid is the product of the axes in manifest order, the last axis varying
fastest; then the ``include`` entries in order. Each distinct request yields its replicas
``0..repeat-1`` back to back. The same manifest always expands to the same cells in the same
order. A manifest whose grid is empty and which has ``include`` entries is made of those
entries alone.

**A cell's request** merges, lowest first: ``contract.MODEL_DEFAULTS[model]``, ``defaults``,
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
digest in a ``set``: about 70 bytes per distinct request (the expand bench's peak rose 38 MB
at a million), against 32 in the open-addressing table of ``array('Q')``s it replaced,
which cost ten times the CPU (3 us a cell against 0.3: a third of the expansion;
docs/performance.md, lever i).

**Speed.** A grid cell differs from its model's merged base only in the fields the axes set,
its prompts and its seed, so the canonical JSON of the other fields is written once per
model and each cell fills in only its own (the result is byte for byte ``canonical_json``);
the fields and variables of all axes but the last are merged once per combination of theirs.
A key's text up to its request is hashed once per replica (``identity.key_prefix``); each
cell's key copies that state and hashes its request's JSON on.

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
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from runner import contract
from runner.identity import (
    PlanRow,
    canonical_json,
    encode_text,
    external_id,
    key_from,
    key_prefix,
    record_json,
    value_json,
)
from runner.manifest import RANDOM, Manifest, Template, Var, compile_template, has_grid_cells

SEED_SPACE = 2**32


@dataclass(frozen=True)
class Cell:
    """One request of the batch (one replica of it), with its stable key."""

    key: str  # 32 hex characters
    replica: int
    request: Mapping[str, object]  # every input field, in contract.FIELDS order, seed pinned
    vars: Mapping[str, str] = field(default_factory=dict)

    def external_id(self, attempt: int) -> str:
        """The API externalId of this cell's ``attempt`` (``identity.external_id``)."""
        return external_id(self.key, attempt)

    def step_input(self) -> dict[str, object]:
        """The imageGen step input for this cell (``contract.step_input``)."""
        return contract.step_input(self.request)


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


def pin_seed(seed_base: int, request: Mapping[str, object], replica: int) -> int:
    """The pinned seed of a ``random``-seed request: stable, in ``0..2**32-1``."""
    without_seed = {name: value for name, value in request.items() if name != "seed"}
    return _pin(seed_base, canonical_json(without_seed), replica)


def _pin(seed_base: int, request_json: str, replica: int) -> int:
    text = f"{seed_base}\n{request_json}\n{replica}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big")


class _RequestJson:
    """``canonical_json`` of the requests made from one base that differ from it only in the
    ``varying`` fields: the other fields' text is written once, here, not once per cell."""

    def __init__(
        self, base: Mapping[str, object], varying: frozenset[str], drop: str | None = None
    ) -> None:
        names = [name for name in sorted(contract.FIELDS) if name != drop]
        self.holes = tuple(name for name in names if name in varying)
        pieces: list[str] = []
        text = ""
        for index, name in enumerate(names):
            text += ("," if index else "{") + encode_text(name) + ":"
            if name in varying:
                pieces.append(text.replace("%", "%%"))
                text = ""
            else:
                text += value_json(base[name])
        pieces.append((text + "}").replace("%", "%%"))
        self.format = "%s".join(pieces)

    def render(self, request: Mapping[str, object]) -> str:
        """``canonical_json(request without drop)``; its other fields must be the base's."""
        return self.format % tuple([value_json(request[name]) for name in self.holes])


class _Prompt:
    """A compiled prompt template as a %-format and the variables that fill it, in order."""

    def __init__(self, template: Template) -> None:
        self.names = tuple(part.name for part in template if isinstance(part, Var))
        self.format = "".join(
            "%s" if isinstance(part, Var) else part.replace("%", "%%") for part in template
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
        default_model = manifest.defaults.get("model") or contract.MODELS[0]
        self.default_model = str(manifest.constants.get("model") or default_model)
        self.bases = {model: self._base(model) for model in contract.MODELS}
        self.templates: dict[str, Template] = {}
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
        merged: dict[str, object] = {name: None for name in contract.FIELDS}
        for level in (contract.MODEL_DEFAULTS[model], m.defaults, m.models.get(model, {})):
            merged.update(level)
        merged.update(m.constants)
        merged["model"] = model
        merged["loras"] = contract.lora_dict(merged["loras"])
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

    def _template(self, text: str) -> Template:
        compiled = self.templates.get(text)
        if compiled is None:
            compiled = self.templates[text] = compile_template(text)
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
                found.append(((("loras", contract.lora_dict(value)),), None))
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
        self.request = request  # in contract.FIELDS order, LoRAs a dict, seed pinned
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
                price = prices[shape] = contract.price_buzz(
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
        seen: set[bytes] = set()  # the replica-0 key digests of the requests so far
        repeat = self.manifest.repeat
        prefixes = [key_prefix(plan.batch_json, replica) for replica in range(repeat)]
        first = prefixes[0]
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
            digest = key_from(first, request_json)
            if digest in seen:  # the replica-0 key of an identical, earlier request
                duplicates += 1
                continue
            seen.add(digest)
            cells += repeat
            images += int(request["quantity"]) * repeat  # type: ignore[call-overload]
            yield digest.hex(), 0, request, request_json, one.variables
            for replica in range(1, repeat):
                if one.random_json is not None:
                    request = {**one.request, "seed": _pin(seed_base, one.random_json, replica)}
                    request_json = _request_json(plan, request, from_grid)
                key = key_from(prefixes[replica], request_json).hex()
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
        last_fields = [(dict(items), var) for items, var in last]  # made once, not per cell
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
            for own, var in last_fields:
                if var is None:
                    fields, variables = outer_fields, outer_vars
                    if own:
                        fields = {**outer_fields, **own}
                else:
                    fields, variables = outer_fields, {**outer_vars, var[0]: var[1]}
                model = str(fields.get("model") or plan.default_model)
                request = {**plan.bases[model], **fields}  # in FIELDS order: bases have all
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
    """The request in ``contract.FIELDS`` order with LoRAs as a dict."""
    final = {name: request[name] for name in contract.FIELDS}
    final["loras"] = contract.lora_dict(final["loras"])
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
