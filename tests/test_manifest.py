"""Manifests: the documented format loads; every bad one is reported, all at once, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import InvalidManifest, ManifestError
from runner.manifest._load import (
    RANDOM,
    Axis,
    Limits,
    Location,
    Problem,
    Retries,
    load_manifest,
    parse_manifest,
)

MANIFESTS = Path(__file__).parent / "manifests"
HEAD = "name: t\nout: out\nbudget: 100\n"
AIR = "urn:air:zImage:lora:civitai:123456@789012"
KEYS = (
    "model, prompt, negativePrompt, width, height, cfgScale, steps, sampleMethod, schedule,"
    " seed, quantity, loras, outputFormat, size"
)
TOP = (
    "name, out, budget, seed_base, defaults, models, grid, include, exclude, repeat, limits,"
    " retries, captions"
)


def _problems(text: str, path: str = "jobs/x.yaml") -> list[str]:
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(text, path=Path(path))
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


def _ok(text: str, path: str = "jobs/x.yaml"):
    return parse_manifest(text, path=Path(path))


def test_the_documented_example_loads():
    """docs/manifest.md's example: axes in order, normalized values, everything typed."""
    m = load_manifest(MANIFESTS / "cabins.yaml")
    assert (m.name, m.budget_buzz, m.seed_base) == ("cabins-v1", 2000, 1234)
    assert m.out == (MANIFESTS.parent / "out" / "cabins").absolute()
    assert m.defaults == {"width": 1024, "height": 1024, "outputFormat": "jpeg"}
    assert m.models == {"turbo": {"steps": 10}, "base": {"cfgScale": 4.5, "steps": 28}}
    assert m.axes == (
        Axis("model", ("turbo", "base")),
        Axis("vars.animal", ("fox", "owl", "heron")),
        Axis("vars.place", ("a misty forest", "a snowy valley")),
        Axis("seed", (1234, 1235, 1236, 1237)),
    )
    assert m.constants == {"prompt": "A {animal} in {place}, golden hour"}
    assert m.include == ({"model": "base", "prompt": "A heron at dawn", "seed": 7},)
    assert m.exclude == ({"model": "base", "vars.animal": "heron"},)
    assert (m.repeat, m.captions, m.warnings) == (1, "none", ())
    assert m.limits == Limits(in_flight=32, submit_per_s=5.0, downloads=8)
    assert m.retries == Retries(attempts=3)
    assert m.var_names == ("animal", "place")


def test_defaults_of_the_optional_keys():
    """seed_base 0, repeat 1, limits {8, 2, 4}, retries 3, captions none, no sections."""
    m = _ok(HEAD + "defaults: {prompt: p}\n")
    assert (m.seed_base, m.repeat, m.captions) == (0, 1, "none")
    assert (m.limits, m.retries) == (Limits(8, 2.0, 4), Retries(3))
    assert (m.axes, m.constants, m.include, m.exclude, m.models) == ((), {}, (), (), {})


def test_values_are_normalized():
    """1.0 is 1, size is width+height (a (w, h) on an axis), loras sorted pairs, random."""
    m = _ok(
        HEAD
        + "defaults: {cfgScale: 1.0, size: 1536x1024, seed: random}\n"
        + "grid:\n  prompt: p\n  size: [512x512]\n"
        + f"  loras: [{{}}, {{'civitai:2@1': 1.0, '{AIR}': 0.5}}]\n"
    )
    assert m.defaults == {"cfgScale": 1, "width": 1536, "height": 1024, "seed": RANDOM}
    assert type(m.defaults["cfgScale"]) is int
    assert m.axes == (
        Axis("size", ((512, 512),)),
        Axis("loras", ((), (("civitai:2@1", 1), (AIR, 0.5)))),
    )


def test_seed_forms():
    """A list, {count: N} from seed_base, {range: [A, B]} inclusive, random, a constant."""
    m = _ok(HEAD + "seed_base: 10\ngrid: {prompt: p, seed: {count: 3}}\n")
    assert m.axes == (Axis("seed", (10, 11, 12)),)
    m = _ok(HEAD + "grid: {prompt: p, seed: {range: [-2, 1]}}\n")
    assert m.axes == (Axis("seed", (-2, -1, 0, 1)),)
    assert _ok(HEAD + "grid: {prompt: p, seed: [5, 3]}\n").axes == (Axis("seed", (5, 3)),)
    assert _ok(HEAD + "grid: {prompt: p, seed: random}\n").constants["seed"] is RANDOM
    assert _ok(HEAD + "grid: {prompt: p, seed: 42}\n").constants["seed"] == 42


