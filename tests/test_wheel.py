"""The wheel, installed as a user installs it, works far from the repository.

The wheel is built from the sdist (tests/dists.py) and installed into a fresh venv (no
system site-packages, no pip of its own: this venv's pip installs into it with `--python`,
the dependencies from the configured index). Then, from an empty folder with no repository
above it, with every proxy variable pointing at a port nothing listens on and no NO_PROXY,
the first steps a user takes succeed: `zbatch init`, `zbatch run demo.yaml --emulator`
(the emulator is on loopback, which never goes through the proxy), `zbatch export` as JSON
Lines and as a trainer's folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dists import ROOT, build_dists

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed, nothing else."""
    _, wheel = build_dists(tmp_path_factory.mktemp("dist"))
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return venv


def _user_env(venv: Path, home: Path) -> dict[str, str]:
    """A user's shell: the venv's bin on PATH, a dead proxy, no NO_PROXY, no token."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in {"NO_PROXY", "PYTHONPATH", "VIRTUAL_ENV", "CIVITAI_API_TOKEN"}
        and key.upper() not in {v.upper() for v in PROXY_VARS}
    }
    dead = f"http://127.0.0.1:{_dead_port()}"
    env.update(dict.fromkeys(PROXY_VARS, dead))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["HOME"] = str(home)
    return env


def test_the_installed_wheel_starts_runs_and_exports_from_an_empty_folder(
    venv: Path, tmp_path: Path
) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    assert not any((p / name).exists() for p in work.parents for name in (".git", "pyproject.toml"))
    env = _user_env(venv, home)

    def zbatch(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["zbatch", *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"zbatch {' '.join(argv)}: {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr
        return done

    where = subprocess.run(
        ["python", "-c", "import runner, zbatch; print(runner.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)

    zbatch("init")
    assert (work / "demo.yaml").is_file()
    zbatch("run", "demo.yaml", "--emulator")
    assert len(list((work / "out" / "demo" / "images").rglob("*.jpg"))) == 12
    zbatch("export", "out/demo", "--format", "jsonl")
    rows = (work / "out" / "demo" / "export" / "dataset.jsonl").read_text().splitlines()
    assert len(rows) == 12
    assert {json.loads(row)["model"] for row in rows} == {"turbo", "base"}
    zbatch("export", "out/demo", "--format", "folder", "--to", "train")
    assert len(list((work / "train").glob("*.jpg"))) == len(list((work / "train").glob("*.txt")))
    assert len(list((work / "train").glob("*.jpg"))) == 12
