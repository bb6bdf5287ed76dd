"""The scene turned to the model's sun: geometry, resampling, and which tiles meet it."""

from __future__ import annotations

import numpy as np
import pytest

from mars_dtm_plugin.core.tiling import tile_grid
from mars_dtm_plugin.core.turn import Turned, interpolate


class Plane:
    """A raster of a tilted plane, with a hole of nodata; outside, 0 and invalid."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        yy, xx = np.mgrid[:height, :width]
        self.values = (0.3 * xx - 0.7 * yy + 5).astype(np.float32)
        self.valid = np.ones((height, width), bool)
        self.valid[height // 3 : height // 3 + 4, width // 2 : width // 2 + 5] = False

    def read(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        pad = 500
        rows, cols = slice(y0 + pad, y0 + pad + h), slice(x0 + pad, x0 + pad + w)
        values = np.pad(np.where(self.valid, self.values, 0), pad)[rows, cols]
        return values, np.pad(self.valid, pad)[rows, cols]


@pytest.mark.parametrize("degrees", [0.7, 30.0, 45.0, 123.4, 200.0, 315.0])
def test_the_turned_grid_holds_every_pixel_of_the_raster_and_maps_back(degrees):
    turned = Turned(Plane(70, 40), degrees)
    rng = np.random.default_rng(0)
    cols, rows = rng.uniform(0, turned.width, 50), rng.uniform(0, turned.height, 50)
    back = turned.turned(*turned.source(cols, rows))
    np.testing.assert_allclose(back, (cols, rows), atol=1e-9)
    # The raster's corner pixels lie at least a pixel inside, so that four turned pixels
    # surround each.
    cols, rows = turned.turned(np.array([0.0, 69, 0, 69]), np.array([0.0, 0, 39, 39]))
    assert cols.min() >= 1 and cols.max() <= turned.width - 2
    assert rows.min() >= 1 and rows.max() <= turned.height - 2
    # And not much more: the bounding box, turned.
    assert turned.width * turned.height < 1.05 * (70 + 40) ** 2 / 2 + 4 * (70 + 40)


@pytest.mark.parametrize("degrees", [30.0, 45.0, 200.0])
def test_a_turned_window_of_a_plane_is_the_plane_where_valid(degrees):
    plane = Plane(70, 40)
    turned = Turned(plane, degrees)
    values, valid = turned.read(-3, 5, turned.width + 6, 40)
    cols, rows = np.meshgrid(np.arange(-3, turned.width + 3), np.arange(5, 45))
    xs, ys = turned.source(cols.astype(float), rows.astype(float))
    # Valid wherever one of the four pixels around is: within a pixel of a valid centre.
    near = np.zeros_like(valid)
    for dx in (0, 1):
        for dy in (0, 1):
            x, y = np.floor(xs).astype(int) + dx, np.floor(ys).astype(int) + dy
            inside = (x >= 0) & (x < 70) & (y >= 0) & (y < 40)
            near |= inside & plane.valid[np.clip(y, 0, 39), np.clip(x, 0, 69)]
    exact = (np.abs(xs - np.round(xs)) < 1e-9) & (np.abs(ys - np.round(ys)) < 1e-9)
    np.testing.assert_array_equal(valid, near | (valid & exact))
    assert valid.any() and not valid.all()
    # Between four valid pixels the plane itself; beside nodata, the plane from fewer.
    whole = valid & (xs > 0) & (xs < 69) & (ys > 0) & (ys < 39)
    whole &= ~((xs > 70 // 2 - 2) & (xs < 70 // 2 + 6) & (ys > 40 // 3 - 2) & (ys < 40 // 3 + 5))
    np.testing.assert_allclose(values[whole], 0.3 * xs[whole] - 0.7 * ys[whole] + 5, atol=1e-4)
    assert (values[~valid] == 0).all()


def test_bilinear_in_the_valid_pixels():
    image = np.array([[0, 10, 20], [30, 40, np.nan], [50, 60, 70]], np.float32)
    values, ok = interpolate(image, np.array([0.5, 1.0, 1.5, 1.25]), np.array([0.5, 0.0, 0.5, 1.0]))
    # The first between four; the second on one; the third between three (the NaN's weight
    # shared among them); the fourth on the row of 40 and the NaN, a quarter of the way: 40,
    # the NaN's weight given to it.
    np.testing.assert_allclose(values, [20.0, 10.0, (10 + 20 + 40) / 3, 40.0], rtol=1e-6)
    assert ok.all()
    valid = np.array([[False, False, True], [False, False, False], [True, True, True]])
    values, ok = interpolate(np.where(valid, image, 0), np.array([0.5, 1.5]),
                             np.array([0.5, 0.0]), valid)
    assert (values[0], ok[0]) == (0.0, False)  # none of the four valid
    assert (values[1], ok[1]) == (20.0, True)


@pytest.mark.parametrize("degrees", [17.0, 45.0, 260.0])
def test_the_tiles_that_meet_a_turned_raster_are_those_that_can_hold_a_valid_pixel(degrees):
    plane = Plane(200, 50)
    turned = Turned(plane, degrees)
    grid = tile_grid(turned.width, turned.height, 24, 6)
    met = [turned.meets(t.x0, t.y0, t.width, t.height) for t in grid.tiles]
    for tile, meets in zip(grid.tiles, met):
        _, valid = turned.read(tile.x0, tile.y0, tile.width, tile.height)
        if valid.any():
            assert meets, tile
    assert not all(met)  # the grid's corners lie beyond the turned raster


@pytest.mark.parametrize("factor", [2, 3])
def test_the_coarse_pass_turns_the_averaged_raster_onto_the_turned_grids_blocks(factor):
    from mars_dtm_plugin.core.coarse import BlockAveraged, block_mean

    plane = Plane(120, 90)
    plane.valid[:] = True
    fine = Turned(plane, 33.0)
    coarse = fine.coarser(BlockAveraged(plane, factor), factor)
    assert (coarse.width, coarse.height) == (-(-fine.width // factor), -(-fine.height // factor))
    values, valid = coarse.read(0, 0, coarse.width, coarse.height)
    fine_values, fine_valid = fine.read(0, 0, coarse.width * factor, coarse.height * factor)
    blocks = block_mean(np.where(fine_valid, fine_values, np.nan), factor)
    # Away from the raster's edges (where both extend it) a plane's block means are the
    # plane at the blocks' centres, which the coarse turned pixels must be.
    cols, rows = np.meshgrid(np.arange(coarse.width, dtype=float),
                             np.arange(coarse.height, dtype=float))
    xs, ys = coarse.source(cols, rows)  # in blocks
    inner = (xs > 1) & (xs < 120 // factor - 2) & (ys > 1) & (ys < 90 // factor - 2)
    assert valid[inner].all() and inner.sum() > 0.3 * inner.size
    np.testing.assert_allclose(values[inner], blocks[inner], atol=1e-3)


def _agrees_with_float64(turned: Turned, plane: Plane, x0: int, y0: int, w: int, h: int) -> int:
    """Checks a window against bilinear in float64 where it lies inside; how many pixels do."""
    values, valid = turned.read(x0, y0, w, h)
    cols, rows = np.meshgrid(np.arange(x0, x0 + w, dtype=float), np.arange(y0, y0 + h, dtype=float))
    xs, ys = turned.source(cols, rows)
    right, bottom = plane.width - 1, plane.height - 1
    inside = (xs >= 0) & (xs <= right) & (ys >= 0) & (ys <= bottom)
    assert valid[inside].all()
    x, y = np.minimum(xs[inside], right - 1e-6), np.minimum(ys[inside], bottom - 1e-6)
    i, j = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - i, y - j
    image = plane.values.astype(np.float64)
    expected = ((image[j, i] * (1 - fx) + image[j, i + 1] * fx) * (1 - fy)
                + (image[j + 1, i] * (1 - fx) + image[j + 1, i + 1] * fx) * fy)
    np.testing.assert_allclose(values[inside], expected, atol=1e-3)
    return int(inside.sum())


def test_turned_windows_anywhere_agree_with_bilinear_in_float64():
    # Random windows at random angles, the raster's edges and corners among them: float32
    # positions within a window must not wrap onto the next row or past the window.
    rng = np.random.default_rng(5)
    plane = Plane(61, 37)
    plane.values = rng.normal(size=plane.values.shape).astype(np.float32)  # no plane to hide
    plane.valid[:] = True
    seen = sum(_agrees_with_float64(Turned(plane, degrees), plane, int(rng.integers(-20, 80)),
                                    int(rng.integers(-20, 80)), 40, 30)
               for degrees in rng.uniform(0, 360, 12))
    assert seen > 2000
    # A window whose last row's positions, in float32, round past the rows the float64
    # corners ask for (found by search: one in 20000 such windows).
    assert _agrees_with_float64(Turned(plane, 332.6758569385363), plane, -1, 35, 64, 64) > 0


def test_the_tile_store_holds_the_laid_tiles_alone(tmp_path):
    from mars_dtm_plugin.core.engine import _TileStore

    plane = Plane(200, 50)
    turned = Turned(plane, 45.0)
    grid = tile_grid(turned.width, turned.height, 24, 6)
    laid = [t for t in grid.tiles if turned.meets(t.x0, t.y0, t.width, t.height)]
    assert len(laid) < len(grid.tiles)
    with open(tmp_path / "store", "w+b") as file:
        store = _TileStore(file, grid, laid)
        for tile in reversed(laid):  # in any order
            store.put(tile, np.full((tile.height, tile.width), tile.index, np.float32), 1)
        # As large as the laid tiles, not the grid, and each tile's rows where it put them.
        assert file.seek(0, 2) == sum(t.width * t.height * 4 for t in laid)
        for tile in laid:
            assert (store.rows(tile, 0, tile.height) == tile.index).all()
