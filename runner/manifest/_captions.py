"""Caption templates: what an image's caption holds (the dataset's `text` column, the `.txt`
file beside the image, the caption of a folder or WebDataset export).

A caption template is written like a prompt template (`_prompts.py`): `{field}` is a field,
`{{` and `}}` are literal braces, anything else is text as it is (a trigger word, say). Its
fields are the dataset's column names (docs/dataset.md): `prompt`, `negative_prompt`,
`model`, `seed`, ..., and `var_<name>` for each template variable of the manifest. The
default, `{prompt}`, is what `captions: txt` always wrote.

A rendered caption is one line: every run of whitespace (newlines, tabs, the Unicode spaces)
becomes one space, none at either end, since kohya-ss reads only a caption file's first line.
`caption_problem` checks a template when the manifest is read, so a field that does not
exist is refused before anything is spent; `render_caption` fills one in for a row.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from runner.contract import suggestion
from runner.manifest._prompts import Template, TemplateError, Var, compile_template

DEFAULT_CAPTION_TEMPLATE = "{prompt}"
# The columns a caption may hold (a row's inputs); `var_<name>` columns come after them.
CAPTION_FIELDS = (
    "prompt",
    "negative_prompt",
    "model",
    "seed",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "sample_method",
    "schedule",
)
VAR_COLUMN_PREFIX = "var_"
MAX_CAPTION_TEMPLATE = 1_000  # characters: a caption is a line, not a document


def caption_fields(var_names: Sequence[str]) -> tuple[str, ...]:
    """Every field a caption template may name, for a manifest with `var_names`."""
    return (*CAPTION_FIELDS, *(VAR_COLUMN_PREFIX + name for name in var_names))


def caption_problem(text: str, var_names: Sequence[str]) -> str | None:
    """What is wrong with caption template `text`, or None: a stray brace, an unknown field
    (named, with what is allowed), or a template that holds nothing."""
    if len(text) > MAX_CAPTION_TEMPLATE:
        return f"is {len(text):,} characters (allowed: at most {MAX_CAPTION_TEMPLATE:,})"
    try:
        parts = compile_template(text)
    except TemplateError as exc:
        return str(exc)
    allowed = caption_fields(var_names)
    for part in parts:
        if isinstance(part, Var) and part.name not in allowed:
            hint = suggestion(part.name, list(allowed))
            return (
                f"{{{part.name}}} is not a caption field{hint}"
                f" (allowed: {', '.join('{' + name + '}' for name in allowed)})"
            )
    if all(isinstance(p, str) for p in parts) and not "".join(map(str, parts)).strip():
        return "is empty (allowed: text and {fields}, e.g. '{prompt}' or 'mytoken, {prompt}')"
    return None


# Fields every cell has, never empty: a template holding one of them (or text) never renders
# an empty caption, which kohya-ss refuses (an empty caption file stops its loader).
NEVER_EMPTY = ("prompt", "model", "seed", "width", "height", "steps")


def may_render_empty(text: str) -> bool:
    """Whether good caption template `text` may render empty for some cell: it holds no
    text but spaces and only fields that can be empty (a variable, `negative_prompt`)."""
    parts = compile_template(text)
    return not any(
        part.strip() if isinstance(part, str) else part.name in NEVER_EMPTY for part in parts
    )


@functools.lru_cache(maxsize=16)
def compile_caption(text: str) -> Template:
    """A checked caption template, parsed once (`caption_problem` said it is good)."""
    return compile_template(text)


def render_caption(template: Template, row: Mapping[str, object]) -> str:
    """The caption of `row` (a dataset row: column -> value): `template` filled in, on one
    line, whitespace normalised. A field the row lacks, or holds as None, is empty."""
    text = "".join(
        part if isinstance(part, str) else _text(row.get(part.name)) for part in template
    )
    return " ".join(text.split())


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # cfg_scale 4.0 reads "4", as the manifest said it
    return str(value)
