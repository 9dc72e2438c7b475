"""Emulator configuration: accounts, limits, URL lifetime, moderation words and the fault profile.

`EmulatorConfig` is frozen; build it in code, or with `EmulatorConfig.from_flags(...)` for the
`zbatch emulator` command. A fault profile comes from a YAML/JSON file via `load_faults(path)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.emulator.clock import DEFAULT_EPOCH_UNIX_S

CURRENCIES = ("blue", "green", "yellow", "fakeRed")
DEFAULT_BALANCE: Mapping[str, int] = {"blue": 100, "green": 0, "yellow": 1_000_000}
# Where "another host" is when no `cdn_base_url` is set: `.invalid` never resolves (RFC 2606).
OTHER_HOST_URL = "http://other-host.invalid"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_s` tokens refill each second, at most `burst` are held."""

    per_s: float
    burst: int


@dataclass(frozen=True)
class FaultRule:
    """One fault kind: fires with probability `p`, at most `times` times in total (None = no cap).

    `statuses` are the HTTP codes a 5xx fault picks from (seeded; None = the kind's default:
    502 for `submit_5xx_after`, else 500/502/503); `delay_s` is how long a `slow` answer is
    held, and the pause between two bytes of a `read_drip`; `fraction` is how much of the
    body `blob_truncate` keeps; `size_bytes` is how big a `read_huge_body` is.
    """

    p: float = 0.0
    times: int | None = None
    statuses: tuple[int, ...] | None = None
    delay_s: float = 2.0
    fraction: float = 0.5
    size_bytes: int = 64 * 1024 * 1024


SERVICE_FAULT_KINDS = (
    "submit_5xx_before",
    "submit_5xx_after",
    "submit_drop_after",
    "read_5xx",
    "slow",
    "step_fail",
    "step_expire",
    "blob_5xx",
    "blob_truncate",
    "blob_corrupt",
)
# Hostile answers (issue 9): a broken proxy, a changed API, a bad CDN. The runner must refuse
# them, not trust them (docs/reliability.md, "Hostile responses").
HOSTILE_FAULT_KINDS = (
    "read_malformed_json",
    "read_wrong_shape",
    "read_unknown_status",
    "read_huge_body",
    "read_drip",
    "read_redirect_other_host",
    "blob_redirect_plain_http",
    "blob_not_image",
    "blob_bomb",
    "blob_wrong_size",
    "blob_lying_length",
)
FAULT_KINDS = SERVICE_FAULT_KINDS + HOSTILE_FAULT_KINDS


