"""`zbatch gallery`: axes found from the cells, the default and chosen X/Y, the grid's
positions and Buzz sums, escaping, the contact sheet, the errors, and the command end to end
on a batch made by the emulator."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image, ImageStat

from runner.cli._main import main
from runner.contract import _zimage as zimage
from runner.dataset._gallery import make_gallery, read_cells, sheet_name
from runner.dataset._gallery_grid import (
    GalleryCell,
    GalleryImage,
    build_grid,
    detect_axes,
    parse_states,
    tiling,
)
from runner.dataset._gallery_html import render_page
from runner.dataset._gallery_sheet import render_sheet
from runner.errors import GalleryError
from tests.browser.batch import PROMPTS, build_batch

COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (150, 40, 170)]


def cell(
    n: int,
    *,
    model: str = "turbo",
    prompt: str = "a fox",
    seed: int = 1,
    replica: int = 0,
    charged: int = 2,
    state: str = "succeeded",
    images: int = 1,
    image_state: str = "downloaded",
    variables: dict[str, str] | None = None,
    **fields: Any,
) -> GalleryCell:
    """Cell number `n` with its own key and `images` images at images/<ab>/<key>_<i>.jpg."""
    key = hashlib.blake2b(str(n).encode(), digest_size=16).hexdigest()
    request = dict(zimage.MODEL_DEFAULTS[model]) | {"model": model, "prompt": prompt}
    request |= {"seed": seed, "width": 64, "height": 64, "negativePrompt": None, "loras": {}}
    request |= fields
    shots = tuple(
        GalleryImage(
            index=i,
            state=image_state,
            path=f"images/{key[:2]}/{key}_{i}.jpg" if image_state == "downloaded" else None,
            sha256="0" * 64,
            size_bytes=100,
            width=64,
            height=64,
            attempt=1,
            workflow_id=f"wf-{n}",
        )
        for i in range(images)
    )
    return GalleryCell(
        key=key,
        seq=n,
        replica=replica,
        model=model,
        request=request,
        vars=variables or {},
        estimate_buzz=charged,
        charged_buzz=charged,
        state=state,
        workflow_id=f"wf-{n}",
        images=shots,
    )


def demo_cells() -> list[GalleryCell]:
    """jobs/demo.yaml's grid: model x 3 prompts x seed 42/43; turbo 2 Buzz, base 5."""
    cells: list[GalleryCell] = []
    for model in ("turbo", "base"):
        for prompt in ("cabin", "lighthouse", "ramen"):
            for seed in (42, 43):
                charged = 2 if model == "turbo" else 5
                cells.append(
                    cell(len(cells), model=model, prompt=prompt, seed=seed, charged=charged)
                )
    return cells


def write_images(out: Path, cells: list[GalleryCell]) -> dict[str, tuple[int, int, int]]:
    """Flat-coloured JPEGs for every downloaded image; returns path -> colour."""
    colours = {}
    for n, c in enumerate(cells):
        for image in c.images:
            if image.path:
                colour = COLOURS[n % len(COLOURS)]
                (out / image.path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 64), colour).save(out / image.path, "JPEG", quality=95)
                colours[image.path] = colour
    return colours


# -- axes -----------------------------------------------------------------------------------


def test_axes_are_the_fields_that_vary_with_values_in_grid_order() -> None:
    axes = {a.name: a.labels for a in detect_axes(demo_cells())}
    assert axes == {
        "model": ("turbo", "base"),
        "prompt": ("cabin", "lighthouse", "ramen"),
        "steps": ("9", "20"),
        "cfgScale": ("1", "4"),
        "seed": ("42", "43"),
    }


def test_size_loras_and_vars_become_axes_with_readable_labels() -> None:
    cells = [
        cell(0, width=512, height=768, variables={"style": "oil"}),
        cell(
            1,
            width=1024,
            height=1024,
            loras={"urn:air:zImage:lora:civitai:1@2": 0.8},
            variables={"style": "ink"},
        ),
    ]
    axes = {a.name: a.labels for a in detect_axes(cells)}
    assert axes["size"] == ("512x768", "1024x1024")
    assert axes["loras"] == ("(none)", "urn:air:zImage:lora:civitai:1@2 @ 0.8")
    assert axes["vars.style"] == ("oil", "ink")
    assert "width" not in axes
    assert "height" not in axes


