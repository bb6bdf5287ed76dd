"""Long wavelengths from a coarser pass: the arithmetic on grids, free of GDAL and the model.

A model's tiles see a few hundred pixels, so relief longer than a tile is what it reads least.
The same model run on the image averaged over ``factor`` x ``factor`` blocks sees ``factor``
times as much ground per tile. The DTM keeps the fine pass's detail and takes the wavelengths
beyond ``sigma`` fine pixels from the coarse pass:

    fine + upsample(blur(block_mean(coarse) - block_mean(fine)))

with both passes averaged onto one grid of cells some sigma / 2 wide, so that the fine DTM is
never held or blurred whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Readable(Protocol):
    width: int
    height: int

    def read(self, x0: int, y0: int, width: int, height: int
             ) -> tuple[np.ndarray, np.ndarray]: ...


class BlockAveraged:
    """A raster averaged over ``factor`` x ``factor`` blocks, read on demand from the fine
    one; a block is valid only where all its pixels are (a ragged last row or column of
    blocks is not)."""

    def __init__(self, raster: Readable, factor: int) -> None:
        self.raster, self.factor = raster, factor
        self.width, self.height = -(-raster.width // factor), -(-raster.height // factor)

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (float32) and validity of a window of blocks; outside, 0 and invalid."""
        k = self.factor
        values, valid = self.raster.read(x0 * k, y0 * k, width * k, height * k)
        # Summed k rows, then k columns, at a time: for small k, whole-array adds are some ten
        # times faster than a 4-D reduction.
        means = _block_sum(values, k) / np.float32(k * k)
        whole = _block_sum(valid.astype(np.uint8), k) == k * k
        means[~whole] = 0
        return means, whole


def _block_sum(values: np.ndarray, k: int) -> np.ndarray:
    """Sums over k x k blocks of an array whose sides are multiples of k."""
    rows = values[0::k].copy()
    for i in range(1, k):
        rows += values[i::k]
    cols = rows[:, 0::k].copy()
    for j in range(1, k):
        cols += rows[:, j::k]
    return cols


