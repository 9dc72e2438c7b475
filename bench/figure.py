"""One figure of `make bench`: a row of the table and of bench/results.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One row of the table and of bench/results.json."""

    benchmark: str
    figure: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    command: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "command": self.command,
        }