def test_nothing_varies_in_a_single_cell_batch_so_the_grid_is_one_position() -> None:
    grid = build_grid("one", [cell(0)])
    assert (grid.x.name, grid.y.name, grid.x.size, grid.y.size) == ("", "", 1, 1)
    assert grid.positions == (((0,),),)


# -- the default and chosen X/Y -------------------------------------------------------------


def test_default_is_the_fullest_largest_pair_with_more_values_down_the_rows() -> None:
    grid = build_grid("demo", demo_cells())
    assert (grid.x.name, grid.y.name) == ("model", "prompt")
    assert [a.name for a in grid.filters] == ["seed"]
    assert grid.twin_names(grid.x) == ("steps", "cfgScale")  # they vary exactly with model
    assert grid.twin_labels(grid.x, 1) == ("steps 20", "cfgScale 4")


def test_a_seed_that_differs_in_every_cell_is_not_picked_over_the_crossed_axes() -> None:
    cells = [
        cell(n, model=m, prompt=p, seed=1000 + n)
        for n, (m, p) in enumerate((m, p) for m in ("turbo", "base") for p in "abcd")
    ]
    grid = build_grid("random", cells)
    assert (grid.x.name, grid.y.name) == ("model", "prompt")
    assert [a.name for a in grid.filters] == []  # one seed per position: it only picks one


def test_template_variables_win_over_the_prompts_they_render() -> None:
    cells = [
        cell(n, prompt=f"{s} {t}", variables={"style": s, "subject": t})
        for n, (s, t) in enumerate((s, t) for s in ("oil", "ink", "pencil") for t in ("cat", "dog"))
    ]
    grid = build_grid("vars", cells)
    assert (grid.x.name, grid.y.name) == ("vars.subject", "vars.style")
    assert [a.name for a in grid.filters] == []  # prompt only picks a position, as the pair does
    assert grid.positions[2][1] == (5,)


def test_one_varying_axis_is_a_single_column() -> None:
    grid = build_grid("seeds", [cell(n, seed=n) for n in range(3)])
    assert (grid.x.name, grid.x.size, grid.y.name, grid.y.size) == ("", 1, "seed", 3)


def test_x_and_y_choose_the_axes_and_the_other_is_found() -> None:
    cells = demo_cells()
    assert (lambda g: (g.x.name, g.y.name))(build_grid("d", cells, x="seed", y="model")) == (
        "seed",
        "model",
    )
    only_x = build_grid("d", cells, x="prompt")
    assert (only_x.x.name, only_x.y.name) == ("prompt", "model")
    only_y = build_grid("d", cells, y="seed")
    assert (only_y.x.name, only_y.y.name) == ("prompt", "seed")
    assert sorted(a.name for a in only_y.filters) == ["model"]


def test_width_and_height_name_the_size_axis() -> None:
    cells = [cell(0, width=512), cell(1, width=768)]
    assert build_grid("s", cells, x="width").x.name == "size"


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            "colour",
            None,
            "--x colour: the batch has no field 'colour'; axes that vary in this batch: "
            "model, prompt, steps, cfgScale, seed",
        ),
        (
            None,
            "sampler",
            "--y sampler: 'sampleMethod' is 'euler' in every cell, so it is not an axis; "
            "axes that vary in this batch: model, prompt, steps, cfgScale, seed",
        ),
        (
            "seed",
            "seed",
            "--x and --y are both 'seed': choose two different axes (the others that vary: "
            "model, prompt, steps, cfgScale)",
        ),
        (
            "vars.style",
            None,
            "--x vars.style: the batch has no field 'vars.style'; axes that vary in this "
            "batch: model, prompt, steps, cfgScale, seed",
        ),
    ],
)
def test_an_axis_the_batch_lacks_is_an_error_naming_the_allowed_ones(
    x: str | None, y: str | None, message: str
) -> None:
    with pytest.raises(GalleryError) as info:
        build_grid("demo", demo_cells(), x=x, y=y)
    assert str(info.value) == message
    assert info.value.exit_code == 2


def test_an_axis_asked_of_a_batch_where_nothing_varies_says_so() -> None:
    with pytest.raises(GalleryError, match="'model' is 'turbo' in every cell.*no field varies"):
        build_grid("one", [cell(0)], x="model")


def test_image_states_are_checked() -> None:
    assert parse_states(["downloaded", " lost"]) == {"downloaded", "lost"}
    with pytest.raises(GalleryError, match="--state gone: image states are pending, downloaded"):
        parse_states(["gone"])
    with pytest.raises(GalleryError, match="--state nothing"):
        parse_states([""])