def test_prompt_sources_read_text_csv_and_jsonl(tmp_path):
    """Comments and blank lines skipped; CSV by column; JSONL by field; paths relative."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.txt").write_text("# c\nfirst\n\n  second  \n", encoding="utf-8")
    (tmp_path / "b.csv").write_text('id,text\n1,"a, b"\n2,\n3,c\n', encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n\n{"prompt": "y"}\n', encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        HEAD
        + "grid:\n  prompt: {file: p/a.txt}\n  negativePrompt: {csv: b.csv, column: text}\n"
        + "  vars: {}\ninclude: []\n",
        encoding="utf-8",
    )
    m = load_manifest(manifest)
    assert m.axes == (
        Axis("prompt", ("first", "second")),
        Axis("negativePrompt", ("a, b", "c")),
    )
    manifest.write_text(
        HEAD + "grid:\n  prompt: 'A {v}'\n  vars:\n    v: {jsonl: c.jsonl, field: prompt}\n",
        encoding="utf-8",
    )
    assert load_manifest(manifest).axes == (Axis("vars.v", ("x", "y")),)


def test_template_variables_and_literal_braces():
    """Each variable is an axis; {{ }} are literal braces; numbers are kept as written."""
    m = _ok(HEAD + "grid:\n  prompt: '{{a}} {x}'\n  vars: {x: [1.50, fox]}\n")
    assert m.axes == (Axis("vars.x", ("1.50", "fox")),)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            HEAD + "grid: {prompt: p, steps: [9, 0, 10]}\n",
            ["jobs/x.yaml:4:30: grid.steps[1]: 0 is out of range (allowed 1..150)"],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  stpes: 9\n",
            [
                "jobs/x.yaml:6:3: grid.stpes: unknown key; did you mean 'steps'?"
                f" (allowed: {KEYS}, vars)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  sampleMethod: eular\n",
            [
                "jobs/x.yaml:6:17: grid.sampleMethod: 'eular' is not a known sampleMethod;"
                " did you mean 'euler'? (allowed: euler, heun, dpm2, dpm++2s_a, dpm++2m,"
                " dpm++2mv2, ipndm, ipndm_v, ddim_trailing, euler_a, lcm, res_multistep,"
                " res_2s, tcd, er_sde)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  size: [1024x1024, 1000x1024]\n",
            [
                "jobs/x.yaml:6:21: grid.size[1]: width 1000 is not divisible by 16"
                " (allowed 64..2048, divisible by 16)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  cfgScale: []\n",
            ["jobs/x.yaml:6:13: grid.cfgScale: empty axis (allowed: a list of at least one value)"],
        ),
        (
            HEAD + "grid:\n  prompt: 'A {animal}'\n",
            [
                "jobs/x.yaml:5:11: grid.prompt: {animal} has no values"
                " (add grid.vars.animal: a list or a prompt source)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  vars: {animal: [fox]}\n",
            [
                "jobs/x.yaml:6:10: grid.vars.animal: no prompt uses {animal}"
                " (allowed: variables a prompt or negativePrompt uses)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: 'A {animal'\n",
            [
                "jobs/x.yaml:5:11: grid.prompt: 'A {animal': unmatched '{' at character 3;"
                " write {{ for a literal brace"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  loras: {'my lora': 0.8}\n",
            [f"jobs/x.yaml:6:11: grid.loras['my lora']: 'my lora' is not an AIR URN (e.g. {AIR})"],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  seed: {count: 0}\n",
            ["jobs/x.yaml:6:17: grid.seed.count: 0 is not a seed count (allowed 1..1000000)"],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  seed: {range: [5, 1]}\n",
            [
                "jobs/x.yaml:6:17: grid.seed.range: [5, 1] is not a seed range"
                " (allowed: [A, B], int64s with A <= B and at most 1000000 seeds)"
            ],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  seed: [1, random]\n",
            [
                "jobs/x.yaml:6:13: grid.seed[1]: random is not allowed in a seed list"
                " (allowed: an int64, random, a list of int64s, {count: N} or {range: [A, B]})"
            ],
        ),
        (
            HEAD + "grid: {prompt: p, seed: lucky}\n",
            [
                "jobs/x.yaml:4:25: grid.seed: 'lucky' is not a seed"
                " (allowed: an int64, random, a list of int64s, {count: N} or {range: [A, B]})"
            ],
        ),
        (
            "name: 'bad name!'\nbudget: 0\n",
            [
                "jobs/x.yaml:1:7: name: 'bad name!' is not a batch name"
                " (allowed: 1-64 characters of A-Z a-z 0-9 _ -)",
                "jobs/x.yaml:1:1: out: missing"
                " (required: the output folder, relative to this file)",
                "jobs/x.yaml:2:9: budget: 0 is not a Buzz cap"
                " (allowed: a whole number 1..1000000000000)",
            ],
        ),
        (
            HEAD + "budget: 5\n",
            ["jobs/x.yaml:4:1: budget: duplicate key (first given at jobs/x.yaml:3:1)"],
        ),
        (
            HEAD + "grid: {prompt: p}\ndefaults: {steps: [9, 10]}\n",
            [
                "jobs/x.yaml:5:19: defaults.steps: a list is not allowed here"
                " (a list is an axis: put it under grid)"
            ],
        ),
        (
            HEAD + "models: {turbo: {model: base}, bsae: {}}\n",
            [
                "jobs/x.yaml:4:32: models.bsae: unknown key; did you mean 'base'?"
                " (allowed: turbo, base)",
                "jobs/x.yaml:4:18: models.turbo.model: unknown key (allowed:"
                + KEYS.removeprefix("model,")
                + ")",
            ],
        ),
        (
            HEAD + "grid: {steps: 9}\n",
            [
                "jobs/x.yaml:4:7: grid.prompt: no prompt for the turbo cells"
                " (required: a prompt in grid, defaults or models.turbo)"
            ],
        ),
        (
            HEAD + "grid: {prompt: p}\nexclude: [{}]\n",
            [
                "jobs/x.yaml:5:11: exclude[0]: an empty entry would drop every cell"
                " (allowed: field: value pairs)"
            ],
        ),
        (
            HEAD + "grid: {prompt: p}\nexclude: [{seed: random}]\n",
            ["jobs/x.yaml:5:18: exclude[0].seed: random matches no cell (allowed: an int64 seed)"],
        ),
        (
            HEAD + "grid: {prompt: 'A {x}', vars: {x: [a]}}\ninclude: [{prompt: 'B {x}'}]\n",
            [
                "jobs/x.yaml:5:11: include[0]: the prompt uses {x}"
                " but the entry gives no x (required)"
            ],
        ),
        (
            HEAD + "grid: {prompt: 'A {x}', vars: {x: [a]}}\ninclude: [{prompt: B, x: b}]\n",
            ["jobs/x.yaml:5:26: include[0].x: the entry's prompt has no {x}"],
        ),
        (
            HEAD + "grid: {prompt: p}\ninclude: [{animal: fox}]\n",
            [f"jobs/x.yaml:5:12: include[0].animal: unknown key (allowed: {KEYS})"],
        ),
        (
            HEAD
            + "limits: {in_flight: 0, submit_per_s: 0, downloads: 2.5}\nretries: {attempts: 0}\n"
            + "repeat: 1001\ncaptions: text\ngrid: {prompt: p}\n",
            [
                "jobs/x.yaml:6:9: repeat: 1001 is not allowed (allowed: a whole number 1..1000)",
                "jobs/x.yaml:4:21: limits.in_flight: 0 is not allowed"
                " (allowed: a whole number 1..10000)",
                "jobs/x.yaml:4:38: limits.submit_per_s: 0 is not allowed"
                " (allowed: a number 0.01..1000)",
                "jobs/x.yaml:4:52: limits.downloads: 2.5 is not allowed"
                " (allowed: a whole number 1..256)",
                "jobs/x.yaml:5:21: retries.attempts: 0 is not allowed"
                " (allowed: a whole number 1..100)",
                "jobs/x.yaml:7:11: captions: 'text' is not a captions mode; did you mean 'txt'?"
                " (allowed: none, txt, or {template: ..., files: ...})",
            ],
        ),
        (
            "a: [1, 2\n",
            ["jobs/x.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"],
        ),
        ("- 1\n", ["jobs/x.yaml:1:1: a list is not a mapping (allowed: key: value pairs)"]),
        ("", ["jobs/x.yaml:1:1: the manifest is empty (required: name, out, budget)"]),
        ("---\na: 1\n---\nb: 2\n", None),
        (
            "1: x\n" + HEAD,
            ["jobs/x.yaml:1:1: key 1 is not a string (allowed: a name; quote it if need be)"],
        ),
        (
            HEAD + "<<: {x: 1}\n",
            ["jobs/x.yaml:4:1: YAML merge keys (<<) are not supported; write the keys out"],
        ),
        (
            HEAD + "nmae: t\n",
            [f"jobs/x.yaml:4:1: nmae: unknown key; did you mean 'name'? (allowed: {TOP})"],
        ),
        (
            HEAD + "grid:\n  prompt: p\n  vars: {steps: [1]}\n",
            [
                "jobs/x.yaml:6:10: grid.vars.steps: 'steps' is an input field's name"
                " (allowed: letters, digits and _, not a field)"
            ],
        ),
        (
            HEAD + "grid: {prompt: p, size: 1024x1024, width: 512}\n",
            ["jobs/x.yaml:4:25: grid.size: size and width are both set (allowed: one of them)"],
        ),
        (
            HEAD + "grid: {prompt: p, cfgScale: .nan, quantity: '2'}\n",
            [
                "jobs/x.yaml:4:29: grid.cfgScale: nan is not a number (allowed 0..30)",
                "jobs/x.yaml:4:45: grid.quantity: '2' is not an integer (allowed 1..12)",
            ],
        ),
    ],
)
def test_bad_manifests_are_reported_exactly(text, problems):
    """file:line:column, the field path, the bad value and what is allowed; all at once."""
    if problems is None:
        with pytest.raises(InvalidManifest):
            parse_manifest(text, path=Path("jobs/x.yaml"))
        return
    assert _problems(text) == problems


def test_a_manifest_over_the_cell_limit_is_refused():
    """More than 10,000,000 cells (replicas counted) is an error at the grid."""
    text = HEAD + "repeat: 1000\ngrid: {prompt: p, seed: {count: 10001}}\n"
    assert _problems(text) == [
        "jobs/x.yaml:5:7: grid: the manifest makes 10,001,000 cells"
        " (allowed at most 10,000,000: split it)"
    ]


def test_every_problem_is_reported_at_once():
    """Independent mistakes in different sections all appear, in document order of checks."""
    text = HEAD + "defaults: {steps: 0, quantity: 13}\ngrid: {prompt: p, schedule: karas}\n"
    problems = _problems(text)
    assert len(problems) == 3
    assert problems[0].startswith("jobs/x.yaml:4:19: defaults.steps: 0 is out of range")
    assert "did you mean 'karras'?" in problems[2]


def test_invalid_manifest_is_a_manifest_error_with_its_problems():
    """Exit code 2; .problems are Problem values with a Location each."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + "grid: {prompt: p, steps: 0}\n", path=Path("jobs/x.yaml"))
    assert caught.value.exit_code == 2
    assert isinstance(caught.value, InvalidManifest)
    assert caught.value.problems == (
        Problem(
            Location(Path("jobs/x.yaml"), 4, 26), "grid.steps", "0 is out of range (allowed 1..150)"
        ),
    )


