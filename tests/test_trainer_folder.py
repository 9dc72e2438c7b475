"""Trainers take the export as it is: `--format folder` read by each consumer's own rule.

* kohya-ss (sd-scripts): its DreamBooth-style loader, reimplemented here from its
  documented behaviour: `train_data_dir`'s subfolders named `<repeats>_<name>` are subsets
  (a name without a number first is ignored); in a folder, a non-recursive glob of each
  image extension; an image's caption is the file of the same stem with the caption
  extension, its first line, stripped (an empty caption file is an error). OneTrainer globs
  a concept folder the same way (without "include subdirectories").
* diffusers' `train_text_to_image`: `datasets.load_dataset("imagefolder")`, caption column
  `text` by default.
* DuckDB on the JSONL and Parquet exports: every LoRA of a row kept, one struct type.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.cli._main import main
from runner.dataset._export import export
from runner.dataset._folder import FolderWriter, subset_name
from runner.dataset._metadata import PROMPT_CAPTION, caption_text, metadata_row
from runner.errors import ExportError
from tests.test_dataset import LORA, image, load_imagefolder, read_jsonl, run_small_batch

# sd-scripts' IMAGE_EXTENSIONS (without the optional AVIF and JPEG-XL plugins).
KOHYA_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
KOHYA_EXTENSIONS += [ext.upper() for ext in KOHYA_EXTENSIONS]


@pytest.fixture(autouse=True)
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` would point structlog at a test's captured stderr, which is closed after it."""
    monkeypatch.setattr("runner.cli._main.configure_logging", lambda **_: None)


def kohya_glob_images(directory: Path) -> list[str]:
    """sd-scripts' `glob_images(directory, "*")`: one non-recursive glob per extension."""
    paths: set[str] = set()
    for ext in KOHYA_EXTENSIONS:
        paths.update(glob.glob(os.path.join(glob.escape(str(directory)), "*" + ext)))
    return sorted(paths)


def kohya_read_caption(img_path: str, caption_extension: str = ".txt") -> str | None:
    """sd-scripts' caption rule: the same stem with the caption extension, first line."""
    cap_path = os.path.splitext(img_path)[0] + caption_extension
    if not os.path.isfile(cap_path):
        return None
    with open(cap_path, encoding="utf-8") as f:
        lines = f.readlines()
    assert len(lines) > 0, f"caption file is empty: {cap_path}"  # sd-scripts asserts it too
    return lines[0].strip()


def kohya_subsets(train_data_dir: Path) -> dict[str, tuple[int, str]]:
    """sd-scripts' subsets of a `train_data_dir`: folder -> (repeats, class tokens)."""
    found = {}
    for subdir in train_data_dir.iterdir():
        if not subdir.is_dir():
            continue
        tokens = subdir.name.split("_")
        try:
            repeats = int(tokens[0])
        except ValueError:
            continue  # "ignore directory without repeats"
        if repeats >= 1:
            found[subdir.name] = (repeats, "_".join(tokens[1:]))
    return found


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def test_the_flat_folder_is_what_kohya_globs(tmp_path: Path) -> None:
    """Every image in one folder, each with its one-line caption; names as in OUT/images."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        result = await export(m.out, "folder", to=tmp_path / "train")
    assert (result.rows, result.files, result.missing) == (24, 0, 0)
    rows = {Path(r["file_name"]).name: r for r in read_jsonl(m.out / "metadata.jsonl")}
    images = kohya_glob_images(result.path)
    assert [Path(p).name for p in images] == sorted(rows)  # stable names, unique
    assert kohya_subsets(result.path) == {}
    for path in images:
        row = rows[Path(path).name]
        assert kohya_read_caption(path) == row["text"] == f"A {row['var_animal']} in the snow"
        assert _sha256(path) == row["sha256"]
    top = read_jsonl(result.path / "metadata.jsonl")
    assert {r["file_name"] for r in top} == set(rows)
    assert {r["key"]: r["text"] for r in top} == {r["key"]: r["text"] for r in rows.values()}


async def test_subset_folders_are_kohya_subsets_with_their_repeats(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        to = tmp_path / "train"
        result = await export(m.out, "folder", to=to, subsets="vars.animal", repeats=10)
    assert result.path == to
    assert result.files == 3
    subsets = kohya_subsets(result.path)
    assert sorted(subsets.values()) == [(10, "café cat"), (10, "fox"), (10, "owl")]
    rows = read_jsonl(result.path / "metadata.jsonl")
    for name, (_, animal) in subsets.items():
        images = kohya_glob_images(result.path / name)
        assert len(images) == 8  # 2 models x 2 LoRA settings x 2 images
        for path in images:
            assert kohya_read_caption(path) == f"A {animal} in the snow"
    assert sorted(r["file_name"].split("/")[0] for r in rows) == sorted(
        name for name in subsets for _ in range(8)
    )
    assert kohya_glob_images(result.path) == []  # none left at the top


async def test_imagefolder_loads_the_folder_with_the_text_column(tmp_path: Path) -> None:
    """diffusers' `train_text_to_image` reads `text` by default: it is there, one line."""
    with anyio.fail_after(120):
        m, _ = await run_small_batch(tmp_path)
        result = await export(m.out, "folder", to=tmp_path / "train")
        loaded = await anyio.to_thread.run_sync(load_imagefolder, result.path, tmp_path / "hf")
    train = loaded["train"]
    assert train.num_rows == 24
    assert "text" in train.column_names
    assert train.column_names[:4] == ["image", "key", "index", "attempt"]
    captions = {p.stem: p.read_text() for p in result.path.glob("*.txt")}
    for sample in train:
        assert sample["image"].size == (64, 64)
        assert sample["text"] == captions[f"{sample['key']}_{sample['index']}"]
        assert json.loads(sample["loras"]) in ([], [{"urn": LORA, "strength": 0.8}])


