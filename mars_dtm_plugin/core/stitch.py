"""Seamless stitching: reconcile each tile's vertical offset with its neighbours, then blend.

A monocular model knows heights only relative to its own tile, so neighbouring tiles disagree
by a constant. Over every overlap we measure the mean difference; the offsets that best agree
with all of them solve a sparse least-squares problem on the tile graph (a graph Laplacian),
solved here by conjugate gradients in tens to hundreds of matrix-free iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .tiling import Tile

BORDER_PX = 2


@dataclass
class OffsetProblem:
    """Edges of the tile graph: ``heights[a] - heights[b] ≈ difference`` with a weight."""

    n_tiles: int
    a: list[int] = field(default_factory=list)
    b: list[int] = field(default_factory=list)
    difference: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)

    def add_overlap(self, ta: Tile, pa: np.ndarray, tb: Tile, pb: np.ndarray,
                    whole: bool = False) -> None:
        """Record the mean difference of two tiles' heights (NaN = no data) where they overlap.

        ``whole``: the caller knows neither tile has NaN (the common case, and faster)."""
        xs, ys = (max(ta.x0, tb.x0), min(ta.x1, tb.x1)), (max(ta.y0, tb.y0), min(ta.y1, tb.y1))
        count, difference = _mean_difference(ta, pa, tb, pb, _inside(*xs), _inside(*ys), whole)
        if not count:  # shared pixels only near the overlap's ends, which the blend mixes too
            count, difference = _mean_difference(ta, pa, tb, pb, xs, ys, whole)
        if not count:  # however few, shared pixels link two tiles; the weight says how much
            return
        self.a.append(ta.index)
        self.b.append(tb.index)
        self.difference.append(difference)
        self.weight.append(float(count))

    def solve(self, tolerance: float = 1e-20) -> np.ndarray:
        """Offsets to add to each tile; their plain mean is zero in each connected part."""
        offsets = np.zeros(self.n_tiles)
        if not self.a:
            return offsets
        a, b = np.asarray(self.a), np.asarray(self.b)
        w, d = np.asarray(self.weight), np.asarray(self.difference)
        degree = np.bincount(a, w, self.n_tiles) + np.bincount(b, w, self.n_tiles)
        # A tiny pull towards zero fixes each component's free constant without biasing it.
        ridge = 1e-9 * w.max()

        def laplacian(x: np.ndarray) -> np.ndarray:
            return (degree + ridge) * x - np.bincount(a, w * x[b], self.n_tiles) \
                - np.bincount(b, w * x[a], self.n_tiles)

        # Minimise sum w (o_a - o_b + d)^2: the normal equations are L o = rhs.
        rhs = np.bincount(b, w * d, self.n_tiles) - np.bincount(a, w * d, self.n_tiles)
        return conjugate_gradient(laplacian, rhs, tolerance)


def _mean_difference(ta: Tile, pa: np.ndarray, tb: Tile, pb: np.ndarray,
                     xs: tuple[int, int], ys: tuple[int, int],
                     whole: bool) -> tuple[int, float]:
    """How many pixels of the window ``xs`` x ``ys`` both tiles have, and their mean
    height difference there."""
    (x0, x1), (y0, y1) = xs, ys
    if x1 <= x0 or y1 <= y0:
        return 0, 0.0
    da = pa[y0 - ta.y0 : y1 - ta.y0, x0 - ta.x0 : x1 - ta.x0]
    db = pb[y0 - tb.y0 : y1 - tb.y0, x0 - tb.x0 : x1 - tb.x0]
    if whole:  # no NaN on either side: the mean difference is the difference of means
        return da.size, float(da.mean() - db.mean())
    delta = da - db
    shared = np.isfinite(delta)
    count = int(np.count_nonzero(shared))
    return count, float(delta[shared].mean()) if count else 0.0


def _inside(start: int, end: int) -> tuple[int, int]:
    """An overlap's extent along one axis, ``BORDER_PX`` in from both ends where it is wide
    enough: each end is some tile's border, where the model's padding shows."""
    trim = BORDER_PX if end - start > 4 * BORDER_PX else 0
    return start + trim, end - trim


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray,
                       tolerance: float) -> np.ndarray:
    x = np.zeros_like(rhs)
    r = rhs - matvec(x)
    p = r.copy()
    rr = float(r @ r)
    stop = tolerance * max(float(rhs @ rhs), 1e-300)  # on the squared residual
    for _ in range(10 * len(rhs) + 100):
        if rr <= stop:
            break
        q = matvec(p)
        alpha = rr / float(p @ q)
        x += alpha * p
        r -= alpha * q
        rr_next = float(r @ r)
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def blend_ramps(tile: Tile, neighbours: list[Tile]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights of a tile (their outer product is its blending weight).

    Raised-cosine ramps across each overlap: two complementary ramps sum to one, so the
    blend is a partition of unity and a surface that tiles agree on passes through unchanged.
    """
    ramp_y = _axis_ramp(tile.height, tile.y0, tile.y1,
                        [(t.y0, t.y1) for t in neighbours if t.col == tile.col])
    ramp_x = _axis_ramp(tile.width, tile.x0, tile.x1,
                        [(t.x0, t.x1) for t in neighbours if t.row == tile.row])
    return ramp_y.astype(np.float32), ramp_x.astype(np.float32)


def _axis_ramp(n: int, start: int, end: int, others: list[tuple[int, int]]) -> np.ndarray:
    ramp = np.ones(n)
    position = np.arange(n) + 0.5
    for o_start, o_end in others:
        if o_start < start < o_end:  # neighbour before: rise over the shared part
            length = o_end - start
            ramp = np.minimum(ramp, _raised_cosine(position / length))
        elif o_start < end < o_end:  # neighbour after: fall over the shared part
            length = end - o_start
            ramp = np.minimum(ramp, _raised_cosine((n - position) / length))
    return ramp


def _raised_cosine(t: np.ndarray) -> np.ndarray:
    return np.sin(np.clip(t, 0, 1) * math.pi / 2) ** 2
