"""Tile grid, blending weights and the offset solver, on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from mars_dtm_plugin.core.stitch import OffsetProblem, blend_ramps
from mars_dtm_plugin.core.tiling import Rotation, Tile, axis_spans, snap, tile_grid


@pytest.mark.parametrize("length, size, overlap, margin",
                         [(1000, 64, 16, 0), (1000, 64, 16, 8), (64, 64, 16, 8), (30, 64, 8, 8),
                          (65, 64, 0, 0), (65, 64, 0, 8), (777, 100, 33, 12), (2048, 256, 96, 32),
                          (300, 256, 96, 32), (417, 256, 127, 32), (250, 256, 96, 32),
                          (224, 256, 96, 32), (545, 256, 96, 32), (1000, 64, 16, 20)])
def test_axis_spans_cover_the_axis_evenly_with_edge_tiles_short_by_the_margin(length, size,
                                                                             overlap, margin):
    spans = axis_spans(length, size, overlap, margin)
    covered = np.zeros(length, bool)
    for start, width in spans:
        assert start >= 0 and start + width <= length
        covered[start : start + width] = True
    assert covered.all()
    overlaps = [a + width - b for (a, width), (b, _) in zip(spans, spans[1:])]
    assert all(b > a for (a, _), (b, _) in zip(spans, spans[1:]))
    assert min(overlaps, default=overlap) >= overlap  # each overlaps the next enough
    assert max(overlaps, default=0) - min(overlaps, default=0) <= 1  # and all alike
    if length > size - margin:  # the edge tiles leave room in the model's view for context
        assert spans[0] == (0, size - margin) and spans[-1] == (length - size + margin,
                                                                size - margin)
        assert all(width == size for _, width in spans[1:-1])
    else:
        assert spans == [(0, length)]


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
    # The overlap is 8 columns wide (too narrow to trim) and 32 rows tall, less 2 at each end.
    expected = (pa[2:30, 24:] - pb[2:30, :8]).mean()
    assert masked.difference[0] == pytest.approx(expected, rel=1e-6)
    assert whole.difference[0] == pytest.approx(expected, rel=1e-6)
    assert masked.weight == whole.weight == [224.0]
    pb[5, 0] = np.nan  # a nodata pixel in the overlap is left out, and counted out
    masked.add_overlap(a, pa, b, pb)
    assert masked.weight[1] == 223.0
    assert masked.difference[1] == pytest.approx(np.nanmean(pa[2:30, 24:] - pb[2:30, :8]),
                                                 rel=1e-6)


def test_offsets_leave_out_the_tiles_own_borders():
    # Two tiles that agree but for a sagging outer ring, as a network's padding leaves.
    a, b = Tile(0, 0, 0, 0, 0, 64, 64), Tile(1, 0, 1, 40, 0, 64, 64)
    pa, pb = np.full((64, 64), 3.0), np.full((64, 64), 3.0)
    for tile in (pa, pb):
        tile[[0, -1], :] = tile[:, [0, -1]] = 0.0
    problem = OffsetProblem(2)
    problem.add_overlap(a, pa, b, pb, whole=True)
    assert problem.difference == [0.0]


def test_disconnected_tiles_keep_zero_offset():
    problem = OffsetProblem(3)
    a, b = Tile(0, 0, 0, 0, 0, 10, 10), Tile(1, 0, 1, 5, 0, 10, 10)
    problem.add_overlap(a, np.full((10, 10), 4.0), b, np.full((10, 10), 1.0))
    offsets = problem.solve()
    assert offsets[0] - offsets[1] == pytest.approx(-3.0)
    assert offsets[2] == 0.0


def test_quarter_turn_rotation_is_exact():
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    tile = Tile(0, 0, 0, 0, 0, 32, 32)
    exact = Rotation(90.0, 32)
    np.testing.assert_array_equal(exact.to_model(image, tile), np.rot90(image, -1))
    np.testing.assert_array_equal(exact.from_model(exact.to_model(image, tile), tile), image)
    # Clockwise: the top-left corner moves to the top-right.
    assert exact.to_model(image, tile)[0, -1] == image[0, 0]


@pytest.mark.parametrize("degrees, snapped", [(90.3, 90.0), (-0.2, 0.0), (359.6, 0.0),
                                              (0.7, 0.7), (134.5, 134.5), (269.51, 270.0)])
def test_a_turn_near_a_quarter_turn_is_made_one(degrees, snapped):
    assert snap(degrees) == pytest.approx(snapped)


def test_a_tile_inside_the_grid_has_eight_neighbours():
    # Corners count: data joined only across a tile's corner still forms one surface.
    grid = tile_grid(300, 300, 64, 16)
    assert len(grid.neighbours(grid.at(1, 1))) == 8
