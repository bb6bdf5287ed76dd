"""Tile grid, blending weights and the offset solver, on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from mars_dtm_plugin.core.stitch import OffsetProblem, blend_ramps
from mars_dtm_plugin.core.tiling import Rotation, Tile, axis_origins, bilinear, tile_grid


@pytest.mark.parametrize("length, size, overlap", [(1000, 64, 16), (64, 64, 16), (30, 64, 8),
                                                   (65, 64, 0), (777, 100, 33)])
def test_axis_origins_cover_the_axis_with_full_tiles(length, size, overlap):
    origins = axis_origins(length, size, overlap)
    covered = np.zeros(length, bool)
    for start in origins:
        assert start >= 0 and min(start + size, length) <= length
        covered[start : start + size] = True
    assert covered.all()
    assert origins[-1] == max(0, length - size)  # last tile flush with the edge


def test_blend_weights_are_a_partition_of_unity():
    grid = tile_grid(300, 200, 64, 16)
    total = np.zeros((200, 300))
    for tile in grid.tiles:
        ramp_y, ramp_x = blend_ramps(tile, grid.neighbours(tile))
        total[tile.y0 : tile.y1, tile.x0 : tile.x1] += np.outer(ramp_y, ramp_x)
    regular = total[: grid.tiles[-1].y0, : grid.tiles[-1].x0]  # before the flush last tiles
    np.testing.assert_allclose(regular, 1.0, atol=1e-6)
    assert total.min() > 0


def test_offsets_recover_known_shifts_on_a_grid():
    grid = tile_grid(400, 300, 64, 16)
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 100, len(grid.tiles))
    surface = rng.normal(0, 1, (300, 400))
    problem = OffsetProblem(len(grid.tiles))
    tiles = {t.index: surface[t.y0 : t.y1, t.x0 : t.x1] - truth[t.index] for t in grid.tiles}
    for tile in grid.tiles:
        for other in grid.neighbours(tile):
            if other.index < tile.index:
                problem.add_overlap(other, tiles[other.index], tile, tiles[tile.index])
    offsets = problem.solve()
    recovered = offsets - offsets.mean()
    np.testing.assert_allclose(recovered, truth - truth.mean(), atol=1e-6)


def test_overlap_of_whole_tiles_measures_the_same_as_the_masked_path():
    a, b = Tile(0, 0, 0, 0, 0, 32, 32), Tile(1, 0, 1, 24, 0, 32, 32)
    rng = np.random.default_rng(3)
    pa, pb = rng.normal(5.0, 1.0, (32, 32)), rng.normal(-2.0, 1.0, (32, 32))
    masked, whole = OffsetProblem(2), OffsetProblem(2)
    masked.add_overlap(a, pa, b, pb)
    whole.add_overlap(a, pa, b, pb, whole=True)
    expected = (pa[:, 24:] - pb[:, :8]).mean()
    assert masked.difference[0] == pytest.approx(expected, rel=1e-6)
    assert whole.difference[0] == pytest.approx(expected, rel=1e-6)
    assert masked.weight == whole.weight == [256.0]
    pb[0, 0] = np.nan  # a nodata pixel in the overlap is left out, and counted out
    masked.add_overlap(a, pa, b, pb)
    assert masked.weight[1] == 255.0
    assert masked.difference[1] == pytest.approx(np.nanmean(pa[:, 24:] - pb[:, :8]), rel=1e-6)


def test_disconnected_tiles_keep_zero_offset():
    problem = OffsetProblem(3)
    a, b = Tile(0, 0, 0, 0, 0, 10, 10), Tile(1, 0, 1, 5, 0, 10, 10)
    problem.add_overlap(a, np.full((10, 10), 4.0), b, np.full((10, 10), 1.0))
    offsets = problem.solve()
    assert offsets[0] - offsets[1] == pytest.approx(-3.0)
    assert offsets[2] == 0.0


def test_quarter_turn_rotation_is_exact_and_general_rotation_agrees():
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    tile = Tile(0, 0, 0, 0, 0, 32, 32)
    exact = Rotation(90.0, 32)
    assert exact.footprint == 32
    np.testing.assert_array_equal(exact.to_model(image, tile), np.rot90(image, -1))
    np.testing.assert_array_equal(exact.from_model(exact.to_model(image, tile), tile), image)
    # Clockwise: the top-left corner moves to the top-right.
    assert exact.to_model(image, tile)[0, -1] == image[0, 0]


def test_general_rotation_round_trip_is_smooth_on_planes():
    rotation = Rotation(30.0, 64)
    assert rotation.footprint == int(64 / (np.cos(np.pi / 6) + 0.5))
    tile = Tile(0, 0, 0, 100, 100, rotation.footprint, rotation.footprint)
    x0, y0, w, h = rotation.context(tile)
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    plane = (0.3 * xx - 0.7 * yy).astype(np.float32)
    back = rotation.from_model(rotation.to_model(plane, tile), tile)
    fy, fx = np.mgrid[tile.y0 : tile.y1, tile.x0 : tile.x1]
    np.testing.assert_allclose(back, 0.3 * fx - 0.7 * fy, atol=1e-3)


def test_bilinear_interpolates_between_pixels():
    image = np.array([[0, 10], [20, 30]], np.float32)
    assert bilinear(image, np.array([0.5]), np.array([0.5]))[0] == pytest.approx(15.0)
    assert bilinear(image, np.array([1.0]), np.array([0.0]))[0] == pytest.approx(10.0)
