"""The tile grid and the per-tile rotation that puts the sun where the model expects it."""

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


class Rotation:
    """Rotates tiles clockwise by ``degrees`` (screen view, row 0 at top) and back.

    Multiples of 90 degrees are exact (``np.rot90``); other angles resample bilinearly and
    shrink the footprint so that the rotated model tile still covers it.
    """

    def __init__(self, degrees: float, tile_size: int) -> None:
        # A turn this close to a quarter one is made exact: the model sees its sun that much
        # off (well within what a model takes), where resampling would blur every pixel.
        turns = round(degrees / 90)
        exact = abs(degrees - 90 * turns) < SNAP_DEG
        self.degrees = (90.0 * turns if exact else degrees) % 360
        self.tile_size = tile_size
        self._samplers: dict[tuple, BilinearSampler] = {}
        self.quarter_turns = turns % 4 if exact else None
        radians = math.radians(self.degrees)
        self.cos, self.sin = math.cos(radians), math.sin(radians)
        if self.quarter_turns is None:
            footprint = int(tile_size / (abs(self.cos) + abs(self.sin)))
            # Of the tile size's parity: at small angles samples then fall near pixel
            # centres, not halfway between them.
            self.footprint = footprint - (tile_size - footprint) % 2
        else:
            self.footprint = tile_size

    def context(self, tile: Tile) -> tuple[int, int, int, int]:
        """Window (x0, y0, w, h) to read so that the rotated model tile has real neighbours."""
        if self.quarter_turns is not None:
            pad_x, pad_y = self.tile_size - tile.width, self.tile_size - tile.height
            return tile.x0 - pad_x // 2, tile.y0 - pad_y // 2, self.tile_size, self.tile_size
        radius = math.ceil(self.tile_size * math.sqrt(0.5)) + 2
        cx, cy = tile.x0 + tile.width // 2, tile.y0 + tile.height // 2
        return cx - radius, cy - radius, 2 * radius, 2 * radius

    def to_model(self, window: np.ndarray, tile: Tile) -> np.ndarray:
        """The model tile (tile_size square) cut from the context window, rotated."""
        if self.quarter_turns is not None:
            return np.rot90(window, -self.quarter_turns)
        key = ("to", window.shape, tile.width, tile.height)
        if key not in self._samplers:  # the same positions in every window of this shape
            x0, y0, _, _ = self.context(tile)
            centre = (tile.x0 + (tile.width - 1) / 2 - x0,
                      tile.y0 + (tile.height - 1) / 2 - y0)
            grid = np.arange(self.tile_size, dtype=np.float64) - (self.tile_size - 1) / 2
            u, v = np.meshgrid(grid, grid)
            su, sv = self._rotate(u, v, -1)
            self._samplers[key] = BilinearSampler.at(window.shape, su + centre[0],
                                                     sv + centre[1])
        return self._samplers[key](window)

    def from_model(self, prediction: np.ndarray, tile: Tile) -> np.ndarray:
        """The prediction turned back onto the tile's footprint."""
        if self.quarter_turns is not None:
            x0, y0, _, _ = self.context(tile)
            back = np.rot90(prediction, self.quarter_turns)
            top, left = tile.y0 - y0, tile.x0 - x0
            return back[top : top + tile.height, left : left + tile.width]
        key = ("from", prediction.shape, tile.width, tile.height)
        if key not in self._samplers:
            u = np.arange(tile.width, dtype=np.float64) - (tile.width - 1) / 2
            v = np.arange(tile.height, dtype=np.float64) - (tile.height - 1) / 2
            uu, vv = np.meshgrid(u, v)
            ru, rv = self._rotate(uu, vv, +1)
            middle = (self.tile_size - 1) / 2
            self._samplers[key] = BilinearSampler.at(prediction.shape, ru + middle, rv + middle)
        return self._samplers[key](prediction)

    def _rotate(self, u: np.ndarray, v: np.ndarray, sign: int) -> tuple[np.ndarray, np.ndarray]:
        # Clockwise on screen with rows pointing down is the usual matrix in (col, row).
        sin = sign * self.sin
        return u * self.cos - v * sin, u * sin + v * self.cos


@dataclass(frozen=True)
class BilinearSampler:
    """Bilinear sampling at fixed fractional (col, row) positions of images of one shape,
    clamped at the borders: where each sample's four pixels lie and how much each weighs,
    worked out once for many tiles."""

    corners: tuple[np.ndarray, ...]
    """Flat indices of the pixels above left, above right, below left, below right."""
    fx: np.ndarray
    fy: np.ndarray

    @classmethod
    def at(cls, shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> BilinearSampler:
        h, w = shape
        x = np.clip(x, 0, w - 1)
        y = np.clip(y, 0, h - 1)
        x0 = np.minimum(np.floor(x).astype(np.intp), w - 2 if w > 1 else 0)
        y0 = np.minimum(np.floor(y).astype(np.intp), h - 2 if h > 1 else 0)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        return cls((y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1), fx, fy)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        flat = image.ravel()
        above_left, above_right, below_left, below_right = (flat[i] for i in self.corners)
        top = above_left * (1 - self.fx) + above_right * self.fx
        bottom = below_left * (1 - self.fx) + below_right * self.fx
        return (top * (1 - self.fy) + bottom * self.fy).astype(np.float32)
