"""The gallery page: a `Grid` as one static HTML file that works from ``file://``.

No server, no framework, no network: inline CSS and a little plain JavaScript (filters,
Buzz sums, a details panel). Without JavaScript the page still shows every image with its
inputs in the title tooltip. Everything that came from a manifest or the service is
HTML-escaped; the script reads the page's own attributes and writes only `textContent`.
Image `src`s are relative (`../images/ab/<key>_0.jpg`), so the folder can move as a whole.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from runner.dataset._gallery_grid import (
    NONE_LABEL,
    GalleryCell,
    GalleryImage,
    Grid,
    GridAxis,
    value_label,
)

CELL_PX = 200  # width of one grid position; its images share it side by side
MIN_IMAGE_PX = 64  # the smallest an image gets when many share a position

CSS = """
body{font:14px/1.35 system-ui,sans-serif;margin:16px;background:#f6f6f6;color:#222}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#555;margin:0 0 8px}
#filters{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 12px}
#filters label{display:flex;gap:4px;align-items:center}
#filters select{max-width:320px}
table.grid{border-collapse:collapse;table-layout:fixed}
.grid th,.grid td{border:1px solid #d8d8d8;padding:4px;vertical-align:top;background:#fff}
.grid th{text-align:left;font-weight:600}
.grid th.col{width:CELLpx}
.grid th.row,.grid th.corner{width:220px}
.label{display:block;white-space:pre-wrap;overflow-wrap:anywhere}
.axis{display:block;color:#777;font-weight:normal;font-size:12px}
.buzz{display:block;color:#8a6100;font-weight:normal;font-size:12px}
.pos{display:grid;grid-template-columns:repeat(auto-fit,minmax(MINpx,1fr));gap:2px;width:CELLpx}
.cell{display:contents}
[hidden]{display:none!important}
.pos img{display:block;width:100%;height:auto;cursor:pointer;background:#eee}
.shot{margin:0;min-width:0}
.shot figcaption{font-size:11px;color:#666;text-align:center;white-space:nowrap;
  overflow:hidden;text-overflow:ellipsis}
.missing{display:flex;align-items:center;justify-content:center;aspect-ratio:1;
  background:#eee;color:#888;font-size:12px;text-align:center}
#info{position:fixed;right:12px;bottom:12px;max-width:520px;max-height:70vh;overflow:auto;
  background:#fff;border:1px solid #bbb;box-shadow:0 2px 12px #0003;padding:8px 12px}
#info pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:6px 0 0;font-size:12px}
"""
GAP_PX = 2  # .pos's gap


def css(grid: Grid) -> str:
    """The page's style: a position CELL_PX wide shared by its images, or with --thumb PX
    each image PX wide and a position as wide as the widest one needs."""
    if grid.thumb_px is None:
        return CSS.replace("CELL", str(CELL_PX)).replace("MIN", str(MIN_IMAGE_PX))
    columns = grid.widest_position()
    cell = columns * grid.thumb_px + (columns - 1) * GAP_PX
    fixed = CSS.replace("auto-fit,minmax(MINpx,1fr)", f"auto-fill,{grid.thumb_px}px")
    return fixed.replace("CELL", str(cell))


# Filters hide cells; sums follow what is visible. Hash `#axis=value&...` sets the filters.
SCRIPT = """
(function () {
  var selects = Array.prototype.slice.call(document.querySelectorAll('#filters select'));
  function each(sel, fn) { Array.prototype.forEach.call(document.querySelectorAll(sel), fn); }
  function buzz(n) { return n + ' Buzz'; }
  function attr(e, name) { return e.getAttribute(name); }
  function apply() {
    each('.cell', function (c) {
      c.hidden = !selects.every(function (s) {
        return s.value === '' || attr(c, 'data-f' + attr(s, 'data-axis')) === s.value;
      });
    });
    var rows = {}, cols = {}, total = 0;
    each('td[data-row]', function (td) {
      var sum = 0;
      Array.prototype.forEach.call(td.querySelectorAll('.cell:not([hidden])'), function (c) {
        sum += Number(attr(c, 'data-buzz'));
      });
      td.querySelector('.buzz').textContent = buzz(sum);
      var r = attr(td, 'data-row'), k = attr(td, 'data-col');
      rows[r] = (rows[r] || 0) + sum; cols[k] = (cols[k] || 0) + sum; total += sum;
    });
    each('[data-buzz-row]', function (e) { e.textContent = buzz(rows[attr(e, 'data-buzz-row')]); });
    each('[data-buzz-col]', function (e) { e.textContent = buzz(cols[attr(e, 'data-buzz-col')]); });
    each('[data-buzz-total]', function (e) { e.textContent = buzz(total); });
    var parts = selects.filter(function (s) { return s.value !== ''; }).map(function (s) {
      return encodeURIComponent(s.name) + '=' + encodeURIComponent(s.options[s.selectedIndex].text);
    });
    try {  // file:// pages may not rewrite their address in every browser: then keep it
      history.replaceState(null, '', parts.length ? '#' + parts.join('&') : location.pathname);
    } catch (e) { }
  }
  location.hash.replace(/^#/, '').split('&').forEach(function (part) {
    var kv = part.split('=');
    if (kv.length !== 2) { return; }
    var name = decodeURIComponent(kv[0]), text = decodeURIComponent(kv[1]);
    selects.forEach(function (s) {
      if (s.name !== name) { return; }
      Array.prototype.forEach.call(s.options, function (o) {
        if (o.text === text) { o.selected = true; }
      });
    });
  });
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  apply();
  var info = document.getElementById('info');
  document.getElementById('grid').addEventListener('click', function (e) {
    var img = e.target.closest ? e.target.closest('img') : null;
    if (!img) { return; }
    info.querySelector('pre').textContent = attr(img, 'title');
    info.querySelector('a').setAttribute('href', attr(img, 'src'));
    info.hidden = false;
  });
  info.querySelector('button').addEventListener('click', function () { info.hidden = true; });
})();
"""


def esc(text: object) -> str:
    """`text` safe inside an element or a double-quoted attribute."""
    return html.escape(str(text), quote=True)


def image_src(image: GalleryImage) -> str:
    """The image's address relative to `OUT/gallery/index.html`."""
    return "../" + quote(image.path or "", safe="/")


def details(grid: Grid, cell: GalleryCell, image: GalleryImage | None) -> str:
    """Every input of the cell and what came of it, one `name: value` per line."""
    r = cell.request
    lines = [
        f"prompt: {value_label('prompt', r.get('prompt'))}",
        f"negativePrompt: {value_label('negativePrompt', r.get('negativePrompt'))}",
        f"model: {cell.model}",
        f"seed: {value_label('seed', r.get('seed'))}",
        f"size: {value_label('', r.get('width'))}x{value_label('', r.get('height'))}",
        f"cfgScale: {value_label('', r.get('cfgScale'))}",
        f"steps: {value_label('', r.get('steps'))}",
        f"sampler: {value_label('', r.get('sampleMethod'))}",
        f"schedule: {value_label('', r.get('schedule'))}",
        f"loras: {value_label('loras', r.get('loras'))}",
    ]
    lines += [f"vars.{name}: {value}" for name, value in cell.vars.items()]
    quantity = value_label("", r.get("quantity"))
    index = f"image {image.index + 1} of {quantity}, " if image else ""
    lines += [
        f"{index}replica {cell.replica}, cell state {cell.state}",
        f"cell key: {cell.key}",
        f"workflow id: {(image.workflow_id if image else cell.workflow_id) or NONE_LABEL}",
        f"buzz: {cell.charged_buzz} charged (estimate {cell.estimate_buzz})",
    ]
    if image is not None:
        lines += [
            f"sha256: {image.sha256 or NONE_LABEL}",
            f"file: {image.path or NONE_LABEL} ({image.state}, {image.size_bytes or 0} bytes, "
            f"{image.width}x{image.height})",
        ]
    return "\n".join(lines)


def _filters(grid: Grid) -> str:
    if not grid.filters:
        return ""
    out = ['<form id="filters" onsubmit="return false">']
    for n, axis in enumerate(grid.filters):
        options = "".join(
            f'<option value="{v}">{esc(_with_twins(grid, axis, v, label))}</option>'
            for v, label in enumerate(axis.labels)
        )
        names = " · ".join((axis.name, *grid.twin_names(axis)))
        out.append(
            f'<label>{esc(names)} <select name="{esc(axis.name)}" data-axis="{n}">'
            f'<option value="">all</option>{options}</select></label>'
        )
    out.append("</form>")
    return "".join(out)


def _with_twins(grid: Grid, axis: GridAxis, value: int, label: str) -> str:
    twins = grid.twin_labels(axis, value)
    return f"{label} ({', '.join(twins)})" if twins else label


def _axis_name(grid: Grid, axis: GridAxis) -> str:
    twins = grid.twin_names(axis)
    name = axis.name or "–"
    return f"{name} (with {', '.join(twins)})" if twins else name


def _header(grid: Grid, axis: GridAxis, value: int) -> str:
    twins = " · ".join(grid.twin_labels(axis, value))
    twin_line = f'<span class="axis">{esc(twins)}</span>' if twins else ""
    return f'<span class="label">{esc(axis.labels[value])}</span>{twin_line}'


def _cell(grid: Grid, n: int) -> str:
    cell = grid.cells[n]
    attrs = "".join(f' data-f{k}="{axis.coords[n]}"' for k, axis in enumerate(grid.filters))
    parts = [
        f'<div class="cell" data-key="{esc(cell.key)}" data-buzz="{cell.charged_buzz}"{attrs}>'
    ]
    shown = grid.shown(cell)
    for image in shown:
        size = f' width="{image.width}" height="{image.height}"' if image.width else ""
        if image.path:
            label = grid.image_label(n, image)
            caption = f"<figcaption>{esc(label)}</figcaption>" if label else ""
            parts.append(
                f'<figure class="shot"><img src="{esc(image_src(image))}"{size} '
                f'alt="{esc(cell.key)} image {image.index}" '
                f'title="{esc(details(grid, cell, image))}" loading="lazy">{caption}</figure>'
            )
        else:
            parts.append(
                f'<div class="missing" title="{esc(details(grid, cell, image))}">'
                f"image {esc(image.state)}</div>"
            )
    if not shown:
        what = cell.state if not cell.images else "no image in the states shown"
        parts.append(
            f'<div class="missing" title="{esc(details(grid, cell, None))}">{esc(what)}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _table(grid: Grid) -> str:
    out = [
        '<table class="grid" id="grid"><thead><tr>',
        f'<th class="corner"><span class="axis">rows: {esc(_axis_name(grid, grid.y))}</span>'
        f'<span class="axis">columns: {esc(_axis_name(grid, grid.x))}</span>'
        f'<span class="buzz" data-buzz-total>{grid.total_buzz} Buzz</span></th>',
    ]
    for c in range(grid.x.size):
        out.append(
            f'<th class="col" data-col="{c}">{_header(grid, grid.x, c)}'
            f'<span class="buzz" data-buzz-col="{c}">{grid.col_buzz[c]} Buzz</span></th>'
        )
    out.append("</tr></thead><tbody>")
    for r in range(grid.y.size):
        out.append(
            f'<tr><th class="row" data-row="{r}">{_header(grid, grid.y, r)}'
            f'<span class="buzz" data-buzz-row="{r}">{grid.row_buzz[r]} Buzz</span></th>'
        )
        for c in range(grid.x.size):
            cells = "".join(_cell(grid, n) for n in grid.positions[r][c])
            out.append(
                f'<td data-row="{r}" data-col="{c}"><div class="pos">{cells}</div>'
                f'<span class="buzz">{grid.cell_buzz[r][c]} Buzz</span></td>'
            )
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_page(grid: Grid, sheet_name: str) -> str:
    """The whole page; `sheet_name` is the contact sheet beside it, linked from the header."""
    shown = ", ".join(sorted(grid.states))
    layout = (
        f"rows: {_axis_name(grid, grid.y)} ({grid.y.size}) · "
        f"columns: {_axis_name(grid, grid.x)} ({grid.x.size})"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(grid.name)} · zbatch gallery</title>",
            f"<style>{css(grid)}</style></head><body>",
            f"<h1>{esc(grid.name)}</h1>",
            f'<p class="meta">{grid.image_count} images ({esc(shown)}) of {len(grid.cells)} '
            f"cells · {grid.total_buzz} Buzz charged · {esc(layout)} · "
            f'<a href="{esc(quote(sheet_name))}">contact sheet</a> · hover an image for its '
            "inputs, click it for details</p>",
            _filters(grid),
            _table(grid),
            '<aside id="info" hidden><button type="button">close</button> '
            '<a href="#" target="_blank">open the image</a><pre></pre></aside>',
            f"<script>{SCRIPT}</script>",
            "</body></html>",
            "",
        ]
    )