# -- layout and cost ------------------------------------------------------------------------


def test_positions_hold_every_cell_of_their_row_and_column_values() -> None:
    cells = demo_cells()
    grid = build_grid("demo", cells)
    for r, prompt in enumerate(grid.y.labels):
        for c, model in enumerate(grid.x.labels):
            held = [cells[n] for n in grid.positions[r][c]]
            assert [(x.request["prompt"], x.model, x.request["seed"]) for x in held] == [
                (prompt, model, 42),
                (prompt, model, 43),
            ]
    assert sorted(n for row in grid.positions for slot in row for n in slot) == list(range(12))


def test_replicas_and_quantity_share_their_position() -> None:
    cells = [cell(0, replica=0, images=2), cell(1, replica=1, images=2), cell(2, model="base")]
    grid = build_grid("r", cells)
    assert (grid.x.name, grid.y.name) == ("", "model")
    assert grid.positions == (((0, 1),), ((2,),))
    assert grid.image_count == 5
    assert tiling(4) == (2, 2)
    assert tiling(5) == (3, 2)


def test_buzz_is_summed_per_position_row_column_and_in_all() -> None:
    cells = demo_cells()
    cells.append(
        cell(99, model="base", prompt="ramen", seed=44, charged=0, state="failed", images=0)
    )
    grid = build_grid("demo", cells, x="model", y="prompt")
    assert grid.cell_buzz == ((4, 10), (4, 10), (4, 10))  # the failed cell cost nothing
    assert grid.row_buzz == (14, 14, 14)
    assert grid.col_buzz == (12, 30)
    assert grid.total_buzz == 42 == sum(c.charged_buzz for c in cells)
    assert grid.positions[2][1] == (10, 11, 12)


# -- the page -------------------------------------------------------------------------------


class Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for t, attrs in self.tags if t == tag]


HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)> "quoted" \'single\''


def test_everything_from_the_manifest_is_escaped() -> None:
    cells = [
        cell(0, prompt=HOSTILE, negativePrompt="</title><b>", variables={"v": '"><svg>'}),
        cell(1, prompt="plain", variables={"v": "ok"}),
    ]
    page = render_page(build_grid('<i>name</i>"', cells), "grid.png")
    parsed = Page(page)
    assert len(parsed.all("script")) == 1
    assert len(parsed.all("img")) == 2  # the prompt's <img> is text
    assert not [a for _, a in parsed.tags if "onerror" in a]
    for markup in ("<svg", "<b>", "<i>", "<script>alert"):
        assert markup not in page
    assert HOSTILE in "".join(parsed.text)  # shown as written
    title = parsed.all("img")[0]["title"]
    assert f"prompt: {HOSTILE}\n" in title
    assert "negativePrompt: </title><b>\n" in title
    assert 'vars.v: "><svg>' in title


def test_the_page_has_every_image_once_with_a_relative_src_and_its_inputs() -> None:
    cells = demo_cells()
    grid = build_grid("demo", cells)
    imgs = Page(render_page(grid, "grid-model-prompt.png")).all("img")
    assert sorted(i["src"] for i in imgs) == sorted(f"../{c.images[0].path}" for c in cells)
    title = imgs[0]["title"]
    for line in (
        "prompt: cabin",
        "model: turbo",
        "seed: 42",
        "size: 64x64",
        "cfgScale: 1",
        "steps: 9",
        "sampler: euler",
        "schedule: simple",
        "loras: (none)",
        f"cell key: {cells[0].key}",
        "workflow id: wf-0",
        f"sha256: {'0' * 64}",
    ):
        assert line in title.splitlines()


def test_a_cell_without_images_shows_its_state_and_lost_images_only_when_asked() -> None:
    cells = [
        cell(0),
        cell(1, seed=2, state="failed", images=0),
        cell(2, seed=3, image_state="lost"),
    ]
    page = Page(render_page(build_grid("b", cells), "g.png"))
    assert len(page.all("img")) == 1
    assert "failed" in page.text
    assert "no image in the states shown" in page.text
    with_lost = Page(render_page(build_grid("b", cells, states=["downloaded", "lost"]), "g.png"))
    assert "image lost" in with_lost.text


# -- the contact sheet ----------------------------------------------------------------------


