"""PDS3 labels (ODL): the attached label of a HiRISE DTM and the detached .LBL of an ortho.

Only what the training data needs: ``KEY = VALUE`` statements, OBJECT/GROUP nesting, quoted
strings over several lines, ``<UNIT>`` suffixes, ``16#...#`` based integers and ``(a, b)`` lists.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

# HiRISE float32 "missing" pattern 16#FF7FFFFB#: a number that GDAL reads, not a NaN.
MISSING_CONSTANT = struct.unpack("<f", struct.pack("<I", 0xFF7FFFFB))[0]

_COMMENT_RE = re.compile(r"/\*.*?\*/", re.DOTALL)
_STATEMENT_RE = re.compile(r"^\s*([A-Za-z^][\w:^]*)\s*=\s*(.*)$")
_BASED_RE = re.compile(r"^(\d+)#([0-9A-Fa-f]+)#$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_UNIT_RE = re.compile(r"^(.*?)\s*<[^>]*>$")


def _value(text: str) -> object:
    text = text.strip()
    if text.startswith('"'):
        return " ".join(text.strip('"').split())
    if text.startswith("("):
        return [_value(part) for part in text.strip("()").split(",") if part.strip()]
    unit = _UNIT_RE.match(text)
    if unit:
        text = unit.group(1)
    based = _BASED_RE.match(text)
    if based:
        return int(based.group(2), int(based.group(1)))
    if _NUMBER_RE.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    return text.strip("'")


def _complete(value: str, lines: list[str]) -> str:
    """Join continuation lines of an unterminated quoted string or list."""
    while lines and (value.count('"') % 2 == 1 or _open_list(value)):
        value += " " + lines.pop(0).strip()
    return value


def _open_list(value: str) -> bool:
    bare = re.sub(r'"[^"]*"', "", value)  # a bracket inside a closed string is text
    return bare.count("(") > bare.count(")")


def parse_label(text: str) -> dict:
    """A nested dict of a label: OBJECT and GROUP blocks become dicts under their name."""
    lines = _COMMENT_RE.sub("", text).splitlines()
    root: dict = {}
    stack = [root]
    while lines:
        line = lines.pop(0)
        if line.strip() == "END":
            break
        match = _STATEMENT_RE.match(line)
        if not match:
            continue
        key, value = match.group(1), _complete(match.group(2), lines)
        if key in ("OBJECT", "GROUP"):
            block: dict = {}
            stack[-1].setdefault(value.strip(), block)
            stack.append(block)
        elif key in ("END_OBJECT", "END_GROUP"):
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1][key] = _value(value)
    return root


def find(label: dict, key: str) -> object | None:
    """The first value of ``key`` anywhere in the label, depth first."""
    if key in label:
        return label[key]
    for value in label.values():
        if isinstance(value, dict):
            found = find(value, key)
            if found is not None:
                return found
    return None


def read_label(path: str | Path, limit: int = 1 << 20) -> dict:
    """Parse a detached label, or the label at the start of a file with an attached one."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    end = re.search(rb"^END\s*$", head, re.MULTILINE)
    return parse_label(head[: end.end() if end else len(head)].decode("latin-1"))


def missing_constant(label: dict) -> float:
    """The DTM's missing value as the float it stands for (the label gives its bit pattern)."""
    value = find(label, "MISSING_CONSTANT")
    if isinstance(value, int) and str(find(label, "SAMPLE_TYPE")).endswith("REAL"):
        return struct.unpack("<f", struct.pack("<I", value & 0xFFFFFFFF))[0]
    return float(value) if isinstance(value, (int, float)) else MISSING_CONSTANT


def _number(label: dict, key: str) -> float:
    value = find(label, key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"label has no numeric {key}")
    return float(value)


def sun_geometry(label: dict) -> dict[str, float]:
    """Sun direction of an ortho label, raw and derived.

    HiRISE gives SUB_SOLAR_AZIMUTH and NORTH_AZIMUTH clockwise from the image's +sample
    axis, so the azimuth the light comes from, clockwise from north, is their difference.
    """
    incidence = _number(label, "INCIDENCE_ANGLE")
    sub_solar = _number(label, "SUB_SOLAR_AZIMUTH")
    north = _number(label, "NORTH_AZIMUTH")
    return {
        "incidence_angle_deg": incidence,
        "sub_solar_azimuth_deg": sub_solar,
        "north_azimuth_deg": north,
        "sun_azimuth_deg": (sub_solar - north) % 360.0,
        "sun_elevation_deg": 90.0 - incidence,
    }