def test_prompt_source_problems_point_into_the_source(tmp_path, monkeypatch):
    """A missing file, a path leaving the folder, a bad line: each at its own place."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "p.txt").write_text("fine\nA {broken\n", encoding="utf-8")
    (tmp_path / "j" / "c.csv").write_text("id,txt\n1,a\n", encoding="utf-8")
    (tmp_path / "j" / "l.jsonl").write_text('{"prompt": "a"}\nnot json\n', encoding="utf-8")
    text = (
        HEAD
        + "grid:\n  prompt: {file: p.txt}\n  negativePrompt: {csv: c.csv, column: text}\n"
        + "  vars:\n    a: {file: ../x.txt}\n    b: {file: none.txt}\n"
        + "    c: {jsonl: l.jsonl, field: prompt}\n"
    )
    assert _problems(text, "j/m.yaml") == [
        "j/p.txt:2:1: grid.prompt: 'A {broken': unmatched '{' at character 3;"
        " write {{ for a literal brace",
        "j/c.csv:1:1: grid.negativePrompt.csv: 'c.csv' has no column 'text'; did you mean"
        " 'txt'? (columns: id, txt)",
        f"j/m.yaml:8:15: grid.vars.a.file: '../x.txt' leaves the manifest's folder"
        f" (allowed: a path inside {tmp_path.resolve() / 'j'})",
        "j/m.yaml:9:15: grid.vars.b.file: 'none.txt' does not exist"
        " (allowed: a file inside the manifest's folder)",
        "j/l.jsonl:2:1: grid.vars.c.jsonl: 'l.jsonl' is not JSON (Expecting value)",
    ]


def test_an_empty_prompt_file_is_an_empty_axis(tmp_path):
    """A file holding only comments and blank lines makes no axis: an error."""
    (tmp_path / "p.txt").write_text("# nothing\n\n", encoding="utf-8")
    (tmp_path / "m.yaml").write_text(HEAD + "grid: {prompt: {file: p.txt}}\n", encoding="utf-8")
    with pytest.raises(InvalidManifest) as caught:
        load_manifest(tmp_path / "m.yaml")
    assert caught.value.problems[0].message == "empty axis: 'p.txt' holds no values"


def test_missing_manifest_file():
    """A path that does not exist is one problem naming it."""
    with pytest.raises(InvalidManifest, match="nowhere.yaml: does not exist"):
        load_manifest("nowhere.yaml")


def test_alias_bombs_cycles_and_deep_nesting_are_problems_not_crashes():
    """Aliases expanding past 1,000,000 values, self-reference and deep nesting are refused."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    assert "expands to more than 1000000 values" in _problems(bomb)[0]
    assert "refers to a value that contains it" in _problems("a: &a [*a]\n")[0]
    assert "nesting is too deep" in _problems("a: " + "[" * 40 + "]" * 40 + "\n")[0]
    assert "nesting is too deep" in _problems("a: " + "[" * 5000 + "]" * 5000 + "\n")[0]