def test_the_sheet_draws_every_image_in_its_position_with_its_colour(tmp_path: Path) -> None:
    cells = demo_cells()
    colours = write_images(tmp_path, cells)
    grid = build_grid("demo", cells)
    sheet = render_sheet(grid, tmp_path)
    image = Image.open(io.BytesIO(sheet.png))
    assert image.size == sheet.size
    assert sorted(sheet.boxes) == sorted(colours)
    for path, (left, top, right, bottom) in sheet.boxes.items():
        inner = image.crop((left + 4, top + 4, right - 4, bottom - 4)).convert("RGB")
        mean = ImageStat.Stat(inner).mean
        assert all(abs(m - c) < 8 for m, c in zip(mean, colours[path], strict=True)), path
    # the two seeds of (row r, column c) sit side by side, in the column's order
    lefts = {c.key: sheet.boxes[c.images[0].path or ""][0] for c in cells}
    assert lefts[cells[0].key] < lefts[cells[1].key] < lefts[cells[6].key]


def test_a_huge_grid_makes_a_bounded_sheet_that_says_what_it_left_out(tmp_path: Path) -> None:
    cells = [cell(n, seed=n, images=0, state="running") for n in range(400)]
    cells += [cell(1000 + n, seed=n, model="base", images=0, state="running") for n in range(400)]
    sheet = render_sheet(build_grid("big", cells), tmp_path)
    assert max(sheet.size) <= 16_000
    assert sheet.rows_shown < 400


