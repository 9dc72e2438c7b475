"""Caption templates and one column naming, read by the consumers themselves.

A batch whose manifest writes `captions: {template: ...}` and whose cells carry two LoRAs
each (or none), exported every way, then read by the real packages: Hugging Face `datasets`
(imagefolder on OUT and on the folder export, webdataset on the shards), DuckDB (JSONL and
Parquet: every LoRA and its strength, every column named without quoting), and kohya-ss's
documented loader rule (reimplemented in tests/test_trainer_folder.py). A template naming a
field that does not exist is refused when the manifest is read, before anything is spent.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.cli._main import main
from runner.dataset._export import export, shard_urls
from runner.emulator import EmulatorConfig, EmulatorTransport, FaultProfile, make_app
from runner.errors import InvalidManifest
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import run_batch
from runner.store._store import Store
from tests.test_dataset import FAST, load_imagefolder, read_jsonl
from tests.test_trainer_folder import kohya_glob_images, kohya_read_caption

LORA_A = "urn:air:zImage:lora:civitai:123456@789012"
LORA_B = "urn:air:zImage:lora:civitai:654321@210987"
TWO_LORAS = [{"urn": LORA_A, "strength": 0.8}, {"urn": LORA_B, "strength": 0.35}]
TEMPLATE = "zkstyle, {var_style} style, {prompt}"
SNAKE = re.compile(r"[a-z][a-z0-9_]*\Z")  # a plain SQL identifier, no quoting

MANIFEST = f"""
name: consumers
out: out
budget: 1000
seed_base: 3
captions:
  template: "{TEMPLATE}"
defaults: {{size: 64x64, quantity: 1}}
models:
  base: {{negativePrompt: "blurry"}}
grid:
  model: [turbo, base]
  prompt: "A cabin\\n  at   dusk, in {{style}}"
  vars:
    style: [ink, oil paint]
  loras: [{{}}, {{"{LORA_A}": 0.8, "{LORA_B}": 0.35}}]
limits: {{in_flight: 8, submit_per_s: 1000, downloads: 4}}
"""


@pytest.fixture(autouse=True)
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` would point structlog at a test's captured stderr, which is closed after it."""
    monkeypatch.setattr("runner.cli._main.configure_logging", lambda **_: None)


def write_manifest(tmp_path: Path, text: str = MANIFEST) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


async def run_consumers_batch(tmp_path: Path) -> Manifest:
    """2 models x 2 styles x (no LoRA, two LoRAs): 8 cells, one 64x64 image each."""
    path = write_manifest(tmp_path)
    m = parse_manifest(path.read_text(), path=path)
    app = make_app(EmulatorConfig(time_scale=0, seed=5, faults=FaultProfile()))
    transport = EmulatorTransport(app)
    async with Client(base_url="http://emulator", token="t", transport=transport) as client:
        outcome = await run_batch(m, client, tuning=FAST)
    assert outcome.counts["image:downloaded"] == 8
    return m


def expected_text(row: dict[str, Any]) -> str:
    return f"zkstyle, {row['var_style']} style, A cabin at dusk, in {row['var_style']}"


async def test_the_caption_template_fills_text_and_every_caption(tmp_path: Path) -> None:
    """One line, whitespace normalised, from the manifest's template: in metadata.jsonl, the
    .txt beside each image in OUT, the folder export's captions and metadata, JSONL, CSV and
    the WebDataset samples' .txt."""
    with anyio.fail_after(90):
        m = await run_consumers_batch(tmp_path)
        assert m.captions == "txt"  # a template alone writes the caption files
        folder = await export(m.out, "folder", to=tmp_path / "train")
        jsonl = await export(m.out, "jsonl")
        table = await export(m.out, "csv")
        shards = await export(m.out, "webdataset")
    rows = read_jsonl(m.out / "metadata.jsonl")
    assert len(rows) == 8
    for row in rows:
        assert row["prompt"] == f"A cabin\n  at   dusk, in {row['var_style']}"  # as sent
        assert row["text"] == expected_text(row)
        assert (m.out / row["file_name"]).with_suffix(".txt").read_text() == row["text"]
    texts = {row["key"]: row["text"] for row in rows}
    for image_path in kohya_glob_images(folder.path):
        assert kohya_read_caption(image_path) == texts[Path(image_path).stem.split("_")[0]]
    assert {r["key"]: r["text"] for r in read_jsonl(folder.path / "metadata.jsonl")} == texts
    assert {r["key"]: r["text"] for r in read_jsonl(jsonl.path)} == texts
    with table.path.open(newline="") as f:
        assert {r["key"]: r["text"] for r in csv.DictReader(f)} == texts
    with tarfile.open(shards.path / "shard-000000.tar") as tar:
        txt = {
            n.name.split("_")[0]: tar.extractfile(n).read().decode()  # type: ignore[union-attr]
            for n in tar.getmembers()
            if n.name.endswith(".txt")
        }
    assert txt == texts


