"""`make demo` over a real loopback socket: every image paid for lands on disk, verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
from PIL import Image

from runner.demo import HEIGHT, QUANTITY, WIDTH, run_demo
from runner.emulator import EmulatorConfig, running_server


def test_demo_round_trip_over_a_socket(tmp_path: Path) -> None:
    lines: list[str] = []
    with running_server(EmulatorConfig(seed=7, time_scale=0)) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        result = anyio.run(
            lambda: run_demo(base_url, tmp_path, say=lines.append), backend="asyncio"
        )
    assert result.status == "succeeded"
    assert result.charged_buzz == result.whatif_buzz == 4  # 8 Buzz x (512²/1024²) x 2 images
    assert len(result.images) == QUANTITY
    for saved in result.images:
        assert saved.path.parent == tmp_path / "images"
        data = saved.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == saved.sha256
        with Image.open(saved.path) as img:
            assert img.size == (WIDTH, HEIGHT)
    assert any("resubmit returned the same workflow" in line for line in lines)