def test_advice_becomes_warnings_where_the_value_was_written():
    """turbo at steps 20 warns at grid.steps; base's own steps 50 at models.base.steps."""
    m = _ok(
        HEAD
        + "grid: {prompt: p, steps: 20, negativePrompt: blurry, model: [turbo, base]}\n"
        + "models: {base: {cfgScale: 8}}\n"
    )
    assert [str(w) for w in m.warnings] == [
        "jobs/x.yaml:4:26: grid.steps: turbo works best at steps 8..12 (got 20);"
        " for more fidelity switch to base instead",
        "jobs/x.yaml:4:46: grid.negativePrompt: turbo effectively ignores a negativePrompt"
        " at cfgScale 1; use model base if the negative prompt matters",
        "jobs/x.yaml:5:27: models.base.cfgScale: base works best at cfgScale 3..5 (got 8)",
    ]


def test_quantity_advice_considers_the_size_axis():
    """quantity 8 warns only in combination with a size of 1024x1024 or more."""
    m = _ok(HEAD + "grid: {prompt: p, size: [512x512, 1024x1024], quantity: [1, 8]}\n")
    assert [w.path for w in m.warnings] == ["grid.quantity[1]"]
    assert _ok(HEAD + "grid: {prompt: p, size: 512x512, quantity: 8}\n").warnings == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (HEAD + "grid: {prompt: ['a cat', '']}\n", "jobs/x.yaml:4:26: grid.prompt[1]: ''"),
        (HEAD + "defaults: {prompt: '  '}\n", "jobs/x.yaml:4:20: defaults.prompt: '  '"),
        (
            HEAD + "grid: {prompt: p}\ninclude:\n  - {prompt: ''}\n",
            "jobs/x.yaml:6:14: include[0].prompt: ''",
        ),
    ],
    ids=["grid", "defaults", "include"],
)
def test_an_empty_prompt_is_refused_where_it_was_written(text: str, problem: str) -> None:
    """Issue 15: `prompt: ""` was accepted and paid for; now a located manifest error (exit 2)."""
    assert _problems(text) == [
        f"{problem} is an empty prompt (allowed: text with at least one visible character)"
    ]


def test_an_empty_negative_prompt_is_still_allowed() -> None:
    assert _ok(HEAD + "grid: {prompt: p, negativePrompt: ''}\n").constants["negativePrompt"] == ""


def test_run_refuses_an_empty_prompt_with_exit_2_before_spending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + "grid: {prompt: ''}\n", encoding="utf-8")
    assert main(["run", str(manifest), "--emulator", "--time-scale", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"zbatch: error: {manifest}:4:16: grid.prompt: '' is an empty prompt" + (
        " (allowed: text with at least one visible character)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_prompt_that_renders_empty_is_refused_where_it_is_written() -> None:
    """`prompt: "{subject}"` with an empty subject would render `prompt: ""` for some cells."""
    text = HEAD + "grid:\n  prompt: ['{s}', 'a {s}']\n  vars: {s: [cat, ' ']}\n"
    assert _problems(text) == [
        "jobs/x.yaml:5:12: grid.prompt[0]: '{s}' renders an empty prompt where grid.vars.s[1]"
        " is ' ' (allowed: values that leave the prompt at least one visible character)"
    ]
    assert _ok(HEAD + "grid:\n  prompt: 'a {s}'\n  vars: {s: [cat, '']}\n").axes[0].values == (
        "cat",
        "",
    )
