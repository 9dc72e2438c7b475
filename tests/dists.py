"""Build this checkout's sdist and wheel as `python -m build` does: the sdist, then the wheel
from the unpacked sdist (so the wheel holds what a user installing from the index gets).
Without build isolation: the dev group brings setuptools and build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_dists(out: Path) -> tuple[Path, Path]:
    """The sdist and the wheel of this checkout, built into `out`."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (sdist,) = out.glob("zbatch-*.tar.gz")
    (wheel,) = out.glob("zbatch-*.whl")
    return sdist, wheel
