"""Grid expansion: order, merging, seeds, include/exclude, duplicates, replicas and keys."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.contract import _zimage as zimage
from runner.emulator import pricing
from runner.emulator.validation import validate_template
from runner.grid import Cell, count_cells, expand, pin_seed
from runner.identity import canonical_json, cell_key
from runner.manifest._load import load_manifest, parse_manifest

PROPERTIES = settings(derandomize=True, max_examples=60, deadline=None)
MANIFESTS = Path(__file__).parent / "manifests"
HEAD = "name: t\nout: out\nbudget: 100\n"
AIR = "urn:air:zImage:lora:civitai:123456@789012"


def _cells(text: str) -> list[Cell]:
    return list(expand(parse_manifest(text, path=Path("jobs/x.yaml"))))


def _manifest(data: dict[str, object]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def test_the_documented_example_expands():
    """2 models × 3 animals × 2 places × 4 seeds − 8 base herons + 1 include = 41 cells."""
    expansion = expand(load_manifest(MANIFESTS / "cabins.yaml"))
    cells = list(expansion)
    stats = expansion.stats
    assert stats.axes == (("model", 2), ("vars.animal", 3), ("vars.place", 2), ("seed", 4))
    assert (stats.product, stats.excluded, stats.included, stats.duplicates) == (48, 8, 1, 0)
    assert (stats.cells, stats.images, stats.complete) == (41, 41, True)
    first = cells[0]
    assert first.request == {
        "model": "turbo",
        "prompt": "A fox in a misty forest, golden hour",
        "negativePrompt": None,
        "width": 1024,
        "height": 1024,
        "cfgScale": 1,
        "steps": 10,
        "sampleMethod": "euler",
        "schedule": "simple",
        "seed": 1234,
        "quantity": 1,
        "loras": {},
        "outputFormat": "jpeg",
    }
    assert list(first.request) == list(zimage.FIELDS)
    assert first.vars == {"animal": "fox", "place": "a misty forest"}
    assert [c.request["seed"] for c in cells[:5]] == [1234, 1235, 1236, 1237, 1234]
    assert not any(c.request["model"] == "base" and c.vars.get("animal") == "heron" for c in cells)
    assert cells[-1].request["prompt"] == "A heron at dawn"
    assert cells[-1].request["cfgScale"] == 4.5


def test_merge_order_model_defaults_defaults_models_grid_include():
    """Each level overrides the one below it, per field."""
    text = (
        HEAD
        + "defaults: {steps: 11, quantity: 2, schedule: karras, outputFormat: png}\n"
        + "models: {turbo: {steps: 12, quantity: 3}}\n"
        + "grid: {prompt: p, quantity: 4, sampleMethod: [heun]}\n"
        + "include: [{prompt: q, sampleMethod: lcm, steps: 8}]\n"
    )
    grid_cell, include_cell = _cells(text)
    assert {k: grid_cell.request[k] for k in ("cfgScale", "steps", "quantity")} == {
        "cfgScale": 1,
        "steps": 12,
        "quantity": 4,
    }
    assert (grid_cell.request["schedule"], grid_cell.request["outputFormat"]) == ("karras", "png")
    assert grid_cell.request["sampleMethod"] == "heun"
    assert (include_cell.request["sampleMethod"], include_cell.request["steps"]) == ("lcm", 8)
    assert include_cell.request["quantity"] == 4  # grid constants apply to include entries


def test_model_defaults_follow_the_cells_model():
    """One grid holds both models with their own cfgScale and steps."""
    turbo, base = _cells(HEAD + "grid: {prompt: p, model: [turbo, base], seed: 1}\n")
    assert (turbo.request["cfgScale"], turbo.request["steps"]) == (1, 9)
    assert (base.request["cfgScale"], base.request["steps"]) == (4, 20)


def test_axes_multiply_in_manifest_order_the_last_fastest():
    """steps then cfgScale: (9,1) (9,2) (10,1) (10,2)."""
    cells = _cells(HEAD + "grid: {prompt: p, steps: [9, 10], cfgScale: [1, 2], seed: 0}\n")
    assert [(c.request["steps"], c.request["cfgScale"]) for c in cells] == [
        (9, 1),
        (9, 2),
        (10, 1),
        (10, 2),
    ]


def test_size_axis_and_templates_with_literal_braces():
    """A size sets width and height; {{ }} render as braces; variables fill in."""
    cells = _cells(
        HEAD + "grid:\n  prompt: '{{x}} {a}'\n  size: [1536x1024]\n  vars: {a: [b]}\n  seed: 1\n"
    )
    assert (cells[0].request["width"], cells[0].request["height"]) == (1536, 1024)
    assert cells[0].request["prompt"] == "{x} b"


def test_exclude_matches_fields_variables_size_and_prompt_templates():
    """Exclude on a variable, on size (width+height) and on the written template."""
    text = (
        HEAD
        + "grid:\n  prompt: ['A {v}', plain]\n  vars: {v: [x, y]}\n  size: [512x512, 1024x1024]\n"
        + "  seed: 1\n"
        + "exclude:\n  - {v: x, size: 512x512}\n  - {prompt: 'A {v}', v: y}\n"
    )
    expansion = expand(parse_manifest(text, path=Path("jobs/x.yaml")))
    cells = list(expansion)
    assert expansion.stats.product == 8
    assert expansion.stats.excluded == 4  # A x 512, plain x 512 (v is x), A y 512, A y 1024
    assert expansion.stats.duplicates == 1  # plain does not use {v}: plain y 1024 = plain x 1024
    assert [(c.request["prompt"], c.request["width"]) for c in cells] == [
        ("A x", 1024),
        ("plain", 1024),
        ("plain", 512),
    ]


def test_include_is_not_excluded_and_identical_cells_collapse():
    """An include identical to a grid cell is a duplicate; exclusions never drop includes."""
    text = (
        HEAD
        + "grid: {prompt: p, steps: [9, 10], seed: 3}\nexclude: [{steps: 10}]\n"
        + "include: [{prompt: p, steps: 9, seed: 3}, {prompt: p, steps: 10, seed: 3}]\n"
    )
    expansion = expand(parse_manifest(text, path=Path("jobs/x.yaml")))
    cells = list(expansion)
    stats = expansion.stats
    assert (stats.product, stats.excluded, stats.included, stats.duplicates) == (2, 1, 2, 1)
    assert [c.request["steps"] for c in cells] == [9, 10]


def test_an_empty_grid_with_include_makes_only_the_included_cells():
    """As a CI matrix with only include: the entries are the cells."""
    text = HEAD + "defaults: {prompt: p}\ninclude: [{seed: 1}, {seed: 2}]\n"
    expansion = expand(parse_manifest(text, path=Path("jobs/x.yaml")))
    assert [c.request["seed"] for c in expansion] == [1, 2]
    assert expansion.stats.product == 0


def test_random_seeds_are_pinned_reproducibly_from_seed_base():
    """Same manifest, same seeds; another seed_base, other seeds; all within 0..2^32-1."""
    text = HEAD + "grid: {prompt: [a, b, c]}\n"
    seeds = [c.request["seed"] for c in _cells(text)]
    assert seeds == [c.request["seed"] for c in _cells(text)]
    assert len(set(seeds)) == 3
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert seeds != [c.request["seed"] for c in _cells("seed_base: 1\n" + text)]
    request = _cells(text)[0].request
    assert request["seed"] == pin_seed(0, request, 0)


def test_replicas_have_their_own_keys_and_random_seeds_differ():
    """repeat 3: three keys; a random seed is pinned per replica, an explicit one is kept."""
    random_cells = _cells(HEAD + "repeat: 3\ngrid: {prompt: p}\n")
    assert [c.replica for c in random_cells] == [0, 1, 2]
    assert len({c.key for c in random_cells}) == 3
    assert len({c.request["seed"] for c in random_cells}) == 3
    fixed = _cells(HEAD + "repeat: 2\ngrid: {prompt: p, seed: 5}\n")
    assert [c.request["seed"] for c in fixed] == [5, 5]
    assert fixed[0].key != fixed[1].key


def test_external_ids_are_short_safe_and_per_attempt():
    """zb-<key>-a<attempt>: [A-Za-z0-9_-], at most 128 characters, distinct per attempt."""
    cell = _cells(HEAD + "grid: {prompt: p}\n")[0]
    ids = {cell.external_id(attempt) for attempt in range(1, 4)}
    assert len(ids) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", i) for i in ids)
    assert cell.external_id(2) == f"zb-{cell.key}-a2"
    assert re.fullmatch(r"[0-9a-f]{32}", cell.key)
    with pytest.raises(ValueError, match="attempt must be between 1 and"):
        cell.external_id(-1)


def test_step_input_is_accepted_and_priced_like_the_emulator():
    """A cell's step input validates against the emulator; its price is zimage's."""
    text = HEAD + f"grid: {{prompt: p, model: base, loras: {{'{AIR}': 0.8}}, size: 1536x1024}}\n"
    cell = _cells(text)[0]
    body = cell.step_input()
    assert body["loras"] == {AIR: 0.8}
    assert validate_template({"steps": [{"$type": "imageGen", "input": body}]}) == {}
    r = cell.request
    shape = (r["model"], r["width"], r["height"], r["steps"], r["quantity"])
    model, width, height, steps, quantity = shape
    assert isinstance(model, str)
    assert isinstance(width, int)
    assert isinstance(height, int)
    assert isinstance(steps, int)
    assert isinstance(quantity, int)
    price = zimage.price_buzz(
        model=model, width=width, height=height, steps=steps, quantity=quantity
    )
    assert pricing.price_buzz(body) == price == 30


def test_an_expansion_is_iterated_once_and_count_cells_agrees():
    """A second iteration is a clear error; count_cells gives the same final stats."""
    manifest = parse_manifest(HEAD + "grid: {prompt: p, steps: [9, 10]}\n", path=Path("x.yaml"))
    expansion = expand(manifest)
    assert not expansion.stats.complete
    cells = list(expansion)
    with pytest.raises(RuntimeError, match="iterated once"):
        iter(expansion)
    assert count_cells(manifest) == expansion.stats
    assert expansion.stats.cells == len(cells) == 2


def test_int_and_float_spellings_of_the_same_number_share_a_key():
    """cfgScale 1 and 1.0, a LoRA strength 1 and 1.0: the same request, the same key."""
    one = _cells(HEAD + f"grid: {{prompt: p, cfgScale: 1, loras: {{'{AIR}': 1}}, seed: 1}}\n")
    other = _cells(HEAD + f"grid: {{prompt: p, cfgScale: 1.0, loras: {{'{AIR}': 1.0}}, seed: 1}}\n")
    assert one[0].key == other[0].key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "base"),
        ("prompt", "q"),
        ("negativePrompt", "n"),
        ("width", 512),
        ("height", 512),
        ("cfgScale", 1.5),
        ("steps", 10),
        ("sampleMethod", "heun"),
        ("schedule", "karras"),
        ("seed", 2),
        ("quantity", 2),
        ("loras", {AIR: 0.5}),
        ("outputFormat", "png"),
    ],
)
def test_any_single_field_change_changes_the_key(field, value):
    """Every request field is part of the key; so are the batch name and the replica."""
    request = dict(_cells(HEAD + "grid: {prompt: p, seed: 1}\n")[0].request)
    base_key = cell_key("t", 0, request)
    assert base_key != cell_key("t", 0, request | {field: value})
    assert base_key != cell_key("u", 0, request)
    assert base_key != cell_key("t", 1, request)


# --- pinned outputs: keys, seeds, externalIds and prices never change ---------------------

# Templates with literal braces, quotes, a backslash and non-ASCII text; a LoRA axis; floats;
# random seeds (pinned per replica); an exclude and two includes; repeat 2.
PINNED_MANIFEST = """\
name: pins-v1
out: out
budget: 100000
seed_base: 7
defaults: {size: 768x1344, negativePrompt: "blurry, {mood}"}
models:
  base: {cfgScale: 4.5, steps: 28}
