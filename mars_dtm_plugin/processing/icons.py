"""Icons are files shipped in ``icons/`` and loaded by path (no compiled Qt resources)."""

from __future__ import annotations

from pathlib import Path

ICONS_DIR = Path(__file__).resolve().parents[1] / "icons"


def icon_path(name: str) -> str:
    return str(ICONS_DIR / name)