async def test_a_multi_line_prompt_makes_a_one_line_caption(tmp_path: Path) -> None:
    prompt = "A fox\n  in the\tsnow,\r\n\u2003at dawn  "
    assert caption_text(prompt) == "A fox in the snow, at dawn"
    shot = image(request_json=json.dumps({"prompt": prompt, "seed": 1, "quantity": 1}))
    assert shot.path is not None
    (tmp_path / shot.path).parent.mkdir(parents=True)
    (tmp_path / shot.path).write_bytes(b"jpeg bytes")
    row = metadata_row(shot, [])
    assert (row["prompt"], row["text"]) == (prompt, "A fox in the snow, at dawn")
    writer = FolderWriter(tmp_path / "train", ([], PROMPT_CAPTION), tmp_path, None, "b")
    writer.write([shot])
    writer.commit()
    (caption,) = (tmp_path / "train").glob("*.txt")
    assert caption.read_text() == "A fox in the snow, at dawn"
    (meta,) = read_jsonl(tmp_path / "train" / "metadata.jsonl")
    assert (meta["prompt"], meta["text"]) == (prompt, "A fox in the snow, at dawn")


async def test_exporting_again_keeps_what_is_there_and_removes_what_left(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        folder = tmp_path / "train"
        await export(m.out, "folder", to=folder)
        inodes = {p.name: p.stat().st_ino for p in folder.iterdir()}
        (folder / "notes.md").write_text("mine")
        again = await export(m.out, "folder", to=folder, where=["model=base"])
    assert again.rows == 12
    left = {p.name for p in folder.iterdir()}
    assert len(kohya_glob_images(folder)) == 12
    assert {r["model"] for r in read_jsonl(folder / "metadata.jsonl")} == {"base"}
    assert "notes.md" in left  # not ours: left alone
    kept = [n for n in left if n.endswith(".jpg")]
    assert all(folder.joinpath(n).stat().st_ino == inodes[n] for n in kept)  # not rewritten
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files


def test_subset_names_are_one_safe_folder_name() -> None:
    assert subset_name("café cat") == "café cat"
    assert subset_name("a/b\\c:d") == "a_b_c_d"
    assert subset_name("  two\n lines ") == "two lines"
    assert subset_name("..") == "_"
    assert subset_name(None) == "_"
    assert subset_name(7.5) == "7.5"
    assert len(subset_name("x" * 500)) == 100


@pytest.mark.parametrize(
    ("fmt", "kwargs", "says"),
    [
        ("jsonl", {"subsets": "model"}, "go with --format folder"),
        ("folder", {"subsets": "colour"}, "'colour' is not a field"),
        ("folder", {"repeats": 0}, "at least 1"),
        ("folder", {"states": ("pending",)}, "only --state downloaded"),
        ("folder", {"to": None}, "needs --to DIR outside OUT: loading OUT"),
        ("folder", {"to": Path("export/train")}, "is inside"),
    ],
)
async def test_a_folder_export_that_cannot_be_made_is_refused(
    tmp_path: Path, fmt: str, kwargs: dict[str, Any], says: str
) -> None:
    kwargs = {"to": tmp_path / "elsewhere", **kwargs}
    if kwargs["to"] is not None and not kwargs["to"].is_absolute():
        kwargs["to"] = tmp_path / "out" / kwargs["to"]
    with pytest.raises(ExportError, match=says):
        await export(tmp_path / "out", fmt, **kwargs)
    assert not (tmp_path / "elsewhere").exists()


async def test_the_cli_writes_subset_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
    to = tmp_path / "train"
    argv = ["export", str(m.out), "--format", "folder", "--to", str(to), "--subsets", "model"]
    code = await anyio.to_thread.run_sync(main, [*argv, "--repeats", "5"])
    assert code == 0
    assert "wrote 24 images and their captions to 2 subset folders of" in capsys.readouterr().out
    assert sorted(kohya_subsets(to).values()) == [(5, "base"), (5, "turbo")]
    assert await anyio.to_thread.run_sync(main, ["export", str(m.out), "--repeats", "5"]) == 2


async def test_duckdb_reads_every_lora_of_a_row_from_jsonl_and_parquet(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="the SQL check needs duckdb (dev group)")
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        jsonl = await export(m.out, "jsonl")
        parquet = await export(m.out, "parquet")
    con = duckdb.connect()
    for source in (f"read_json_auto('{jsonl.path}')", f"read_parquet('{parquet.path}')"):
        kinds = con.execute(f"SELECT typeof(loras), typeof(text) FROM {source} LIMIT 1").fetchall()
        assert kinds == [("STRUCT(urn VARCHAR, strength DOUBLE)[]", "VARCHAR")]
        got = con.execute(
            f"SELECT len(loras) AS n, loras[1].urn, loras[1].strength, count(*) FROM {source}"
            " GROUP BY ALL ORDER BY n"
        ).fetchall()
        assert got == [(0, None, None, 12), (1, LORA, 0.8, 12)]
        texts = con.execute(f"SELECT DISTINCT text = prompt FROM {source}").fetchall()
        assert texts == [(True,)]
