"""A batch's YAML manifest, read into a checked `Manifest`: every problem at file:line:column
(`load_manifest`), the prompt files it names, its settings, and the advice it earns.
"""

from runner.manifest._captions import (
    CAPTION_FIELDS,
    DEFAULT_CAPTION_TEMPLATE,
    VAR_COLUMN_PREFIX,
    caption_problem,
    compile_caption,
    render_caption,
)
from runner.manifest._checks import has_grid_cells
from runner.manifest._load import RANDOM, Manifest, Problem, load_manifest
from runner.manifest._prompts import Template, Var, compile_template
from runner.manifest._settings import CAPTIONS, MAX_BUDGET_BUZZ, SETTING_RANGES

__all__ = [
    "CAPTION_FIELDS",
    "CAPTIONS",
    "DEFAULT_CAPTION_TEMPLATE",
    "VAR_COLUMN_PREFIX",
    "caption_problem",
    "compile_caption",
    "render_caption",
    "MAX_BUDGET_BUZZ",
    "Manifest",
    "Problem",
    "RANDOM",
    "SETTING_RANGES",
    "Template",
    "Var",
    "compile_template",
    "has_grid_cells",
    "load_manifest",
]