grid:
  model: [turbo, base]
  prompt: "Ein {animal} im {place} \u2014 \\"quoted\\" \\\\ {{literal}}"
  vars:
    animal: [Fuchs, \u732b]
    place: [Wald, Schnee]
    mood: [calm]
  size: [512x512, 1024x1024]
  cfgScale: [1, 2.5]
  loras:
    - {}
    - {"urn:air:zImage:lora:civitai:2@3": 0.8, "urn:air:zImage:lora:civitai:1@1": 1}
  quantity: [1, 3]
exclude:
  - {model: base, animal: \u732b, quantity: 3}
include:
  - {model: base, prompt: "A heron at dawn", seed: 7, steps: 33, negativePrompt: null}
  - {prompt: "random seed include", mood: "grim"}
repeat: 2
"""


def pinned_cells() -> list[Cell]:
    return list(expand(parse_manifest(PINNED_MANIFEST, path=Path("jobs/pins.yaml"))))


def _price(request: object) -> int:
    assert isinstance(request, dict)
    return zimage.price_buzz(
        model=request["model"],
        width=request["width"],
        height=request["height"],
        steps=request["steps"],
        quantity=request["quantity"],
    )


def test_keys_seeds_external_ids_and_prices_are_pinned():
    """What the code made before any optimization, byte for byte: a key, an externalId or a
    price that moves would orphan every batch planned by an earlier zbatch."""
    cells = pinned_cells()
    assert len(cells) == 228
    first, last = cells[0], cells[-1]
    assert [c.key for c in cells[:3]] == [
        "64e2e08a9c7287c7d160b88ea97cded8",
        "b4577d72405897b35b0ee0a130547f44",
        "27982e5b7463179cb1370a36a8dfd74b",
    ]
    assert first.external_id(1) == "zb-64e2e08a9c7287c7d160b88ea97cded8-a1"
    assert first.request["seed"] == 769327706
    assert first.request["prompt"] == 'Ein Fuchs im Wald \u2014 "quoted" \\ {literal}'
    assert (last.key, last.request["seed"], last.vars) == (
        "99d903462c9dc456e4bc71113ffbbb64",
        3790510894,
        {"mood": "grim"},
    )
    digest = hashlib.sha256()
    for c in cells:
        r = dict(c.request)
        line = (
            f"{c.key} {c.replica} {c.external_id(1)} {_price(r)} {json.dumps(c.step_input())}"
            f" {list(r)} {json.dumps(r)} {json.dumps(dict(c.vars))}\n"
        )
        digest.update(line.encode())
    assert digest.hexdigest() == "4812d84f3fb00cf676939c3a9a17ff4fde1083e987ecfd2d52457af394ae0b71"


def test_the_documented_examples_keys_are_pinned():
    """cabins.yaml: three cells' keys, externalIds, seeds and prices."""
    cells = list(expand(load_manifest(MANIFESTS / "cabins.yaml")))
    found = [
        (c.key, c.external_id(2), c.request["seed"], _price(dict(c.request)))
        for c in (cells[0], cells[17], cells[-1])
    ]
    assert found == [
        ("f767a868fb29a258dff936ac313ffedc", "zb-f767a868fb29a258dff936ac313ffedc-a2", 1234, 9),
        ("81c7ab1ed9c31616c7f74477e0acaa11", "zb-81c7ab1ed9c31616c7f74477e0acaa11-a2", 1235, 9),
        ("29124afc915c0edf3969100d74d10349", "zb-29124afc915c0edf3969100d74d10349-a2", 7, 28),
    ]