# -- end to end on the emulator -------------------------------------------------------------


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` would point structlog at this test's captured stderr, closed after it."""
    monkeypatch.setattr("runner.cli._main.configure_logging", lambda **_: None)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    async def build() -> Path:
        with anyio.fail_after(30):
            return await build_batch(tmp_path)

    return anyio.run(build, backend="asyncio")


def test_read_cells_matches_the_record(out: Path) -> None:
    name, cells = anyio.run(read_cells, out, backend="asyncio")
    assert name == "gallery-demo"
    assert [c.request["prompt"] for c in cells[:4]] == [
        PROMPTS[0],
        PROMPTS[0],
        PROMPTS[1],
        PROMPTS[1],
    ]
    db = sqlite3.connect(out / "batch.sqlite")
    (charged,) = db.execute("SELECT SUM(charged_buzz) FROM attempts").fetchone()
    db.close()
    assert sum(c.charged_buzz for c in cells) == charged == 42
    for c in cells:
        assert c.state == "succeeded"
        assert len(c.images) == 1
        image = c.images[0]
        data = (out / (image.path or "")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == image.sha256


@pytest.mark.usefixtures("quiet_cli")
def test_the_command_writes_the_page_and_sheet_atomically(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gallery", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 rows by prompt x 2 columns by model; filters: seed" in printed
    assert "12 images of 12 cells, 42 Buzz charged" in printed
    folder = out / "gallery"
    assert sorted(p.name for p in folder.iterdir()) == ["grid-model-prompt.png", "index.html"]
    page = Page((folder / "index.html").read_text())
    assert len(page.all("img")) == 12
    assert all((folder / i["src"]).resolve().is_file() for i in page.all("img"))
    with Image.open(folder / "grid-model-prompt.png") as sheet:
        assert sheet.format == "PNG"
    assert main(["gallery", str(out), "--x", "seed", "--y", "prompt"]) == 0
    assert (folder / "grid-seed-prompt.png").is_file()


@pytest.mark.usefixtures("quiet_cli")
def test_the_command_exits_2_naming_the_axes_or_the_missing_batch(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gallery", str(out), "--x", "steps", "--y", "cfgScale"]) == 0  # twins: allowed
    capsys.readouterr()
    assert main(["gallery", str(out), "--x", "schedule"]) == 2
    err = capsys.readouterr().err
    assert "'schedule' is 'simple' in every cell" in err
    assert "model, prompt, steps, cfgScale, seed" in err
    assert main(["gallery", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["gallery", str(out), "--state", "done"]) == 2


def test_the_sheet_is_named_for_its_axes() -> None:
    assert sheet_name(build_grid("d", demo_cells())) == "grid-model-prompt.png"
    one = build_grid("d", [cell(0), cell(1, seed=5)])
    assert sheet_name(one) == "grid-all-seed.png"
    named = build_grid("v", [cell(0, variables={"s": "a"}), cell(1, variables={"s": "b"})])
    assert sheet_name(named) == "grid-all-vars.s.png"


def test_make_gallery_reads_during_a_run_without_the_lock(out: Path) -> None:
    """The record opens read-only: a held batch lock (a run going on) does not stop it."""
    from runner.store._store import Store

    async def with_lock_held() -> int:
        async with await Store.open(out / "batch.sqlite"):
            result = await make_gallery(out)
        return result.images

    assert anyio.run(with_lock_held, backend="asyncio") == 12


def test_template_variables_win_over_a_60_value_prompt_crossed_with_seeds() -> None:
    """Issue 15: 3 animals x 20 places render 60 prompts; with 4 seeds the pair prompt x seed
    (240 positions, all full) beat the variables. The variables are laid out; seed filters."""
    animals, places = ("fox", "owl", "heron"), tuple(f"place {n}" for n in range(20))
    combos = [(a, p, s) for a in animals for p in places for s in (1, 2, 3, 4)]
    cells = [
        cell(n, prompt=f"A {a} in {p}", seed=s, variables={"animal": a, "place": p})
        for n, (a, p, s) in enumerate(combos)
    ]
    grid = build_grid("vars", cells)
    assert (grid.x.name, grid.y.name) == ("vars.animal", "vars.place")
    assert [a.name for a in grid.filters] == ["seed"]
    assert build_grid("vars", cells, x="prompt").x.name == "prompt"  # still an axis on demand


def test_the_images_of_a_position_are_labelled_with_what_tells_them_apart() -> None:
    """Issue 15: the seeds inside a grid position were unlabelled. Each image says its seed
    (the filter that differs there); an image alone in its position has no label."""
    grid = build_grid("demo", demo_cells())
    labels = [grid.image_label(n, grid.cells[n].images[0]) for n in (0, 1)]
    assert labels == ["seed 42", "seed 43"]
    page = render_page(grid, "sheet.png")
    assert page.count("<figcaption>seed 42</figcaption>") == 6
    assert page.count("<figcaption>seed 43</figcaption>") == 6
    alone = build_grid("one", [cell(0), cell(1, model="base")])
    assert alone.image_label(0, alone.cells[0].images[0]) == ""
    assert "<figcaption>" not in render_page(alone, "sheet.png")
    two = build_grid("quantity", [cell(0, images=2), cell(1, model="base", images=2)])
    assert [two.image_label(0, image) for image in two.cells[0].images] == ["#0", "#1"]


def test_thumb_sets_each_images_width_on_the_page_and_the_sheet(tmp_path: Path) -> None:
    """Issue 15: `--thumb PX` chooses the thumbnail size: each image PX wide, a position as
    wide as its widest tiling needs (2 seeds side by side: 2 x 150 + the 2 px gap)."""
    cells = demo_cells()
    write_images(tmp_path, cells)
    grid = build_grid("demo", cells, thumb=150)
    page = render_page(grid, "sheet.png")
    assert "grid-template-columns:repeat(auto-fill,150px)" in page
    assert "gap:2px;width:302px}" in page
    sheet = render_sheet(grid, tmp_path)
    assert {(r - left, b - t) for left, t, r, b in sheet.boxes.values()} == {(150, 150)}
    default = render_sheet(build_grid("demo", cells), tmp_path)
    assert {(r - left) for left, _, r, _ in default.boxes.values()} == {79}  # 160 shared by 2


@pytest.mark.usefixtures("quiet_cli")
@pytest.mark.parametrize(("value", "code"), [("256", 0), ("31", 2), ("2000", 2), ("big", 2)])
def test_the_command_takes_thumb_in_its_range(
    out: Path, capsys: pytest.CaptureFixture[str], value: str, code: int
) -> None:
    if code == 0:
        assert main(["gallery", str(out), "--thumb", value]) == 0
        assert "auto-fill,256px" in (out / "gallery" / "index.html").read_text()
        return
    with pytest.raises(SystemExit) as exc:
        main(["gallery", str(out), "--thumb", value])
    assert exc.value.code == 2
    assert "argument --thumb:" in capsys.readouterr().err


def test_the_sheet_labels_each_image_of_a_position_under_it(tmp_path: Path) -> None:
    cells = demo_cells()
    write_images(tmp_path, cells)
    sheet = render_sheet(build_grid("demo", cells), tmp_path)
    image = Image.open(io.BytesIO(sheet.png)).convert("L")
    for left, _, right, bottom in sheet.boxes.values():
        band = image.crop((left, bottom + 1, right, bottom + 14))  # "seed 42" in grey ink
        darkest, _ = ImageStat.Stat(band).extrema[0]
        assert darkest < 180, "no label under the thumbnail"
