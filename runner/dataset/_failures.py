"""What became of the cells that ended without success, said once for every command that says
it: the run summary, `zbatch status` and `zbatch report`.

Each reason is a line: how many, what happened in words (a `blocked` cell was blocked by
the service's moderation), the reason the service gave, and what to do next:

    60 blocked by moderation (reason: nudity) — not retried; `zbatch report out/x` lists them
    12 failed (timeout) — `zbatch retry out/x`
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.store import FailureReason

REASON_WIDTH = 100  # characters of a reason shown in text; --json has them whole

# kind -> (what happened, with {n}, and the next step, with {out})
_SAID: dict[str, tuple[str, str]] = {
    "blocked": ("{n} blocked by moderation", "not retried; `zbatch report {out}` lists them"),
    "rejected": (
        "{n} rejected by the service",
        "not retried: fix the manifest, or `zbatch retry {out} --cell KEY`",
    ),
    "failed": ("{n} failed", "`zbatch retry {out}`"),
    "expired": ("{n} expired", "`zbatch retry {out}`"),
    "canceled": ("{n} canceled", "`zbatch retry {out} --state canceled`"),
    "image:lost": ("{n} {images} lost", "`zbatch retry {out}` fetches them again"),
}


def failure_line(
    failure: FailureReason, out: object | None = None, *, width: int = REASON_WIDTH
) -> str:
    """One failure reason in words, with the next command when `out` is given."""
    what, then = _SAID.get(failure.kind, ("{n} " + failure.kind, ""))
    text = what.format(n=failure.count, images="image" if failure.count == 1 else "images")
    reason = service_reason(failure.kind, failure.reason)
    if failure.kind == "blocked":
        text += f" (reason: {shorten(reason, width)})"
    elif reason != failure.kind:
        text += f" ({shorten(reason, width)})"
    if out is not None and then:
        text += " — " + then.format(out=out)
    return text


def failure_lines(
    failures: Iterable[FailureReason], out: object | None = None, *, more: int = 0
) -> list[str]:
    """Every reason's line; then how many more cells and images ended for reasons not shown."""
    lines = [failure_line(f, out) for f in failures]
    if more > 0:
        where = f": `zbatch status {out} --json` lists every reason" if out is not None else ""
        lines.append(f"{more} more, for other reasons{where}")
    return lines


def service_reason(kind: str, reason: str) -> str:
    """The reason as the service gave it, without the state's own name when it says more:
    `blocked; nudity` -> `nudity`, `blocked` -> `blocked`."""
    parts = [p.strip() for p in reason.split(";") if p.strip()]
    telling = [p for p in parts if p.lower() != kind.removeprefix("image:")]
    return "; ".join(telling or parts) or kind


def shorten(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
