"""The scene turned once so that its sun lies where the model expects it.

A model reads shading under one sun azimuth. Turned by a quarter turn, a tile is turned exactly
(``tiling.Rotation``); turned by any other angle, the whole scene is resampled onto a grid
turned by that angle, tiled there like any raster, and the stitched DTM resampled back. Every
model tile then holds image all over, where a tile turned on its own would keep only the square
inscribed in it (half of it at 45 degrees), and the output pixels pass through two bilinear
resamplings either way.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .coarse import Readable


class Turned:
    """``raster`` turned clockwise (screen view, rows down) by ``degrees`` about its centre,
    read on demand: a window's pixels are bilinear in the raster's valid pixels; a pixel is
    valid where any of its four is (so the turned scene covers each valid pixel's centre)."""

    def __init__(self, raster: Readable, degrees: float) -> None:
        self.raster, self.degrees = raster, degrees
        radians = math.radians(degrees)
        self.cos, self.sin = math.cos(radians), math.sin(radians)
        w, h = raster.width, raster.height
        # The raster's bounding box, turned, and a pixel of room on every side (a pixel centre
        # of the raster then lies a pixel or more inside), of the raster's parity: the centres
        # coincide, so at small angles samples fall near pixel centres, not between them.
        self.width = _same_parity(w * abs(self.cos) + h * abs(self.sin) + 2, w)
        self.height = _same_parity(w * abs(self.sin) + h * abs(self.cos) + 2, h)
        self._centre = ((w - 1) / 2, (h - 1) / 2)
        self._turned_centre = ((self.width - 1) / 2, (self.height - 1) / 2)

    def coarser(self, averaged: Readable, factor: int) -> Turned:
        """``averaged`` (this raster averaged in ``factor`` x ``factor`` blocks) turned onto
        this grid's blocks of as many pixels: their centres where the blocks' are."""
        coarse = copy.copy(self)
        coarse.raster = averaged
        coarse.width, coarse.height = -(-self.width // factor), -(-self.height // factor)
        # A block's centre lies (factor - 1) / 2 fine pixels past its first pixel's.
        half = (factor - 1) / 2
        coarse._centre = tuple((c - half) / factor for c in self._centre)
        coarse._turned_centre = tuple((c - half) / factor for c in self._turned_centre)
        return coarse

    def source(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where turned pixels (cols, rows) lie in the raster."""
        u, v = cols - self._turned_centre[0], rows - self._turned_centre[1]
        return (u * self.cos + v * self.sin + self._centre[0],
                -u * self.sin + v * self.cos + self._centre[1])

    def turned(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where raster pixels (xs, ys) lie in the turned grid: ``source``'s inverse."""
        x, y = xs - self._centre[0], ys - self._centre[1]
        return (x * self.cos - y * self.sin + self._turned_centre[0],
                x * self.sin + y * self.cos + self._turned_centre[1])

    def meets(self, x0: int, y0: int, width: int, height: int) -> bool:
        """Whether the turned window [x0, x0 + width) x [y0, y0 + height) can hold a valid
        pixel: the window and the raster, both grown by a pixel, overlap (separating axes)."""
        w, h = self.raster.width, self.raster.height
        left, right, top, bottom = x0 - 1.0, x0 + width, y0 - 1.0, y0 + height
        xs, ys = self.source(np.array([left, right, left, right]),
                             np.array([top, top, bottom, bottom]))
        if xs.max() < -1 or xs.min() > w or ys.max() < -1 or ys.min() > h:
            return False
        cols, rows = self.turned(np.array([-1.0, w, -1.0, w]), np.array([-1.0, -1.0, h, h]))
        return not (cols.max() < left or cols.min() > right
                    or rows.max() < top or rows.min() > bottom)

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (float32) and validity of a window of the turned grid; 0 where invalid."""
        corners_x, corners_y = self.source(np.array([x0, x0 + width - 1] * 2, np.float64),
                                           np.array([y0] * 2 + [y0 + height - 1] * 2, np.float64))
        # A pixel of room each way beyond the four around each position: float32 rounding
        # must not carry a position across the window's edge.
        left, top = math.floor(corners_x.min()) - 1, math.floor(corners_y.min()) - 1
        right, bottom = math.floor(corners_x.max()) + 3, math.floor(corners_y.max()) + 3
        if right <= 0 or bottom <= 0 or left >= self.raster.width or top >= self.raster.height:
            return np.zeros((height, width), np.float32), np.zeros((height, width), bool)
        values, valid = self.raster.read(left, top, right - left, bottom - top)
        # Positions within the window read, a few hundred pixels: float32 holds them to 1e-4.
        cos, sin = np.float32(self.cos), np.float32(self.sin)
        cols = np.arange(width, dtype=np.float32)
        rows = np.arange(height, dtype=np.float32)[:, None]
        xs = np.float32(corners_x[0] - left) + cols * cos + rows * sin
        ys = np.float32(corners_y[0] - top) - cols * sin + rows * cos
        return interpolate(values, xs, ys, valid)


def _same_parity(length: float, like: int) -> int:
    """The whole number at least ``length`` that is odd where ``like`` is."""
    whole = math.ceil(length)
    return whole + (whole - like) % 2


def interpolate(image: np.ndarray, x: np.ndarray, y: np.ndarray,
                valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear in the valid pixels of ``image`` at (x, y), each at least 0 and less than the
    last column and row: the weights of the valid ones among the four around, made to sum to
    one. Valid: where ``valid`` is (the image 0 elsewhere, as rasters are read), or where
    finite. Values (float32, 0 where none of the four is valid) and whether any is. ``image``
    may be a memory map: only the four around each position are read."""
    cols = image.shape[1]
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    first = y0 * cols + x0
    flat = image.reshape(-1)
    values = _bilinear(flat, first, cols, fx, fy)
    if valid is None:  # NaN where any of the four is: those again, from the finite ones
        known = np.ones(x.shape, bool)
        gaps = np.isnan(values)
        if gaps.any():
            values[gaps], known[gaps] = _finite(flat, first[gaps], cols, fx[gaps], fy[gaps])
        return values, known
    if valid.all():  # the common case
        return values, np.ones(x.shape, bool)
    weight = _bilinear(valid.reshape(-1).astype(np.float32), first, cols, fx, fy)
    known = weight > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, values / weight, np.float32(0)), known


def _bilinear(flat: np.ndarray, first: np.ndarray, cols: int, fx: np.ndarray,
              fy: np.ndarray) -> np.ndarray:
    """Plain bilinear in a flattened image of ``cols`` columns, from each upper left pixel."""
    top = flat[first] + (flat[first + 1] - flat[first]) * fx
    bottom = flat[first + cols] + (flat[first + cols + 1] - flat[first + cols]) * fx
    return (top + (bottom - top) * fy).astype(np.float32)


def _finite(flat: np.ndarray, first: np.ndarray, cols: int, fx: np.ndarray,
            fy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear in the finite ones among the four, and whether any is."""
    total = np.zeros(first.shape, np.float32)
    weight = np.zeros(first.shape, np.float32)
    for step, w in ((0, (1 - fx) * (1 - fy)), (1, fx * (1 - fy)),
                    (cols, (1 - fx) * fy), (cols + 1, fx * fy)):
        corner = flat[first + step]
        finite = np.isfinite(corner)
        total += np.where(finite, w * corner, 0)
        weight += np.where(finite, w, 0)
    known = weight > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, total / weight, np.float32(0)), known
