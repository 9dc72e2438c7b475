"""The gallery's contact sheet: a `Grid` drawn as one labelled PNG with Pillow, for sharing.

Column labels (X) across the top, row labels (Y) down the left, each with its Buzz; in each
grid position the thumbnails of every image it holds (all filter values), side by side in a
near-square tiling, each labelled under it with what tells it apart (its seed), and the
position's Buzz under them. Pillow's default font. A sheet
larger than `MAX_SIDE_PX` first gets smaller thumbnails, then shows only the first rows and
columns and says so at the bottom (the page always has them all).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from runner.dataset._gallery_grid import GalleryImage, Grid, GridAxis, tiling

THUMB_PX = 160
MIN_THUMB_PX = 48
LABEL_PX = 220
PAD_PX = 8
GAP_PX = 2
FONT_PX = 13
LINE_PX = 16
HEADER_LINES = 4  # lines of a column label before it is cut
ROW_LINES = 8  # lines of a row label before it is cut
MAX_SIDE_PX = 16_000
BACKGROUND = (255, 255, 255)
INK = (34, 34, 34)
MUTED = (120, 120, 120)
BUZZ_INK = (138, 97, 0)
EMPTY = (236, 236, 236)
RULE = (221, 221, 221)

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


@dataclass(frozen=True)
class Sheet:
    """The encoded PNG and where each image was drawn (its path -> box), for checks."""

    png: bytes
    size: tuple[int, int]
    boxes: dict[str, Box]
    rows_shown: int
    columns_shown: int


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_PX)


def wrap(draw: ImageDraw.ImageDraw, text: str, width_px: int, max_lines: int) -> list[str]:
    """`text` in lines no wider than `width_px`, at most `max_lines`, the last cut with '…'."""
    font = _font()
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if draw.textlength(candidate, font=font) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while draw.textlength(line, font=font) > width_px and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and draw.textlength(line[:cut], font=font) > width_px:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and draw.textlength(last + "…", font=font) > width_px:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "…"]
    return lines


@dataclass(frozen=True)
class _Layout:
    thumb: int  # the side of a grid position's square
    rows: int  # shown
    columns: int
    header: int  # height of the column labels
    row_tops: tuple[int, ...]  # y of each shown row, then of the end of the last one
    width: int
    height: int


def _tiles(count: int, thumb: int, fixed: int | None = None) -> tuple[int, int, int]:
    """(columns, rows, side) of `count` square tiles in a position `thumb` wide; no wider
    than `fixed` (--thumb) when given."""
    columns, rows = tiling(count)
    side = (thumb - (columns - 1) * GAP_PX) // columns
    return columns, rows, side if fixed is None else min(side, fixed)


def _slot(grid: Grid, r: int, c: int) -> list[tuple[GalleryImage, str]]:
    """The images drawn at grid position (r, c), each with its label (its seed, say)."""
    return [
        (image, grid.image_label(n, image))
        for n in grid.positions[r][c]
        for image in grid.shown(grid.cells[n])
        if image.path
    ]


def _tiles_height(grid: Grid, r: int, thumb: int) -> int:
    """How tall row `r`'s thumbnails are: its fullest position's tiling, at least a third."""
    tallest = thumb // 3
    for c in range(grid.x.size):
        images = _slot(grid, r, c)
        if not images:
            tallest = max(tallest, thumb // 2)
            continue
        _, rows, side = _tiles(len(images), thumb, grid.thumb_px)
        pitch = side + (LINE_PX if any(label for _, label in images) else 0)
        tallest = max(tallest, rows * pitch + (rows - 1) * GAP_PX)
    return tallest


def _layout(grid: Grid, draw: ImageDraw.ImageDraw) -> _Layout:
    thumb = THUMB_PX
    if grid.thumb_px is not None:  # --thumb: each image that wide, a position as wide as needed
        widest = grid.widest_position()
        thumb = widest * grid.thumb_px + (widest - 1) * GAP_PX
    while thumb > MIN_THUMB_PX and (
        PAD_PX * 2 + LABEL_PX + grid.x.size * (thumb + PAD_PX) > MAX_SIDE_PX
        or grid.y.size * (thumb // 2 + LINE_PX + PAD_PX) > MAX_SIDE_PX
    ):
        thumb = max(MIN_THUMB_PX, int(thumb * 0.8))
    columns = min(grid.x.size, max(1, (MAX_SIDE_PX - PAD_PX * 2 - LABEL_PX) // (thumb + PAD_PX)))
    label_lines = max(
        len(wrap(draw, _label(grid, grid.x, c), thumb, HEADER_LINES)) for c in range(columns)
    )
    header = PAD_PX + max(3, label_lines + 1) * LINE_PX + PAD_PX
    tops = [header]
    for r in range(grid.y.size):
        label = len(wrap(draw, _label(grid, grid.y, r), LABEL_PX - PAD_PX, ROW_LINES)) + 1
        height = max(_tiles_height(grid, r, thumb) + LINE_PX, label * LINE_PX) + PAD_PX
        if tops[-1] + height + 2 * LINE_PX > MAX_SIDE_PX and r > 0:
            break
        tops.append(tops[-1] + height)
    width = PAD_PX + LABEL_PX + columns * (thumb + PAD_PX) + PAD_PX
    rows = len(tops) - 1
    footer = 2 * LINE_PX if rows < grid.y.size or columns < grid.x.size else PAD_PX
    return _Layout(thumb, rows, columns, header, tuple(tops), width, tops[-1] + footer)


def _label(grid: Grid, axis: GridAxis, value: int) -> str:
    twins = grid.twin_labels(axis, value)
    label = axis.labels[value]
    return f"{label} ({', '.join(twins)})" if twins else label


def _paste(sheet: Image.Image, out: Path, image: GalleryImage, box: Box) -> None:
    draw = ImageDraw.Draw(sheet)
    try:
        with Image.open(out / (image.path or "")) as source:
            fit = (box[2] - box[0], box[3] - box[1])  # shrunk or enlarged, aspect kept
            thumb = ImageOps.contain(source.convert("RGB"), fit, Image.Resampling.LANCZOS)
    except (OSError, ValueError):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=EMPTY, outline=(200, 0, 0))
        draw.text((box[0] + 3, box[1] + 3), "missing", fill=(200, 0, 0), font=_font())
        return
    left = box[0] + (box[2] - box[0] - thumb.width) // 2
    top = box[1] + (box[3] - box[1] - thumb.height) // 2
    sheet.paste(thumb, (left, top))


def _position(
    sheet: Image.Image, grid: Grid, out: Path, r: int, c: int, origin: tuple[int, int], t: int
) -> dict[str, Box]:
    """Draw grid position (r, c) at `origin`, `t` wide; return where each image went."""
    draw = ImageDraw.Draw(sheet)
    images = _slot(grid, r, c)
    boxes: dict[str, Box] = {}
    x0, y0 = origin
    height = t // 2
    if not images:
        states = sorted({grid.cells[n].state for n in grid.positions[r][c]}) or ["empty"]
        draw.rectangle((x0, y0, x0 + t - 1, y0 + height - 1), fill=EMPTY)
        for k, line in enumerate(wrap(draw, ", ".join(states), t - 8, 2)):
            draw.text((x0 + 4, y0 + 4 + k * LINE_PX), line, fill=MUTED, font=_font())
    else:
        columns, rows, side = _tiles(len(images), t, grid.thumb_px)
        pitch = side + (LINE_PX if any(label for _, label in images) else 0)
        height = rows * pitch + (rows - 1) * GAP_PX
        for k, (image, label) in enumerate(images):
            left = x0 + (k % columns) * (side + GAP_PX)
            top = y0 + (k // columns) * (pitch + GAP_PX)
            box = (left, top, left + side, top + side)
            _paste(sheet, out, image, box)
            boxes[image.path or ""] = box
            if label:
                text = wrap(draw, label, side, 1)[0]
                draw.text((left, top + side), text, fill=MUTED, font=_font())
    buzz = f"{grid.cell_buzz[r][c]} Buzz"
    draw.text((x0, y0 + height + 1), buzz, fill=BUZZ_INK, font=_font())
    return boxes


def render_sheet(grid: Grid, out: Path) -> Sheet:
    """The contact sheet of `grid`, thumbnails read from under `out`."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lay = _layout(grid, probe)
    sheet = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    corner = [f"rows: {grid.y.name or '-'}", f"columns: {grid.x.name or '-'}"]
    for k, line in enumerate(corner):
        draw.text((PAD_PX, PAD_PX + k * LINE_PX), line, fill=MUTED, font=font)
    draw.text((PAD_PX, PAD_PX + 2 * LINE_PX), f"{grid.total_buzz} Buzz", fill=BUZZ_INK, font=font)
    left0 = PAD_PX + LABEL_PX
    for c in range(lay.columns):
        x = left0 + c * (lay.thumb + PAD_PX)
        lines = wrap(draw, _label(grid, grid.x, c), lay.thumb, HEADER_LINES)
        for k, line in enumerate(lines):
            draw.text((x, PAD_PX + k * LINE_PX), line, fill=INK, font=font)
        buzz_y = PAD_PX + len(lines) * LINE_PX
        draw.text((x, buzz_y), f"{grid.col_buzz[c]} Buzz", fill=BUZZ_INK, font=font)
    boxes: dict[str, Box] = {}
    for r in range(lay.rows):
        y = lay.row_tops[r]
        draw.line((PAD_PX, y - PAD_PX // 2, lay.width - PAD_PX, y - PAD_PX // 2), fill=RULE)
        lines = wrap(draw, _label(grid, grid.y, r), LABEL_PX - PAD_PX, ROW_LINES)
        for k, line in enumerate(lines):
            draw.text((PAD_PX, y + k * LINE_PX), line, fill=INK, font=font)
        buzz_y = y + len(lines) * LINE_PX
        draw.text((PAD_PX, buzz_y), f"{grid.row_buzz[r]} Buzz", fill=BUZZ_INK, font=font)
        for c in range(lay.columns):
            origin = (left0 + c * (lay.thumb + PAD_PX), y)
            boxes |= _position(sheet, grid, out, r, c, origin, lay.thumb)
    if lay.rows < grid.y.size or lay.columns < grid.x.size:
        note = (
            f"first {lay.rows} of {grid.y.size} rows and {lay.columns} of {grid.x.size} "
            "columns: index.html shows them all"
        )
        draw.text((PAD_PX, lay.height - LINE_PX - 2), note, fill=MUTED, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=6)
    return Sheet(buffer.getvalue(), sheet.size, boxes, lay.rows, lay.columns)