def block_mean(heights: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of finite values (NaN where it has none);
    a ragged last row or column of blocks averages what it holds."""
    rows, cols = -(-heights.shape[0] // factor), -(-heights.shape[1] // factor)
    if heights.shape != (rows * factor, cols * factor):
        padded = np.full((rows * factor, cols * factor), np.nan,
                         np.result_type(heights, np.float32))
        padded[:heights.shape[0], :heights.shape[1]] = heights
        heights = padded
    known = np.isfinite(heights)
    blocks = (rows, factor, cols, factor)
    sums = np.where(known, heights, 0).reshape(blocks).sum(axis=(1, 3), dtype=np.float64)
    counts = known.reshape(blocks).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def cell_means(strip: Callable[[int, int], np.ndarray], height: int, cell: int,
               rows_per_strip: int) -> np.ndarray:
    """``block_mean`` over ``cell`` x ``cell`` blocks of the rows that ``strip(y0, y1)`` gives,
    read in strips of whole cells, some ``rows_per_strip`` high."""
    step = cell * max(1, rows_per_strip // cell)
    return np.vstack([block_mean(strip(y0, min(y0 + step, height)), cell)
                      for y0 in range(0, height, step)])


# 0: each blurred value a weighted mean; 1: the value of a weighted plane fitted about it, which
# carries a slope to the data's edges (a probe: docs/experiments.md).
FIT_ORDER = 0


def gaussian_within(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the finite values, each output a weighted mean of those alone (so
    the blur is not pulled towards zero at the data's edges); NaN far from any data."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    known = np.isfinite(values).astype(np.float64)
    data = np.where(known > 0, values, 0.0)

    def moment(field: np.ndarray, row_power: int, column_power: int) -> np.ndarray:
        """Sum over the window of taps x field x (row offset)^p x (column offset)^q."""
        field = _convolve(field, taps * offsets ** row_power, 0)
        return _convolve(field, taps * offsets ** column_power, 1)

    weight, total = moment(known, 0, 0), moment(data, 0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        blurred = np.where(weight > 1e-3 * taps.sum() ** 2, total / weight, np.nan)
        if FIT_ORDER == 1:
            s = {(0, 0): weight, **{pq: moment(known, *pq)
                                    for pq in ((1, 0), (0, 1), (2, 0), (0, 2), (1, 1))}}
            f = {(0, 0): total, (1, 0): moment(data, 1, 0), (0, 1): moment(data, 0, 1)}
            blurred = _plane_fit(s, f, blurred)
    return blurred


def _plane_fit(s: dict, f: dict, fallback: np.ndarray) -> np.ndarray:
    """The weighted least-squares plane's value at each point, from the window's moments of
    the data's presence ``s`` and of the data ``f`` (by powers of the row and column offsets);
    ``fallback`` where the data about it cannot fix a plane (too few points, or on a line)."""
    matrix = np.stack([np.stack([s[0, 0], s[1, 0], s[0, 1]], -1),
                       np.stack([s[1, 0], s[2, 0], s[1, 1]], -1),
                       np.stack([s[0, 1], s[1, 1], s[0, 2]], -1)], -2)
    right = np.stack([f[0, 0], f[1, 0], f[0, 1]], -1)
    det = np.linalg.det(matrix)
    scale = s[0, 0] * s[2, 0] * s[0, 2]
    solvable = np.isfinite(fallback) & (np.abs(det) > 1e-6 * np.abs(scale))
    fitted = np.full(fallback.shape, np.nan)
    fitted[solvable] = np.linalg.solve(matrix[solvable], right[solvable][..., None])[..., 0, 0]
    return np.where(solvable, fitted, fallback)


def _convolve(values: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """``values`` convolved with the symmetric ``taps`` along ``axis``, zero beyond the edges
    (one shifted sum per tap: a few dozen whole-array operations)."""
    radius, length = len(taps) // 2, values.shape[axis]
    pads = [(0, 0), (0, 0)]
    pads[axis] = (radius, radius)
    padded = np.pad(values, pads)
    out = np.zeros_like(values)
    for shift, tap in enumerate(taps):
        window = [slice(None), slice(None)]
        window[axis] = slice(shift, shift + length)
        out += tap * padded[tuple(window)]
    return out


def upsample_rows(grid: np.ndarray, factor: int, y0: int, y1: int, width: int,
                  ring: int = 0) -> np.ndarray:
    """Rows [y0, y1) and columns [0, width) of the fine grid, bilinear between the centres of
    ``grid``'s cells (each ``factor`` fine pixels wide, ``ring`` of them beyond the fine grid's
    first row and column), flat beyond the outermost centres."""
    rows = _positions(y0, y1, factor, grid.shape[0], ring)
    cols = _positions(0, width, factor, grid.shape[1], ring)
    r0, r_weight = rows
    c0, c_weight = cols
    top = grid[r0] * (1 - r_weight[:, None]) + grid[r0 + 1] * r_weight[:, None] \
        if grid.shape[0] > 1 else grid[r0]
    return top[:, c0] * (1 - c_weight) + top[:, c0 + 1] * c_weight \
        if grid.shape[1] > 1 else top[:, c0]


def _positions(start: int, stop: int, factor: int, cells: int,
               ring: int) -> tuple[np.ndarray, np.ndarray]:
    """For fine pixels [start, stop): the coarse cell before each one's centre, and the weight
    of the next cell."""
    at = (np.arange(start, stop) + 0.5) / factor - 0.5 + ring  # in coarse cells' centres
    at = np.clip(at, 0, max(cells - 1, 0))
    before = np.minimum(np.floor(at).astype(int), max(cells - 2, 0))
    return before, at - before


def long_wavelength_correction(fine_cells: np.ndarray, coarse_cells: np.ndarray,
                               sigma_cells: float) -> np.ndarray:
    """What the coarse pass adds to the fine one, on their common grid of cells (the same
    shape: ceil(ceil(H / k) / m) = ceil(H / (k m))): their difference where both have data,
    blurred within it; 0 far from it."""
    return np.nan_to_num(gaussian_within(coarse_cells - fine_cells, sigma_cells))
