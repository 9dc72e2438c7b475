"""Issue 15, money and data: the cap the user gave holds, and a changed manifest never spends
again silently. End to end through `runner.cli.main` against the embedded emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli._main import main

MANIFEST = """\
name: {name}
out: out
budget: {budget}
seed_base: 7
defaults: {{size: 64x64{defaults}}}
grid:
  prompt: ["a fox", "a lighthouse", "a bowl of ramen"]
"""


def write(tmp_path: Path, *, budget: int = 2, defaults: str = "", name: str = "night") -> str:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(name=name, budget=budget, defaults=defaults), "utf-8")
    return str(path)


def run(manifest: str, *more: str) -> int:
    return main(["run", manifest, "--emulator", "--time-scale", "0", "--quiet", *more])


def status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, object]]:
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_the_last_cap_given_holds_until_a_new_one_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 3: `run --budget 60`, then a plain `run`, keeps the cap at 60 (not the manifest's
    2); a changed manifest budget is a new cap; `status` never shows a share above 100%."""
    m = write(tmp_path, budget=2)
    assert run(m, "--budget", "60") == 0  # 3 cells of 1 Buzz: past the manifest's 2
    assert run(m) == 0
    text, doc = status(tmp_path, capsys)
    assert doc["buzz"] == {"cap": 60, "charged": 3, "reserved": 0, "committed": 3}
    assert "buzz        3 charged · 0 reserved · cap 60 (57 left)" in text
    write(tmp_path, budget=1)  # a new cap, given in the manifest, below what is charged
    assert run(m) == 0
    text, doc = status(tmp_path, capsys)
    assert doc["buzz"] == {"cap": 1, "charged": 3, "reserved": 0, "committed": 3}
    assert "3 charged · 0 reserved · cap 1 (over the cap by 2: nothing more is submitted)" in text
    assert "%" not in text
    assert run(m, "--budget", "40") == 0
    assert run(m) == 0  # the manifest's budget did not change since: 40 holds
    assert status(tmp_path, capsys)[1]["buzz"] == {
        "cap": 40, "charged": 3, "reserved": 0, "committed": 3
    }  # fmt: skip


