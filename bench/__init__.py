"""Speed and memory benchmarks (docs/benchmarks.md); argument types they share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low`` (else one sentence, status 2)."""
    def integer(text: str) -> int:
        value = int(text)  # not a number: argparse's own "invalid integer value"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return integer


def existing_file(text: str) -> Path:
    """An argparse type: a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return Path(text)