# --- properties --------------------------------------------------------------------------

axis_values = {
    "steps": st.lists(st.integers(8, 12), min_size=1, max_size=3),
    "cfgScale": st.lists(st.sampled_from([1, 1.5, 2]), min_size=1, max_size=3),
    "seed": st.lists(st.integers(0, 3), min_size=1, max_size=3),
    "model": st.lists(st.sampled_from(["turbo", "base"]), min_size=1, max_size=2),
}


@st.composite
def grids(draw):
    names = draw(st.lists(st.sampled_from(sorted(axis_values)), min_size=1, unique=True))
    axes = {name: draw(axis_values[name]) for name in names}
    entry = st.fixed_dictionaries({}, optional={name: axis_values[name] for name in names})
    excludes = [
        {name: values[0] for name, values in e.items()}
        for e in draw(st.lists(entry, max_size=2))
        if e
    ]
    include = draw(st.lists(st.fixed_dictionaries({"steps": st.integers(8, 12)}), max_size=2))
    return axes, excludes, include


def _oracle(axes, excludes, include, repeat: int) -> int:
    """Cells by brute force: product, drop matches, merge, dedupe by merged request."""
    seen, count = set(), 0
    names = list(axes)
    for combination in itertools.product(*axes.values()):
        cell = dict(zip(names, combination, strict=True))
        if any(all(cell.get(k) == v for k, v in e.items()) for e in excludes):
            continue
        model = cell.get("model", "turbo")
        merged = {**zimage.MODEL_DEFAULTS[model], "seed": None, **cell, "model": model}
        merged["cfgScale"] = float(merged["cfgScale"])
        key = tuple(sorted((k, str(v)) for k, v in merged.items()))
        if key not in seen:
            seen.add(key)
            count += 1
    return (count + len(include)) * repeat


