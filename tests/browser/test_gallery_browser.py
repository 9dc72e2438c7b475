"""The gallery page rendered by real headless Chromium from ``file://``: every image present
and loaded, in the grid position its inputs say, labels right, nothing from the manifest run
as markup, and the pixels on screen those of the right image files."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image, ImageStat

from runner.dataset._gallery import GalleryResult, make_gallery
from tests.browser.batch import PROMPTS, build_batch
from tests.browser.chromium import WINDOW, chromium_path, dump_dom, screenshot

MODELS = ("turbo", "base")
SIGNATURE_BLOCKS = 4  # an image's signature: the mean colour of each of 4 x 4 blocks

# Appended to a copy of the page: after load, writes where everything was laid out into
# the DOM (an absolutely positioned <pre>, so the layout above it does not move).
PROBE = """<script>
window.addEventListener('load', function () {
  function box(e) { var r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  var out = {imgs: [], cols: [], rows: []};
  document.querySelectorAll('#grid img').forEach(function (img) {
    out.imgs.push({src: img.getAttribute('src'), box: box(img), natural: img.naturalWidth});
  });
  document.querySelectorAll('#grid th.col').forEach(function (th) { out.cols.push(box(th)); });
  document.querySelectorAll('#grid th.row').forEach(function (th) { out.rows.push(box(th)); });
  var pre = document.createElement('pre');
  pre.id = 'probe'; pre.style.position = 'absolute'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@dataclass(frozen=True)
class Expected:
    """One downloaded image as the record has it, and where the page must put it."""

    src: str
    path: Path
    sha256: str
    row: int  # the index of its prompt
    column: int  # the index of its model
    seed: int
    buzz: int


@dataclass
class Built:
    out: Path
    result: GalleryResult
    images: list[Expected]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    chromium_path()  # skip before spending a batch when there is no browser
    folder = tmp_path_factory.mktemp("gallery-browser")
    out = anyio.run(build_batch, folder, backend="asyncio")
    result = anyio.run(make_gallery, out, backend="asyncio")
    db = sqlite3.connect(out / "batch.sqlite")
    rows = db.execute(
        "SELECT i.path, i.sha256, c.request, a.charged_buzz FROM images i"
        " JOIN attempts a ON a.id = i.attempt_id JOIN cells c ON c.key = a.cell_key"
        " WHERE i.state = 'downloaded'"
    ).fetchall()
    db.close()
    images = []
    for path, sha, request_json, buzz in rows:
        request = json.loads(request_json)
        images.append(
            Expected(
                src=f"../{path}",
                path=out / path,
                sha256=sha,
                row=PROMPTS.index(request["prompt"]),
                column=MODELS.index(request["model"]),
                seed=request["seed"],
                buzz=buzz,
            )
        )
    assert len(images) == 12
    return Built(out, result, images)


class Dom(HTMLParser):
    """What a test reads from a serialized DOM: images, labels, scripts, the title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict[str, str]] = []
        self.cols: dict[int, str] = {}
        self.rows: dict[int, str] = {}
        self.hidden_cells: set[str] = set()
        self.buzz: dict[str, str] = {}  # "data-buzz-<kind>:<n>" -> its text
        self.scripts = 0
        self.title = ""
        self.probe = ""
        self._stack: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            td = next(at for t, at in reversed(self._stack) if t == "td")
            cell = next(at for t, at in reversed(self._stack) if "data-key" in at)
            self.imgs.append({**a, "row": td["data-row"], "col": td["data-col"], **cell})
            return
        if tag == "script":
            self.scripts += 1
        if "data-key" in a and "hidden" in a:
            self.hidden_cells.add(a["data-key"])
        self._stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        tags = [(t, a) for t, a in self._stack]
        if not tags:
            return
        tag, attrs = tags[-1]
        if tag == "title":
            self.title += data
        if attrs.get("id") == "probe":
            self.probe += data
        for key in ("data-buzz-total", "data-buzz-row", "data-buzz-col"):
            if key in attrs:
                self.buzz[f"{key}:{attrs[key]}"] = data
        if tag == "span" and attrs.get("class") == "label":
            header = tags[-2][1]
            if "data-col" in header:
                self.cols[int(header["data-col"])] = (
                    self.cols.get(int(header["data-col"]), "") + data
                )
            elif "data-row" in header:
                self.rows[int(header["data-row"])] = (
                    self.rows.get(int(header["data-row"]), "") + data
                )


def parse(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    dom.close()
    return dom


def signature(image: Image.Image) -> list[float]:
    """The mean RGB of each of SIGNATURE_BLOCKS^2 blocks, inset to avoid the edges."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    inset = max(2, w // 20)
    inner = rgb.crop((inset, inset, w - inset, h - inset))
    small = inner.resize((SIGNATURE_BLOCKS, SIGNATURE_BLOCKS), Image.Resampling.BOX)
    return [float(v) for v in small.tobytes()]


def distance(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def probe_layout(index: Path) -> dict[str, Any]:
    """Where Chromium laid out the images and the headers (CSS px), from a probed copy."""
    probe_page = index.with_name("probe.html")
    probe_page.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    text = dump_dom(probe_page)
    probe_page.unlink()
    layout: dict[str, Any] = json.loads(parse(text).probe)
    return layout


def test_the_rendered_dom_holds_every_image_with_its_labels(built: Built) -> None:
    """(a) --dump-dom: 12 <img>, their srcs the downloaded files, in the right row and
    column, the row and column labels the prompts and models as written (escaped, not run)."""
    dom = parse(dump_dom(built.result.index))
    assert len(dom.imgs) == 12
    assert sorted(img["src"] for img in dom.imgs) == sorted(i.src for i in built.images)
    for src in (img["src"] for img in dom.imgs):
        assert (built.result.index.parent / src).resolve().is_file()
    where = {img["src"]: (int(img["row"]), int(img["col"])) for img in dom.imgs}
    assert where == {i.src: (i.row, i.column) for i in built.images}
    assert dom.rows == dict(enumerate(PROMPTS))
    assert dom.cols == dict(enumerate(MODELS))
    assert dom.title == "gallery-demo · zbatch gallery"  # the <script> prompt never ran
    assert dom.scripts == 1  # ours; the manifest's <script> is text
    titles = {img["src"]: img["title"] for img in dom.imgs}
    for image in built.images:
        assert f"prompt: {PROMPTS[image.row]}\n" in titles[image.src]
        assert f"sha256: {image.sha256}" in titles[image.src]
    assert dom.buzz["data-buzz-total:"] == f"{sum(i.buzz for i in built.images)} Buzz"
    for c in range(2):
        column = sum(i.buzz for i in built.images if i.column == c)
        assert dom.buzz[f"data-buzz-col:{c}"] == f"{column} Buzz"


def test_a_filter_in_the_address_hides_other_cells_and_resums_the_buzz(built: Built) -> None:
    """index.html#seed=43 (what the seed select writes) shows only seed 43's images."""
    dom = parse(dump_dom(built.result.index, fragment="#seed=43"))
    shown = {img["src"] for img in dom.imgs if img["data-key"] not in dom.hidden_cells}
    assert shown == {i.src for i in built.images if i.seed == 43}
    assert len(shown) == 6
    total = sum(i.buzz for i in built.images if i.seed == 43)
    assert dom.buzz["data-buzz-total:"] == f"{total} Buzz"


def test_the_screenshot_shows_each_image_in_its_grid_position(built: Built, tmp_path: Path) -> None:
    """(b) --screenshot: not blank; every image loaded, inside its row's and column's
    header band, and the pixels there match its own file better than any other image."""
    layout = probe_layout(built.result.index)
    by_src = {img["src"]: img for img in layout["imgs"]}
    assert sorted(by_src) == sorted(i.src for i in built.images)
    shot = Image.open(screenshot(built.result.index, tmp_path / "shot.png"))
    assert shot.size == WINDOW
    stat = ImageStat.Stat(shot.convert("L"))
    assert stat.stddev[0] > 20, "the screenshot is blank"
    assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 1000
    files = {i.sha256: signature(Image.open(i.path)) for i in built.images}
    for image in built.images:
        left, top, right, bottom = box = by_src[image.src]["box"]
        assert by_src[image.src]["natural"] == 512, f"{image.src} did not load"
        assert right - left > 40, f"{image.src} is drawn too narrow: {box}"
        assert bottom - top > 40, f"{image.src} is drawn too flat: {box}"
        cx, cy = (left + right) / 2, (top + bottom) / 2
        col, row = layout["cols"][image.column], layout["rows"][image.row]
        assert col[0] <= cx <= col[2], f"{image.src} is not under column {image.column}"
        assert row[1] <= cy <= row[3], f"{image.src} is not beside row {image.row}"
        # headless Chromium paints a viewport some 90 px shorter than the window it shoots
        assert bottom <= WINDOW[1] - 120, f"{image.src} is below the painted viewport"
        seen = signature(shot.crop((round(left), round(top), round(right), round(bottom))))
        own = distance(seen, files[image.sha256])
        assert own < 12, f"{image.src}: the screen differs from its file by {own:.1f}"
        nearest = min(files, key=lambda sha: distance(seen, files[sha]))
        assert nearest == image.sha256, f"{image.src} looks more like another image"