@pytest.mark.parametrize(
    ("captions", "says"),
    [
        (
            '{template: "{style}, {prompt}"}',
            "m.yaml:6:22: captions.template: '{style}, {prompt}': {style} is not a caption"
            " field; did you mean 'var_style'? (allowed: {prompt}, {negative_prompt}, {model},"
            " {seed}, {width}, {height}, {steps}, {cfg_scale}, {sample_method}, {schedule},"
            " {var_style})",
        ),
        ('{template: "{colour}"}', "captions.template: '{colour}': {colour} is not a caption"),
        ('{template: "a {prompt"}', "captions.template: 'a {prompt': unmatched '{'"),
        ("{template: 7}", "captions.template: 7 is not a caption template"),
        ('{template: " "}', "captions.template: ' ': is empty"),
        ("{files: tx}", "captions.files: 'tx' is not a captions mode; did you mean 'txt'?"),
        ('{template: "{prompt}", trigger: x}', "captions.trigger"),
    ],
)
def test_a_bad_caption_template_is_refused_where_it_is_written(
    tmp_path: Path, captions: str, says: str
) -> None:
    text = MANIFEST.replace(f'captions:\n  template: "{TEMPLATE}"', f"captions: {captions}")
    path = write_manifest(tmp_path, text)
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(text, path=path)
    assert says in str(caught.value)


def test_a_template_that_may_render_empty_is_warned(tmp_path: Path) -> None:
    """kohya-ss stops on an empty caption file: a template of fields that can be empty only
    (a variable, the negative prompt) is said when the manifest is read."""
    for template, warned in [
        ("{var_style}", True),
        (" {negative_prompt} ", True),
        ("zk {var_style}", False),
        ("{var_style}{model}", False),
    ]:
        text = MANIFEST.replace(TEMPLATE, template)
        m = parse_manifest(text, path=write_manifest(tmp_path, text))
        said = [str(w) for w in m.warnings if "captions.template" in str(w)]
        assert bool(said) is warned, (template, said)
        if warned:
            assert "may make an empty caption" in said[0]


def test_captions_txt_and_a_template_without_files(tmp_path: Path) -> None:
    """`captions: txt` is still the prompt; `files: none` keeps the template for `text` only."""
    for captions, files, template in [
        ("txt", "txt", "{prompt}"),
        ("none", "none", "{prompt}"),
        ('{template: "{var_style}", files: none}', "none", "{var_style}"),
        ('{template: "x {{literal}} {model}"}', "txt", "x {{literal}} {model}"),
    ]:
        text = MANIFEST.replace(f'captions:\n  template: "{TEMPLATE}"', f"captions: {captions}")
        m = parse_manifest(text, path=write_manifest(tmp_path, text))
        assert (m.captions, m.caption_template) == (files, template)


async def test_a_bad_template_spends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MANIFEST.replace("{var_style} style", "{styel} style")
    path = write_manifest(tmp_path, text)
    code = await anyio.to_thread.run_sync(main, ["run", str(path), "--emulator"])
    assert code == 2
    err = capsys.readouterr().err
    assert "captions.template" in err
    assert "{styel} is not a caption field" in err
    assert not (tmp_path / "out").exists()  # no record, no request, no Buzz


