"""Fuzz: no mutation of a real manifest makes the manifest code crash.

Every ``jobs/*.yaml`` is mutated (byte flips, deletions, insertions, swapped lines, values
replaced by random YAML scalars and structures, hostile YAML fragments) and fed to the same
decoding and parsing ``load_manifest`` does. The only allowed outcomes are a ``Manifest`` or
a ``ManifestError``; any other exception fails the test, and so does a ``Manifest`` holding a
lone UTF-16 surrogate anywhere (text the service would refuse with a 400: issue 16 item 7).
The JSONL prompt file of ``jobs/lora-sweep.yaml`` is mutated the same way, with JSON's
``\\uXXXX`` escapes among the damage. Derandomized and bounded, so it takes a few seconds and
fails the same way every time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.errors import ManifestError
from runner.manifest._load import Manifest, decode_manifest, parse_manifest

JOBS = Path(__file__).parent.parent / "jobs"
MANIFESTS = sorted(JOBS.glob("*.yaml"))

# Fragments a person (or an attacker) might type where a value goes.
HOSTILE = [
    ".nan",
    ".inf",
    "-.inf",
    "~",
    "null",
    "yes",
    "0x1F",
    "0o17",
    "1e400",
    "-0",
    "9" * 40,
    "9223372036854775808",
    "-9223372036854775809",
    "2020-13-45",
    "2020-01-01 25:61:61",
    "!!int xx",
    "!!float yy",
    "!!timestamp zz",
    "!!binary ===",
    "!!python/object:os.system x",
    "!foo bar",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!pairs [a: 1]",
    "&a [*a]",
    "*nowhere",
    "&b x",
    "<<: {a: 1}",
    "{<<: *b}",
    "[",
    "{",
    "'",
    '"\\x00"',
    '"\\ud800"',
    '"a \\udc00 b"',
    '"\\U0000dbff"',
    '"\\ud83d\\ude00"',
    '{"urn:air:zImage:lora:civitai:1@2\\ud800": 1}',
    '"\\u0000"',
    "\t",
    "- - -",
    "? [a]: b",
    "{[1]: 2}",
    "{{a: 1}: 2}",
    "|\n  block",
    ">-\n  folded",
    "'../../etc/passwd'",
    "/etc/passwd",
    "{file: /dev/zero}",
    "{file: ../x}",
    "{file: ''}",
    "{file: prompts}",
    "{csv: prompts/rooms.txt, column: x}",
    "{jsonl: prompts/rooms.txt}",
    "{count: 1e9}",
    "{range: [0, .inf]}",
    "{range: [a, b]}",
    "{count: -1}",
    '"a\\0b"',
    "1024x1024x3",
    "0x0",
    "99999x99999",
    "--- \n...",
    "%YAML 1.1",
    "'{x}'",
    "'{'",
    "'{{}}'",
]

# Weighted: values and hostile lines reach the field checks; byte damage mostly the reader.
KINDS = ["flip", "delete", "insert", "swap", *["value"] * 4, *["hostile_line"] * 2]

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(HOSTILE),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)


def _render(value: object) -> str:
    """A value as YAML flow text (hostile fragments verbatim, others dumped)."""
    if isinstance(value, str) and value in HOSTILE:
        return value
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n")


@st.composite
def mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """One mutation of ``data``."""
    kind = draw(st.sampled_from(KINDS))
    size = len(data)
    if kind == "flip" and size:
        at = draw(st.integers(0, size - 1))
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if kind == "delete" and size:
        at = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, 40))
        return data[:at] + data[at + length :]
    if kind == "insert":
        at = draw(st.integers(0, size))
        piece = draw(st.one_of(st.binary(max_size=8), st.sampled_from(HOSTILE).map(str.encode)))
        return data[:at] + piece + data[at:]
    lines = data.split(b"\n")
    if kind == "swap" and len(lines) > 1:
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "value":
        keyed = [i for i, line in enumerate(lines) if b": " in line or line.endswith(b":")]
        if keyed:
            i = draw(st.sampled_from(keyed))
            head = lines[i].split(b":", 1)[0]
            value = _render(draw(st.one_of(st.sampled_from(HOSTILE), yaml_values)))
            lines[i] = head + b": " + value.encode("utf-8", "surrogatepass")
            return b"\n".join(lines)
    at = draw(st.integers(0, len(lines)))
    indent = draw(st.sampled_from([b"", b"  ", b"    "]))
    key = draw(st.sampled_from([b"name", b"out", b"grid", b"seed", b"x", b"prompt", b"vars"]))
    line = indent + key + b": " + draw(st.sampled_from(HOSTILE)).encode()
    return b"\n".join(lines[:at] + [line] + lines[at:])


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutation(data))
    return data


SURROGATE = re.compile("[\ud800-\udfff]")


def _texts(value: object) -> list[str]:
    """Every string inside a Manifest: fields, mappings (keys too), tuples, axes."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _texts(getattr(value, f.name))]
    if isinstance(value, Mapping):
        return [t for k, v in value.items() for t in _texts(k) + _texts(v)]
    if isinstance(value, list | tuple | set | frozenset):
        return [t for item in value for t in _texts(item)]
    return []


def _assert_sendable(result: Manifest) -> None:
    lone = [text for text in _texts(result) if SURROGATE.search(text)]
    assert not lone, f"a Manifest holds text with a lone surrogate: {lone[:3]!r}"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_mutated_manifests_are_parsed_or_refused(manifest: Path) -> None:
    """Mutations of a real manifest give a Manifest or a ManifestError, never a crash."""
    original = manifest.read_bytes()

    @settings(
        derandomize=True,
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated(original))
    def check(data: bytes) -> None:
        try:
            result = parse_manifest(decode_manifest(data, manifest), path=manifest)
        except ManifestError as exc:
            message = str(exc)
            assert message
            assert "Node(" not in message, message  # a node's repr, not a value
            assert "Traceback" not in message
            return
        assert isinstance(result, Manifest)
        _assert_sendable(result)

    check()


# JSON escapes and text a prompt file line may be damaged with.
JSON_DAMAGE = [
    "\\ud800",
    "\\udfff",
    "\\ud83d\\ude00",
    "\\ude00\\ud83d",
    "\\\\ud800",
    "\\ud83d",
    "\\u0000",
    "\\",
    '"',
    "\udc80",
]


@st.composite
def damaged_jsonl(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with JSON escapes, quotes or bytes inserted at one or more places."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        piece = draw(
            st.one_of(
                st.sampled_from(JSON_DAMAGE).map(lambda t: t.encode("utf-8", "surrogatepass")),
                st.binary(max_size=4),
            )
        )
        data = data[:at] + piece + data[at:]
    return data


def test_mutated_jsonl_prompt_files_are_read_or_refused() -> None:
    """Escapes and bytes inserted into a JSONL prompt file give a Manifest without a lone
    surrogate, or a ManifestError; never a crash, never text the service would refuse."""
    manifest = JOBS / "lora-sweep.yaml"
    source = JOBS / "prompts" / "lora-sweep.jsonl"
    original = source.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "job" / manifest.name
        (copy.parent / "prompts").mkdir(parents=True)
        shutil.copy(manifest, copy)
        text = decode_manifest(copy.read_bytes(), copy)

        @settings(derandomize=True, max_examples=200, deadline=None, database=None)
        @given(damaged_jsonl(original))
        def check(data: bytes) -> None:
            (copy.parent / "prompts" / source.name).write_bytes(data)
            try:
                result = parse_manifest(text, path=copy)
            except ManifestError as exc:
                message = str(exc)
                assert message
                return
            _assert_sendable(result)

        check()
