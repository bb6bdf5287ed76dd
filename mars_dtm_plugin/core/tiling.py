"""The tile grid and the quarter turns that put the sun where the model expects it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SNAP_DEG = 0.5  # a scene turned within this of a quarter turn is turned by the quarter turn


@dataclass(frozen=True)
class Tile:
    """A footprint of the output grid that one model tile predicts."""

    index: int
    row: int
    col: int
    x0: int
    y0: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        return self.y0 + self.height


def axis_spans(length: int, size: int, overlap: int, margin: int = 0) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one axis, each overlapping the next by at least
    ``overlap``. The first and last are ``margin`` pixels short of ``size``: centred in the
    model's view, the raster's edge then has context beyond it (the scene's fill) instead of
    lying on the model's own border, where its zero padding shows."""
    edge = size - margin
    if length <= edge:  # one tile, with room for context on both sides
        return [(0, length)]
    # As few whole tiles between the two edge tiles as cover the rest, each pair of neighbours
    # overlapping alike: the slack is shared by every gap, so no two tiles nearly coincide.
    inner = max(0, math.ceil((length - 2 * edge + overlap) / (size - overlap)))
    shared = (2 * edge + inner * size - length) / (inner + 1)  # >= overlap, by the ceiling
    starts = (edge - shared + i * (size - shared) for i in range(inner))
    # Rounded: neighbours' starts then differ by at most the integer size - overlap.
    return [(0, edge), *((round(start), size) for start in starts), (length - edge, edge)]


@dataclass(frozen=True)
class TileGrid:
    tiles: list[Tile]
    rows: int
    cols: int

    def at(self, row: int, col: int) -> Tile | None:
        inside = 0 <= row < self.rows and 0 <= col < self.cols
        return self.tiles[row * self.cols + col] if inside else None

    def neighbours(self, tile: Tile) -> list[Tile]:
        """The eight tiles around ``tile`` that exist."""
        around = (self.at(tile.row + dr, tile.col + dc)
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)
        return [t for t in around if t is not None]


def tile_grid(width: int, height: int, footprint: int, overlap: int,
              margin: int = 0) -> TileGrid:
    xs = axis_spans(width, footprint, overlap, margin)
    ys = axis_spans(height, footprint, overlap, margin)
    tiles = [
        Tile(r * len(xs) + c, r, c, x0, y0, tile_w, tile_h)
        for r, (y0, tile_h) in enumerate(ys)
        for c, (x0, tile_w) in enumerate(xs)
    ]
    return TileGrid(tiles, len(ys), len(xs))


def snap(degrees: float) -> float:
    """A turn within ``SNAP_DEG`` of a quarter turn, made the quarter turn: the model sees its
    sun that much off (well within what a model takes), where resampling would blur every
    pixel."""
    turns = round(degrees / 90)
    return (90.0 * turns if abs(degrees - 90 * turns) < SNAP_DEG else degrees) % 360


class Rotation:
    """Turns tiles clockwise (screen view, row 0 at top) by ``degrees``, a multiple of 90, and
    back, exactly (``np.rot90``); other angles turn the whole scene (``turn.Turned``)."""

    def __init__(self, degrees: float, tile_size: int) -> None:
        self.quarter_turns = round(degrees / 90) % 4
        self.tile_size = tile_size

    def context(self, tile: Tile) -> tuple[int, int, int, int]:
        """Window (x0, y0, w, h) of the model tile centred on ``tile``: an edge tile's context
        beyond the raster's edge."""
        pad_x, pad_y = self.tile_size - tile.width, self.tile_size - tile.height
        return tile.x0 - pad_x // 2, tile.y0 - pad_y // 2, self.tile_size, self.tile_size

    def to_model(self, window: np.ndarray, tile: Tile) -> np.ndarray:
        """The context window turned into the model tile."""
        return np.rot90(window, -self.quarter_turns)

    def from_model(self, prediction: np.ndarray, tile: Tile) -> np.ndarray:
        """The prediction turned back, cut to the tile's footprint."""
        x0, y0, _, _ = self.context(tile)
        back = np.rot90(prediction, self.quarter_turns)
        top, left = tile.y0 - y0, tile.x0 - x0
        return back[top : top + tile.height, left : left + tile.width]