async def test_every_column_is_snake_case_in_every_format(tmp_path: Path) -> None:
    """One naming convention: metadata.jsonl, the folder's metadata.jsonl, JSONL, CSV and
    Parquet have the same columns, each a plain identifier (no quoting in SQL)."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    with anyio.fail_after(90):
        m = await run_consumers_batch(tmp_path)
        folder = await export(m.out, "folder", to=tmp_path / "train")
        jsonl = await export(m.out, "jsonl")
        table = await export(m.out, "csv")
        parquet = await export(m.out, "parquet")
    columns = list(read_jsonl(m.out / "metadata.jsonl")[0])
    assert all(SNAKE.match(c) for c in columns), columns
    assert {"negative_prompt", "cfg_scale", "sample_method", "nsfw_level", "var_style"} <= set(
        columns
    )
    assert list(read_jsonl(folder.path / "metadata.jsonl")[0]) == columns
    assert list(read_jsonl(jsonl.path)[0]) == columns
    assert table.path.read_text().splitlines()[0].split(",") == columns
    assert pq.read_schema(parquet.path).names == columns


async def test_duckdb_keeps_every_lora_and_names_columns_without_quotes(tmp_path: Path) -> None:
    import duckdb

    with anyio.fail_after(90):
        m = await run_consumers_batch(tmp_path)
        jsonl = await export(m.out, "jsonl")
        parquet = await export(m.out, "parquet")
    con = duckdb.connect()
    for source in (f"read_json_auto('{jsonl.path}')", f"read_parquet('{parquet.path}')"):
        got = con.execute(
            "SELECT var_style, model, negative_prompt, cfg_scale, len(loras) AS n,"
            " [loras[1].urn, loras[2].urn] AS urns,"
            " [loras[1].strength, loras[2].strength] AS strengths, text"
            f" FROM {source} ORDER BY var_style, model, n"
        ).fetchall()
        assert [(r[0], r[1], r[2], r[4]) for r in got] == [
            (style, model, "blurry" if model == "base" else "", n)
            for style in ("ink", "oil paint")
            for model in ("base", "turbo")
            for n in (0, 2)
        ]
        for row in got:
            lora_pairs = list(zip(row[5], row[6], strict=True))
            assert lora_pairs == (
                [(None, None)] * 2 if row[4] == 0 else [(LORA_A, 0.8), (LORA_B, 0.35)]
            )
            assert row[7] == f"zkstyle, {row[0]} style, A cabin at dusk, in {row[0]}"
        (kind,) = con.execute(f"SELECT DISTINCT typeof(loras) FROM {source}").fetchone() or ()
        assert kind == "STRUCT(urn VARCHAR, strength DOUBLE)[]"
        # metadata.jsonl keeps `loras` as JSON text (imagefolder's first-chunk typing): DuckDB
        # reads it back whole all the same
    meta = m.out / "metadata.jsonl"
    pairs = con.execute(
        f"SELECT DISTINCT CAST(loras AS VARCHAR) FROM read_json_auto('{meta}')"
    ).fetchall()
    assert sorted(json.loads(p[0]) for p in pairs) == sorted([[], TWO_LORAS], key=len)


def load(kind: str, cache: Path, **kwargs: Any) -> Any:
    import datasets  # type: ignore[import-untyped]

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()
    return datasets.load_dataset(kind, cache_dir=str(cache), split="train", **kwargs)


async def test_datasets_reads_out_the_folder_and_the_shards(tmp_path: Path) -> None:
    """The real `datasets`: imagefolder on OUT and on the folder export (the `text` column,
    `var_style`), webdataset on the shards (`txt`, and both LoRAs in `json`)."""
    with anyio.fail_after(180):
        m = await run_consumers_batch(tmp_path)
        folder = await export(m.out, "folder", to=tmp_path / "train", subsets="var_style")
        shards = await export(m.out, "webdataset", shard_size=3)
        on_out = await anyio.to_thread.run_sync(load_imagefolder, m.out, tmp_path / "hf1")
        on_folder = await anyio.to_thread.run_sync(load_imagefolder, folder.path, tmp_path / "hf2")
        files = sorted(str(p) for p in shards.path.glob("shard-*.tar"))
        assert len(files) == shards.files == 3
        assert shard_urls(shards.path, 3).endswith("shard-{000000..000002}.tar")
        tars = await anyio.to_thread.run_sync(
            lambda: load("webdataset", tmp_path / "hf3", data_files={"train": files})
        )
    for loaded in (on_out["train"], on_folder["train"]):
        assert loaded.num_rows == 8
        for sample in loaded:
            assert sample["image"].size == (64, 64)
            assert sample["text"] == expected_text(sample)
            assert json.loads(sample["loras"]) in ([], TWO_LORAS)
    assert sorted(folder.path.iterdir())[0].name.startswith("1_")  # kohya subset folders
    assert tars.num_rows == 8
    assert {"__key__", "jpg", "json", "txt"} <= set(tars.column_names)
    for sample in tars:
        assert sample["jpg"].size == (64, 64)
        assert sample["txt"] == sample["json"]["text"] == expected_text(sample["json"])
        assert sample["json"]["loras"] in ([], TWO_LORAS)
        assert sample["__key__"] == f"{sample['json']['key']}_{sample['json']['index']}"


async def test_the_run_settings_keep_the_template_for_later_commands(tmp_path: Path) -> None:
    """`retry`, `verify --repair` and `export` take only OUT: the template is in the record."""
    with anyio.fail_after(90):
        m = await run_consumers_batch(tmp_path)
        async with await Store.open(m.out / "batch.sqlite", read_only=True) as store:
            settings = await store.run_settings()
    assert settings is not None
    assert (settings.captions, settings.caption_template) == ("txt", TEMPLATE)


async def test_exporting_the_folder_again_changes_nothing(tmp_path: Path) -> None:
    """Same record, same export: the same files with the same bytes, none rewritten (images
    and captions keep their inode and mtime), no temp file left."""

    def listing(folder: Path) -> dict[str, tuple[bytes, int, int]]:
        return {
            p.relative_to(folder).as_posix(): (
                p.read_bytes(),
                p.stat().st_ino,
                p.stat().st_mtime_ns,
            )
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    with anyio.fail_after(90):
        m = await run_consumers_batch(tmp_path)
        to = tmp_path / "train"
        first = await export(m.out, "folder", to=to, subsets="vars.style", repeats=3)
        before = listing(to)
        again = await export(m.out, "folder", to=to, subsets="var_style", repeats=3)
        after = listing(to)
    assert (first.rows, first.files) == (again.rows, again.files) == (8, 2)
    assert sorted(before) == sorted(after)
    assert len([n for n in after if n.endswith(".jpg")]) == 8
    assert {n.split("/")[0] for n in after if "/" in n} == {"3_ink", "3_oil paint"}
    for name, (data, inode, mtime) in after.items():
        assert data == before[name][0]
        if name != "metadata.jsonl":  # replaced atomically on every export
            assert (inode, mtime) == before[name][1:], name