@PROPERTIES
@given(grids(), st.integers(1, 3))
def test_cell_count_is_the_product_minus_exclusions_and_duplicates(grid, repeat):
    """cells = (product - excluded - duplicates + included) × repeat, as brute force finds."""
    axes, excludes, include = grid
    data = {"name": "p", "out": "o", "budget": 9, "repeat": repeat}
    data["grid"] = {"prompt": "p", **axes}
    data["exclude"] = excludes
    data["include"] = [{"prompt": "i", **entry, "seed": 99} for entry in include]
    expansion = expand(parse_manifest(_manifest(data), path=Path("x.yaml")))
    cells = list(expansion)
    s = expansion.stats
    product = 1
    for values in axes.values():
        product *= len(values)
    include_dupes = len(include) - len({e["steps"] for e in include})
    assert s.product == product
    assert s.cells == len(cells) == (s.product - s.excluded - s.duplicates + s.included) * repeat
    assert s.cells == _oracle(axes, excludes, include, repeat) - include_dupes * repeat
    assert len({c.key for c in cells}) == len(cells)


@st.composite
def respellings(draw):
    """A manifest as data, and the same manifest with keys reordered and numbers respelled."""
    data = {
        "name": "k",
        "out": "o",
        "budget": 9,
        "seed_base": draw(st.integers(0, 10)),
        "defaults": {"cfgScale": 1, "quantity": draw(st.integers(1, 2))},
        "models": {"base": {"steps": 21, "cfgScale": 4}},
        "grid": {
            "prompt": "A {v}",
            "vars": {"v": draw(st.lists(st.text("abc", min_size=1), min_size=1, max_size=3))},
            "model": ["turbo", "base"],
        },
    }
    reordered = {
        key: (dict(reversed(list(value.items()))) if key in ("defaults", "models") else value)
        for key, value in reversed(list(data.items()))
    }
    reordered["defaults"] = dict(reordered["defaults"]) | {"cfgScale": 1.0}
    reordered["models"] = {"base": {"cfgScale": 4.0, "steps": 21}}
    flow = draw(st.booleans())
    return data, reordered, flow