def metadata(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "out" / "metadata.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def charged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> int:
    buzz = status(tmp_path, capsys)[1]["buzz"]
    assert isinstance(buzz, dict)
    return int(buzz["charged"])


def test_an_edited_default_is_refused_before_any_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: `steps: 12` in `defaults` gives every cell a new key: a plain run refuses it
    (exit 2, nothing submitted, the record unchanged) and says what to do."""
    m = write(tmp_path, budget=100)
    assert run(m) == 0
    before = charged(tmp_path, capsys)
    write(tmp_path, budget=100, defaults=", steps: 12")
    capsys.readouterr()
    assert run(m) == 2
    err = capsys.readouterr().err
    assert "leaves 3 cells of the last manifest behind and adds 3 new cells" in err
    for said in ("--replace", "--keep", "Nothing was submitted", "zbatch plan"):
        assert said in err
    assert charged(tmp_path, capsys) == before
    assert [row["steps"] for row in metadata(tmp_path)] == [9, 9, 9]  # turbo's default


def images_on_disk(tmp_path: Path) -> int:
    return sum(
        1 for p in (tmp_path / "out" / "images").rglob("*") if p.suffix != ".txt" and p.is_file()
    )


def export_rows(tmp_path: Path, *more: str) -> list[dict[str, object]]:
    target = tmp_path / f"export{len(more)}.jsonl"
    argv = ["export", str(tmp_path / "out"), "--format", "jsonl", "--to", str(target), *more]
    assert main(argv) == 0
    return [json.loads(line) for line in target.read_text("utf-8").splitlines()]


def gallery_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str], *more: str) -> str:
    capsys.readouterr()
    assert main(["gallery", str(tmp_path / "out"), *more]) == 0
    out = capsys.readouterr().out
    return next(line for line in out.splitlines() if line.startswith("shows"))


def test_replace_drops_the_old_cells_from_the_dataset_not_from_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: `--replace` runs the new cells; the old ones leave metadata.jsonl, the export
    and the gallery (`--all` brings them back), and their images stay on disk."""
    m = write(tmp_path, budget=100)
    assert run(m) == 0
    write(tmp_path, budget=100, defaults=", steps: 12")
    assert run(m, "--replace") == 0
    assert charged(tmp_path, capsys) == 6  # the new cells, once
    rows = metadata(tmp_path)
    assert [(r["steps"], r["revision"]) for r in rows] == [(12, 2)] * 3
    assert images_on_disk(tmp_path) == 6
    assert sorted(int(str(r["steps"])) for r in export_rows(tmp_path)) == [12, 12, 12]
    assert sorted(int(str(r["steps"])) for r in export_rows(tmp_path, "--all")) == [
        9, 9, 9, 12, 12, 12
    ]  # fmt: skip
    assert gallery_shows(tmp_path, capsys).startswith("shows       3 images of 3 cells")
    assert gallery_shows(tmp_path, capsys, "--all").startswith("shows       6 images of 6 cells")
    assert run(m) == 0  # the replaced cells are not left behind again
    assert charged(tmp_path, capsys) == 6


def test_keep_keeps_both_and_each_row_names_its_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: `--keep` runs the new cells and keeps the old ones in the dataset, each row
    naming its manifest revision; the next change is compared with the last manifest."""
    m = write(tmp_path, budget=100)
    assert run(m) == 0
    write(tmp_path, budget=100, defaults=", steps: 12")
    assert run(m, "--keep") == 0
    assert sorted((r["steps"], r["revision"]) for r in metadata(tmp_path)) == [
        (9, 1), (9, 1), (9, 1), (12, 2), (12, 2), (12, 2)
    ]  # fmt: skip
    assert len(export_rows(tmp_path)) == 6
    assert run(m) == 0  # unchanged since: nothing to refuse, nothing to pay
    assert charged(tmp_path, capsys) == 6
    write(tmp_path, budget=100, defaults=", steps: 15")
    capsys.readouterr()
    assert run(m) == 2
    assert "leaves 3 cells of the last manifest behind" in capsys.readouterr().err


def test_a_renamed_batch_in_the_same_out_is_refused_then_continued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: a new `name` with the same `out` is refused like a changed grid (exit 2, not
    1): the name is part of every cell's key, so every cell is left behind. `--keep` takes
    the new name and runs the new cells; the old ones, their record and the tag stay."""
    m = write(tmp_path, budget=100)
    assert run(m) == 0
    write(tmp_path, budget=100, name="morning")
    capsys.readouterr()
    assert run(m) == 2
    err = capsys.readouterr().err
    assert "it names the batch 'morning', and the folder holds 'night'" in err
    assert "leaves 3 cells of the last manifest behind and adds 3 new cells" in err
    assert charged(tmp_path, capsys) == 3
    assert run(m, "--keep") == 0
    text, doc = status(tmp_path, capsys)
    assert (doc["batch"], doc["tag"]) == ("morning", "zbatch:night")
    assert charged(tmp_path, capsys) == 6
    assert sorted(int(str(r["revision"])) for r in metadata(tmp_path)) == [1, 1, 1, 2, 2, 2]


def test_plan_compares_a_changed_manifest_with_the_batch_in_its_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: `zbatch plan` on a manifest whose `out` holds a batch says what a run would
    add, keep and leave behind, and the Buzz of the new cells; it writes nothing."""
    m = write(tmp_path, budget=100)
    capsys.readouterr()
    assert main(["plan", m]) == 0
    assert "holds batch" not in capsys.readouterr().out  # no batch yet: nothing to compare
    assert run(m) == 0
    capsys.readouterr()
    assert main(["plan", m]) == 0
    out = capsys.readouterr().out
    assert "holds batch 'night' (manifest revision 1): 0 new cells (about 0 Buzz)" in out
    assert "· 3 kept · 0 left behind" in out
    assert "refuses" not in out
    write(tmp_path, budget=100, defaults=", steps: 12")
    record = (tmp_path / "out" / "batch.sqlite").read_bytes()
    assert main(["plan", m]) == 0
    out = capsys.readouterr().out
    assert "3 new cells (about 3 Buzz) · 0 kept · 3 left behind" in out
    assert "`zbatch run` refuses it: the 3 cells left behind need --replace" in out
    assert main(["plan", m, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["batch"] | {"out": ""} == {
        "out": "", "name": "night", "renamed": False, "revision": 1, "new": 3, "new_buzz": 3,
        "kept": 0, "left_behind": 3, "set_aside": 0, "needs_replace_or_keep": True,
    }  # fmt: skip
    assert (tmp_path / "out" / "batch.sqlite").read_bytes() == record
    assert run(m, "--replace") == 0
    write(tmp_path, budget=100, defaults=", steps: 12, cfgScale: 1.5")
    capsys.readouterr()
    assert main(["plan", m]) == 0
    said = capsys.readouterr().out
    assert "(manifest revision 2): 3 new cells (about 3 Buzz) · 0 kept · 3 left behind" in said
    assert "· 3 set aside earlier" in said


SAMPLED = """\
name: sampled
out: out
budget: 100
seed_base: 3
defaults: {size: 64x64}
grid:
  prompt: ["a fox", "a lighthouse", "a bowl of ramen"]
  cfgScale: [1.0, 1.5]
  seed: {count: 2}
"""


def test_a_sample_shows_every_axis_value_and_the_full_run_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 2: `run --sample 3` of a 12-cell grid runs 3 cells showing each prompt and each
    cfgScale; the full run after it runs the other 9, never the sampled ones again."""
    path = tmp_path / "m.yaml"
    path.write_text(SAMPLED, "utf-8")
    capsys.readouterr()
    assert run(str(path), "--sample", "3") == 0
    assert capsys.readouterr().out.startswith(
        "Sample: 3 cells across every axis ran; 3 of 12 cells succeeded so far."
    )
    rows = metadata(tmp_path)
    assert len(rows) == 3
    assert {r["prompt"] for r in rows} == {"a fox", "a lighthouse", "a bowl of ramen"}
    assert {r["cfg_scale"] for r in rows} == {1.0, 1.5}
    assert charged(tmp_path, capsys) == 3
    assert run(str(path), "--sample", "3") == 0  # the same sample: nothing new to pay
    assert charged(tmp_path, capsys) == 3
    assert run(str(path)) == 0
    assert charged(tmp_path, capsys) == 12
    after = metadata(tmp_path)
    assert len(after) == 12
    assert all(r["attempt"] == 1 for r in after)
    assert {str(r["key"]) for r in rows} <= {str(r["key"]) for r in after}


def test_where_filters_the_export_and_the_gallery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: `--where FIELD=VALUE` on export and gallery keeps the cells that match (all
    conditions); a field that is no input is a usage error naming what is allowed."""
    m = write(tmp_path, budget=100)
    assert run(m) == 0
    write(tmp_path, budget=100, defaults=", steps: 12")
    assert run(m, "--keep") == 0
    rows = export_rows(tmp_path, "--where", "steps=12")
    assert sorted(int(str(r["steps"])) for r in rows) == [12, 12, 12]
    rows = export_rows(tmp_path, "--where", "steps=9.0", "--where", "prompt=a fox")
    assert [(r["steps"], r["prompt"]) for r in rows] == [(9, "a fox")]
    shows = gallery_shows(tmp_path, capsys, "--where", "steps=12")
    assert shows.startswith("shows       3 images of 3 cells")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "out"), "--format", "jsonl", "--where", "hue=3"]) == 2
    assert "--where: 'hue' is not a field (allowed: model, " in capsys.readouterr().err