@dataclass(frozen=True)
class FaultProfile:
    """Every fault kind the emulator can inject; all off by default. See docs/emulator.md."""

    submit_5xx_before: FaultRule = FaultRule()
    submit_5xx_after: FaultRule = FaultRule()
    submit_drop_after: FaultRule = FaultRule()
    read_5xx: FaultRule = FaultRule()
    slow: FaultRule = FaultRule()
    step_fail: FaultRule = FaultRule()
    step_expire: FaultRule = FaultRule()
    blob_5xx: FaultRule = FaultRule()
    blob_truncate: FaultRule = FaultRule()
    blob_corrupt: FaultRule = FaultRule()
    read_malformed_json: FaultRule = FaultRule()
    read_wrong_shape: FaultRule = FaultRule()
    read_unknown_status: FaultRule = FaultRule()
    read_huge_body: FaultRule = FaultRule()
    read_drip: FaultRule = FaultRule()
    read_redirect_other_host: FaultRule = FaultRule()
    blob_redirect_plain_http: FaultRule = FaultRule()
    blob_not_image: FaultRule = FaultRule()
    blob_bomb: FaultRule = FaultRule()
    blob_wrong_size: FaultRule = FaultRule()
    blob_lying_length: FaultRule = FaultRule()

    def rule(self, kind: str) -> FaultRule:
        """The rule for `kind` (one of FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (allowed: {', '.join(FAULT_KINDS)})")
        rule: FaultRule = getattr(self, kind)
        return rule

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<faults>") -> FaultProfile:
        """Build a profile from `{kind: p}` or
        `{kind: {p, times, statuses, delay_s, fraction, size_bytes}}`."""
        rules: dict[str, FaultRule] = {}
        for kind, value in data.items():
            if kind not in FAULT_KINDS:
                allowed = ", ".join(FAULT_KINDS)
                raise ValueError(f"{source}: unknown fault kind {kind!r} (allowed: {allowed})")
            rules[kind] = _parse_rule(value, cls().rule(kind), f"{source}: {kind}")
        return cls(**rules)


def _parse_rule(value: object, default: FaultRule, where: str) -> FaultRule:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"p": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a probability or a mapping, got {value!r}")
    allowed = {f.name for f in dataclasses.fields(FaultRule)}
    unknown = set(value) - allowed
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise ValueError(
            f"{where}: unknown field(s) {names} (allowed: {', '.join(sorted(allowed))})"
        )
    fields: dict[str, Any] = dict(value)
    if fields.get("statuses") is not None:
        fields["statuses"] = tuple(int(s) for s in fields["statuses"])
    rule = dataclasses.replace(default, **fields)
    if not 0.0 <= rule.p <= 1.0:
        raise ValueError(f"{where}: p={rule.p} is out of range (allowed 0..1)")
    if rule.times is not None and rule.times < 0:
        raise ValueError(f"{where}: times={rule.times} is negative (allowed: >= 0 or null)")
    if not 0.0 <= rule.fraction < 1.0:
        raise ValueError(f"{where}: fraction={rule.fraction} is out of range (allowed 0..<1)")
    if rule.delay_s < 0:
        raise ValueError(f"{where}: delay_s={rule.delay_s} is negative (allowed: >= 0)")
    if rule.size_bytes < 1:
        raise ValueError(f"{where}: size_bytes={rule.size_bytes} is out of range (allowed: >= 1)")
    return rule


def load_faults(path: Path | str) -> FaultProfile:
    """Read a fault profile from a YAML or JSON file (JSON is YAML); an empty file = no faults."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a fault profile is a mapping of fault kind to rule")
    return FaultProfile.from_mapping(data, source=str(path))


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes one emulator instance. Defaults are documented in docs/emulator.md.

    - `seed`: drives ids, runtimes, images, fault draws and the URL-signing secret.
    - `time_scale`: simulated job durations are multiplied by it; 0 = instantly terminal.
    - `tokens`: None accepts any non-empty bearer token (each its own account).
    - `initial_balance` / `balances`: Buzz per currency for every account / per token.
    - `submit_limit`, `read_limit`: per-token token buckets (None = unlimited).
    - `url_ttl_s`: lifetime of a signed blob URL, in clock seconds (not scaled).
    - `content_ttl_s`: lifetime of the `/blobs/content/{token}` URL a redirect hands out.
    - `blocked_words`: a prompt containing one (whole word, any case) is blocked.
    - `max_take`: the cap on a query's page size; `max_wait_s`: the cap on `wait`.
    - `insufficient_buzz_status`: the HTTP status of a submit the account cannot pay for.
    - `cdn_base_url`: another origin (a CDN, as Civitai's blob URLs redirect to one) that
      content URLs and the `read_redirect_other_host` fault point at; None = the API's own
      origin for content, `OTHER_HOST_URL` for the fault. The app answers on any host.
    - `state_path`: a file the emulator's state is kept in (`persist`): loaded at start when
      it exists, written every `save_every_s` seconds while it changes and when the app
      stops. None (the default): state in memory only.
    """

    seed: int = 0
    time_scale: float = 1.0
    tokens: frozenset[str] | None = None
    initial_balance: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BALANCE))
    balances: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    submit_limit: RateLimit | None = RateLimit(per_s=50.0, burst=100)
    read_limit: RateLimit | None = RateLimit(per_s=200.0, burst=400)
    url_ttl_s: float = 3600.0
    content_ttl_s: float = 300.0
    blocked_words: frozenset[str] = frozenset()
    faults: FaultProfile = FaultProfile()
    max_take: int = 1000
    max_wait_s: float = 100.0
    insufficient_buzz_status: int = 400
    epoch_unix_s: float = DEFAULT_EPOCH_UNIX_S
    image_cache_entries: int = 64
    cdn_base_url: str | None = None
    state_path: Path | None = None
    save_every_s: float = 1.0

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ValueError(f"time_scale {self.time_scale} is negative (allowed: >= 0)")
        for currency in (*self.initial_balance, *(c for b in self.balances.values() for c in b)):
            if currency not in CURRENCIES:
                allowed = ", ".join(CURRENCIES)
                raise ValueError(f"unknown currency {currency!r} (allowed: {allowed})")

    def balance_for(self, token: str) -> dict[str, int]:
        """The opening balance of the account behind `token`."""
        opening = dict(self.balances.get(token, self.initial_balance))
        return {c: int(opening.get(c, 0)) for c in CURRENCIES}

    @classmethod
    def from_flags(
        cls,
        *,
        seed: int = 0,
        time_scale: float = 1.0,
        faults_path: Path | str | None = None,
        url_ttl_s: float | None = None,
        submit_per_s: float | None = None,
        blocked_words: frozenset[str] = frozenset(),
    ) -> EmulatorConfig:
        """The config `zbatch emulator --seed --time-scale --faults --url-ttl --submit-rate
        --blocked-words` asks for; None keeps a default."""
        faults = load_faults(faults_path) if faults_path is not None else FaultProfile()
        config = cls(seed=seed, time_scale=time_scale, faults=faults, blocked_words=blocked_words)
        if url_ttl_s is not None:
            config = dataclasses.replace(config, url_ttl_s=url_ttl_s)
        if submit_per_s is not None:
            limit = RateLimit(per_s=submit_per_s, burst=max(1, round(submit_per_s)))
            config = dataclasses.replace(config, submit_limit=limit)
        return config