@PROPERTIES
@given(respellings())
def test_keys_are_stable_under_reordering_and_reformatting(case):
    """Key order, flow vs block style and 1 vs 1.0 never change a key; keys are unique."""
    data, reordered, flow = case
    first = [c.key for c in expand(parse_manifest(_manifest(data), path=Path("a.yaml")))]
    text = yaml.safe_dump(reordered, sort_keys=False, default_flow_style=flow)
    second = [c.key for c in expand(parse_manifest(text, path=Path("b/c.yaml")))]
    assert first == second
    assert len(set(first)) == len(first)


@st.composite
def varied_manifests(draw):
    """Grids of every kind of axis, `%` and non-ASCII in templates, random or fixed seeds."""
    optional = {
        "model": st.lists(st.sampled_from(["turbo", "base"]), min_size=1, max_size=2, unique=True),
        "steps": st.lists(st.integers(8, 30), min_size=1, max_size=2, unique=True),
        "cfgScale": st.lists(st.sampled_from([1, 1.5, 4.25]), min_size=1, max_size=2, unique=True),
        "size": st.lists(
            st.sampled_from(["64x64", "512x768"]), min_size=1, max_size=2, unique=True
        ),
        "loras": st.just([{}, {AIR: 0.5}]),
        "seed": st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=2, unique=True),
        "negativePrompt": st.sampled_from(["no {v}", "100% {v}"]),
        "quantity": st.lists(st.integers(1, 3), min_size=1, max_size=2, unique=True),
    }
    names = draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4))
    grid = {name: draw(optional[name]) for name in names}
    words = st.text(st.sampled_from("a%sé猫{}"), min_size=1, max_size=4)
    vars_ = draw(st.lists(words, min_size=1, max_size=3, unique=True))
    grid["prompt"] = draw(st.sampled_from(["A {v}", "%s %% {v} {{x}}", "\u00e9 {v} %d"]))
    grid["vars"] = {"v": [v.replace("{", "(").replace("}", ")") for v in vars_]}
    data = {
        "name": "prop",
        "out": "o",
        "budget": 9,
        "seed_base": draw(st.integers(0, 5)),
        "repeat": draw(st.integers(1, 3)),
        "defaults": {"negativePrompt": "x"} if draw(st.booleans()) else {},
        "grid": grid,
        "include": [{"prompt": "inc % {v}", "v": "i"}] if draw(st.booleans()) else [],
    }
    return data


@PROPERTIES
@given(varied_manifests())
def test_every_cell_is_keyed_and_seeded_by_the_reference_functions(data):
    """Whatever shortcut the expansion takes, each cell's key is `cell_key` of its request,
    a random seed is `pin_seed`'s, and the request is in FIELDS order with plain LoRAs."""
    manifest = parse_manifest(_manifest(data), path=Path("x.yaml"))
    random_seed = "seed" not in data["grid"]
    for c in expand(manifest):
        request = dict(c.request)
        assert list(request) == list(zimage.FIELDS)
        assert type(request["loras"]) is dict
        assert c.key == cell_key("prop", c.replica, request)
        if random_seed:
            assert request["seed"] == pin_seed(data["seed_base"], request, c.replica)
        assert canonical_json(request) == json.dumps(
            request, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
