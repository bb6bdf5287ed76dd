import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from tests.models import write_test_model
from training.evaluate import (
    KAROO_ACQUIRED,
    TEST_SETS,
    Scene,
    average,
    block_mean,
    check_data_folder,
    coarser_truth,
    difference_interval,
    estimate_sun,
    flat,
    interval_table,
    main,
    reference_alone,
    reshading_correlation,
    scene_metrics,
    scene_tilt_error_deg,
    score_on_truth_grid,
    set_source,
    sfs_fourier,
    sun_over,
    synthetic_scenes,
    tile_metrics,
    truth_without_scene_tilt,
    with_true_scene_tilt,
    write_reference,
)
from training.shards import read_shards
from training.synth import cos_incidence, write_geotiff


def _ramp(gain: float) -> np.ndarray:
    return np.tile(np.arange(4.0) * gain, (4, 1))  # heights rising one column at a time


def test_tile_metrics_match_hand_computed_values():
    m = tile_metrics(_ramp(1.5) + 10.0, _ramp(1.0), pixel_size_m=1.0)
    # error after mean removal: 0.5 * x - 0.75 = -0.75, -0.25, 0.25, 0.75 per row
    assert m["rmse_m"] == pytest.approx(math.sqrt(0.3125))
    assert m["mae_m"] == pytest.approx(0.5)
    assert m["slope_err_deg"] == pytest.approx(math.degrees(math.atan(1.5)) - 45.0)
    # depth below the top: 1.5 times the truth everywhere -> fails 1.25, passes 1.25^2
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 1.0, 1.0)
    assert m["relief_ratio"] == pytest.approx(1.5)


def test_deltas_count_ratios_of_depth_below_the_top_by_hand():
    truth = np.array([[4.0, 3.0, 2.0, 0.0]] * 2)  # depths below the top: 0, 1, 2, 4
    pred = np.array([[10.0, 8.8, 8.5, 5.0]] * 2)  # depths 0, 1.2, 1.5, 5: ratios 1.2, 4/3, 1.25
    m = tile_metrics(pred, truth, 1.0)
    # the top (true depth 0) is left out; 1.25 itself is not below 1.25
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 1.0, 1.0))
    wide = tile_metrics(np.array([[10.0, 8.1, 6.2, 2.4]] * 2), truth, 1.0)  # ratios 1.9
    # powers of 1.25 (1.5625, 1.953), not multiples (2.5 would take 1.9 at δ<1.25²)
    assert (wide["delta1"], wide["delta2"], wide["delta3"]) == pytest.approx((0.0, 0.0, 1.0))


def test_slopes_beside_invalid_pixels_are_left_out():
    truth, pred = _ramp(1.0), _ramp(1.0).T  # 45° everywhere, one along columns, one along rows
    pred[1, 1], truth[1, 1] = 1e6, -1e6
    valid = np.ones_like(truth, bool)
    valid[1, 1] = False
    # the pixels beside (1, 1) would see the two surfaces' fills differ; only (2, 2) counts
    assert tile_metrics(pred, truth, 1.0, valid)["slope_err_deg"] == pytest.approx(0.0, abs=1e-9)


def test_rmse_splits_into_the_tilt_and_the_rest():
    y, x = np.mgrid[:64, :64].astype(float)
    bumps = np.cos(x * 2 * np.pi / 16) * np.cos(y * 2 * np.pi / 16)  # no tilt over the tile
    truth = 0.5 * x - 0.25 * y + bumps
    tilt_only = tile_metrics(0.5 * x - 0.25 * y, truth, 1.0)  # misses the bumps only
    assert tilt_only["tilt_rmse_m"] == pytest.approx(0.0, abs=1e-9)
    assert tilt_only["detrended_rmse_m"] == pytest.approx(bumps.std())
    no_tilt = tile_metrics(bumps, truth, 1.0)  # misses the tilt only
    assert no_tilt["detrended_rmse_m"] == pytest.approx(0.0, abs=1e-9)
    assert no_tilt["tilt_rmse_m"] == pytest.approx((0.5 * x - 0.25 * y).std())
    noisy = tile_metrics(np.random.default_rng(2).normal(size=x.shape), truth, 1.0)
    assert noisy["rmse_m"] ** 2 == pytest.approx(
        noisy["tilt_rmse_m"] ** 2 + noisy["detrended_rmse_m"] ** 2)


@pytest.mark.parametrize("factor", [1, 3])
def test_the_tilt_control_takes_the_whole_scene_tilt_from_the_truth(tmp_path, factor):
    y, x = np.mgrid[:24, :36].astype(float)
    bumps = np.sin(x / 3.0) * np.cos(y / 4.0)
    truth = 5.0 + 0.4 * x - 0.7 * y + bumps  # on the truth grid
    own_tilt = 0.1 * np.indices((24 * factor, 36 * factor))[1] - 3.0
    heights = np.kron(bumps, np.ones((factor, factor))) + own_tilt  # on the image grid
    scene = Scene("s", tmp_path / "s.tif", heights, np.ones(heights.shape, bool), 1.0,
                  (270.0, 30.0), truth=truth, truth_pixel_m=float(factor), factor=factor)
    swapped = block_mean(with_true_scene_tilt(heights, scene), factor)
    np.testing.assert_allclose(swapped, truth, atol=1e-9)  # own tilt out, the truth's in
    assert np.abs(block_mean(heights, factor) - truth).max() > 10  # before: far off


def test_the_truth_without_its_scene_tilt_keeps_all_but_the_plane(tmp_path):
    y, x = np.mgrid[:32, :32].astype(float)
    bumps = np.cos(x * 2 * np.pi / 16) * np.cos(y * 2 * np.pi / 16)  # no plane over the scene
    truth = 5.0 + 0.4 * x - 0.7 * y + bumps
    scene = Scene("s", tmp_path / "s.tif", truth, np.ones(truth.shape, bool), 1.0,
                  (270.0, 30.0), truth=truth, truth_pixel_m=1.0)
    np.testing.assert_allclose(truth_without_scene_tilt(scene), bumps, atol=1e-9)


def test_the_scene_tilt_error_is_the_slope_between_the_two_planes_by_hand(tmp_path):
    y, x = np.mgrid[:40, :60].astype(float)
    bumps = np.cos(x * 2 * np.pi / 20) * np.cos(y * 2 * np.pi / 20)  # no plane over the scene
    truth = -0.1 * x + 0.3 * y + bumps
    pred = 0.3 * x + bumps + 7.0  # the plane differs by (0.4, -0.3) m per 2 m pixel
    valid = np.ones(truth.shape, bool)
    expected = math.degrees(math.atan(0.5 / 2.0))
    assert scene_tilt_error_deg(pred, truth, valid, 2.0) == pytest.approx(expected)
    pred[:, :20], valid[:, :20] = 1e6, False  # left out where not valid
    assert scene_tilt_error_deg(pred, truth, valid, 2.0) == pytest.approx(expected)
    scene = Scene("s", tmp_path / "s.tif", truth, np.ones(truth.shape, bool), 2.0,
                  (270.0, 30.0), truth=truth, truth_pixel_m=2.0, tile=20)
    regional = math.degrees(math.atan(math.hypot(0.1, 0.3) / 2.0))  # flat's: the truth's own
    assert score_on_truth_grid(scene, flat(truth))["scene_tilt_err_deg"] == \
        pytest.approx(regional)
    assert score_on_truth_grid(scene, truth)["scene_tilt_err_deg"] == pytest.approx(0, abs=1e-6)


def test_tables_show_rounding_residues_as_zero_and_keep_small_figures():
    from training.evaluate import table

    metrics = {"m": {"scene_tilt_err_deg": 2.3e-07, "detail_ratio": 0.00123, "tiles": 27}}
    assert table(metrics, ["m"]).splitlines()[-1] == "| m | 0.00123 | 0 | 27 |"


def test_no_scene_tilt_error_from_pixels_on_one_line():
    truth = np.arange(25.0).reshape(5, 5)
    on_a_diagonal = np.eye(5, dtype=bool)
    assert math.isnan(scene_tilt_error_deg(truth * 2, truth, on_a_diagonal, 1.0))
    assert math.isnan(scene_tilt_error_deg(truth * 2, truth, np.zeros((5, 5), bool), 1.0))


def test_pixel_size_scales_slopes_not_heights():
    m = tile_metrics(_ramp(2.0), _ramp(2.0) * 0, pixel_size_m=2.0)
    assert m["slope_err_deg"] == pytest.approx(45.0)
    assert m["mae_m"] == pytest.approx(2.0)


def test_invalid_pixels_are_left_out():
    truth, pred = _ramp(1.0), _ramp(1.0)
    pred[0, 0] = 1e6
    valid = np.ones_like(truth, bool)
    valid[0, 0] = False
    assert tile_metrics(pred, truth, 1.0, valid)["rmse_m"] == pytest.approx(0.0, abs=1e-9)


def test_flat_baseline_error_is_the_relief_of_the_truth():
    truth = np.random.default_rng(0).normal(0, 3.0, (32, 32))
    m = tile_metrics(flat(truth), truth, 1.0)
    assert m["rmse_m"] == pytest.approx(truth.std())
    assert m["delta1"] == 0.0  # a flat surface has no depth anywhere


def _hills(size: int = 128, amplitude: float = 2.0) -> np.ndarray:
    y, x = np.mgrid[:size, :size] * (2 * np.pi / 64)
    return (amplitude * np.sin(x) * np.sin(0.5 * y + 0.3)).astype(np.float32)


def test_detail_ratio_measures_roughness_apart_from_the_broad_shape():
    y, x = np.mgrid[:128, :128] * (2 * np.pi / 256)
    hills = 6.0 * np.cos(x) * np.cos(y)  # half a wave across the tile: level at its edges
    grain = np.random.default_rng(1).normal(0, 1.0, hills.shape)
    smooth = tile_metrics(hills, hills + grain, 1.0)
    rough = tile_metrics(hills + 3 * grain, hills + grain, 1.0)
    assert smooth["relief_ratio"] > 0.8  # most of the relief is in the hills
    assert smooth["detail_ratio"] < 0.15  # the hills barely change within 4 pixels
    assert rough["detail_ratio"] == pytest.approx(3.0, rel=0.05)


def test_detail_ratio_is_zero_for_a_plane_however_tilted():
    y, x = np.mgrid[:64, :64].astype(float)
    plane = 0.8 * x - 0.5 * y
    grain = np.random.default_rng(3).normal(0, 1.0, plane.shape)
    assert tile_metrics(plane, plane + grain, 1.0)["detail_ratio"] < 0.02


def test_detail_ratio_does_not_take_a_nodata_hole_for_roughness():
    y, x = np.mgrid[:64, :64].astype(float)
    bowl = 0.005 * ((x - 30) ** 2 + (y - 34) ** 2)  # smooth: next to nothing at 4 px
    grain = np.random.default_rng(5).normal(0, 1.0, bowl.shape)
    valid = np.ones(bowl.shape, bool)
    valid[24:40, 24:40] = False
    whole = tile_metrics(bowl + grain, grain, 1.0)["detail_ratio"]
    holed = tile_metrics(bowl + grain, grain, 1.0, valid)["detail_ratio"]
    assert whole < 1.05 and holed == pytest.approx(whole, abs=0.02)  # zeros in the hole: 1.08


def test_linear_sfs_heights_grow_with_the_pixel_size():
    image = np.clip(cos_incidence(_hills(), 1.0, 270.0, 35.0), 0, None)
    np.testing.assert_allclose(sfs_fourier(image, 2.5, 270.0, 35.0),
                               2.5 * sfs_fourier(image, 1.0, 270.0, 35.0), rtol=1e-5, atol=1e-5)


def test_a_tile_less_than_four_fifths_valid_is_not_scored():
    truth = np.random.default_rng(1).normal(size=(8, 16))
    valid = np.ones(truth.shape, bool)
    valid[:, :3] = False  # the left 8 x 8 tile keeps 5/8 of its pixels, the right one all
    rows = scene_metrics(truth + 0.5, truth, 1.0, 8, valid)
    assert len(rows) == 1 and rows[0]["rmse_m"] == pytest.approx(0.0, abs=1e-12)
    valid[:, :3], valid[:1, :8] = True, False  # 7/8 valid: scored
    assert len(scene_metrics(truth + 0.5, truth, 1.0, 8, valid)) == 2


def test_sfs_reads_only_the_valid_pixels():
    dem = _hills()
    image = np.clip(cos_incidence(dem, 1.0, 135.0, 35.0), 0, None)
    valid = np.ones(image.shape, bool)
    valid[:, :20] = False  # nodata, whatever its value
    dark, bright = (sfs_fourier(np.where(valid, image, fill), 1.0, 135.0, 35.0, valid)
                    for fill in (0.0, 5.0))
    np.testing.assert_allclose(dark[valid], bright[valid], atol=1e-5)
    assert abs(dark[valid].mean()) < 1e-5  # heights about the valid pixels' mean


def test_a_flat_dem_has_no_reshading_correlation():
    image = np.random.default_rng(4).uniform(50, 200, (32, 32))
    # shaded, a flat DEM is a constant up to rounding (std 2e-16 under this sun), not 0
    assert math.isnan(reshading_correlation(image, np.zeros((32, 32)), 1.0, 270.0, 40.0))


@pytest.mark.parametrize("elevation", [20.0, 35.0, 60.0])
@pytest.mark.parametrize("azimuth", [270.0, 135.0])
def test_linear_sfs_recovers_gentle_hills(azimuth, elevation):
    dem = _hills()
    image = np.clip(cos_incidence(dem, 1.0, azimuth, elevation), 0, None)
    heights = sfs_fourier(image, 1.0, azimuth, elevation)
    inner = (slice(16, -16), slice(16, -16))
    r = np.corrcoef(heights[inner].ravel(), dem[inner].ravel())[0, 1]
    assert r > 0.95
    # The relief too, under a low sun or a high one (the slope is the contrast x tan(elevation)).
    assert 0.85 < heights[inner].std() / dem[inner].std() < 1.1


def test_reshading_a_dem_with_slopes_in_shadow_matches_its_render():
    dem = 6 * _hills()  # under a 15 degree sun, some 30 % of it faces away
    image = np.clip(cos_incidence(dem, 1.0, 200.0, 15.0), 0, None)
    assert reshading_correlation(image, dem, 1.0, 200.0, 15.0) > 0.9999
    # The outermost pixels, where the DEM's gradient is one-sided, are left out.
    image[[0, -1], :] = image[:, [0, -1]] = 50.0
    assert reshading_correlation(image, dem, 1.0, 200.0, 15.0) > 0.9999


def test_reshading_and_sun_estimate_on_a_rendered_dem():
    dem = _hills()
    image = np.clip(cos_incidence(dem, 1.0, 200.0, 30.0), 0, None)
    assert reshading_correlation(image, dem, 1.0, 200.0, 30.0) > 0.99
    assert reshading_correlation(image, dem, 1.0, 20.0, 30.0) < 0.0
    azimuth, _, r = estimate_sun(image, dem, 1.0)
    assert abs(azimuth - 200.0) <= 5.0 and r > 0.99


def test_the_sun_over_an_image_is_the_solar_tables_and_turns_with_its_grid(tmp_path):
    """Over the Karoo scene (33.69 S, 24.39 E) at its acquisition time NOAA's solar position
    equations give azimuth 65.46 and elevation 62.06; in a grid whose north is turned off image
    up (a transverse Mercator far from its central meridian) the azimuth turns with it, and in a
    grid with east on the left it turns the other way."""
    from osgeo import osr

    from mars_dtm_plugin.core.raster import image_frame

    image = np.zeros((10, 10), np.uint8)
    geographic = write_geotiff(tmp_path / "g.tif", image, (24.39 - 5e-4, 1e-4, 0, -33.69 + 5e-4,
                                                           0, -1e-4), osr.SRS_WKT_WGS84_LAT_LONG)
    azimuth, elevation = sun_over(geographic, KAROO_ACQUIRED)
    assert azimuth == pytest.approx(65.46, abs=0.02) and elevation == pytest.approx(62.06, abs=0.02)

    far = osr.SpatialReference()
    far.ImportFromProj4("+proj=tmerc +lon_0=40 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m")
    lat_lon = osr.SpatialReference(osr.SRS_WKT_WGS84_LAT_LONG)
    x, y, _ = osr.CoordinateTransformation(lat_lon, far).TransformPoint(-33.69, 24.39)
    for name, x_step, turn in (("turned", 10.0, 1), ("east left", -10.0, -1)):
        gt = (x - 5 * x_step, x_step, 0, y + 50.0, 0, -10.0)
        north, mirrored = image_frame(gt, far, 10, 10)
        assert abs(north) > 8 and mirrored == (turn < 0)  # grid convergence 15.6 deg of longitude
        in_image, elevation_there = sun_over(
            write_geotiff(tmp_path / f"{name}.tif", image, gt, far.ExportToWkt()), KAROO_ACQUIRED)
        assert in_image == pytest.approx((north + turn * azimuth) % 360, abs=0.02), name
        assert elevation_there == pytest.approx(elevation, abs=0.02)


def test_block_mean_and_tile_weighted_average():
    assert block_mean(np.arange(16.0).reshape(4, 4), 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    rows = [{"tiles": 1, "rmse_m": 1.0}, {"tiles": 3, "rmse_m": 2.0}]
    assert average(rows) == {"rmse_m": 1.75, "tiles": 4}
    # A scene without a value (flat truth has no relief ratio) is left out of that metric
    # only, and a scene without valid tiles out of every one.
    rows = [{"tiles": 0}, {"tiles": 1, "rmse_m": 1.0, "relief_ratio": math.nan},
            {"tiles": 3, "rmse_m": 2.0, "relief_ratio": 0.5}]
    assert average(rows) == {"rmse_m": 1.75, "relief_ratio": 0.5, "tiles": 4}


def _scenes(values, tiles=None) -> list[dict]:
    tiles = tiles or [4] * len(values)
    return [{"tiles": t, "delta1": v} for v, t in zip(values, tiles)]


def test_difference_interval_pairs_scenes_and_weights_them_by_tiles():
    rng = np.random.default_rng(0)
    base, tiles = rng.uniform(0, 1, 12), list(range(1, 13))
    # A model ahead by the same amount on every scene: no spread, whichever scenes are drawn.
    found = difference_interval(_scenes(base + 0.05), _scenes(base), "delta1", seed=1)
    assert found == pytest.approx((0.05, 0.05, 0.05, 12))
    # The estimate is the difference of the tile-weighted averages the tables show.
    model = rng.uniform(0, 1, 12)
    diff, low, high, _ = difference_interval(_scenes(model, tiles), _scenes(base, tiles),
                                             "delta1", seed=1)
    shown = average(_scenes(model, tiles))["delta1"] - average(_scenes(base, tiles))["delta1"]
    assert diff == pytest.approx(shown) and low < diff < high


def test_difference_interval_has_the_width_of_the_mean_over_scenes():
    # Ten scenes, five ahead by 1 and five behind by 1: the mean's standard error is
    # 1 / sqrt(10), so the 95 % interval is about 0 ± 1.96 / sqrt(10) = ± 0.62.
    ahead = np.array([1.0, -1.0] * 5)
    diff, low, high, _ = difference_interval(_scenes(ahead), _scenes(np.zeros(10)), "delta1",
                                             seed=3)
    assert diff == 0.0
    assert low == pytest.approx(-0.62, abs=0.07) and high == pytest.approx(0.62, abs=0.07)
    # Forty scenes spread evenly (a mean that is drawn nearly continuously): 95 %, not 90 %
    # (which would be 0.84 of this width).
    spread = np.linspace(-1.0, 1.0, 40)
    _, low, high, _ = difference_interval(_scenes(spread), _scenes(np.zeros(40)), "delta1",
                                          seed=3)
    assert (high - low) / (2 * 1.96 * spread.std() / math.sqrt(40)) == pytest.approx(1.0, abs=0.07)


def test_scenes_of_one_group_are_drawn_together():
    # Twenty patches of ten stereo pairs; each pair's two patches err in opposite directions,
    # so each pair's mean difference is 0: drawn by pair, no spread; drawn by patch, a wide one.
    ahead = np.array([1.0, -1.0] * 10)
    pairs = [f"PAIR_{i // 2}" for i in range(20)]
    by_pair = difference_interval(_scenes(ahead), _scenes(np.zeros(20)), "delta1", 3, pairs)
    assert by_pair == pytest.approx((0.0, 0.0, 0.0, 10))  # ten pairs drawn
    _, low, high, _ = difference_interval(_scenes(ahead), _scenes(np.zeros(20)), "delta1", 3)
    assert low < -0.3 and high > 0.3
    # A patch left unscored leaves its pair's other one (ahead by 1) to stand for the pair,
    # the other nine pairs still cancel: a draw without that pair (a third do) is level.
    lost = ahead.copy()
    lost[1] = np.nan
    diff, low, high, drawn = difference_interval(_scenes(lost), _scenes(np.zeros(20)),
                                                 "delta1", 3, pairs)
    assert diff == pytest.approx(1 / 19) and low == 0.0 and 0.1 < high < 0.3 and drawn == 10
    # Twenty patches of five pairs are five draws: too few.
    few = [f"PAIR_{i // 4}" for i in range(20)]
    assert difference_interval(_scenes(ahead), _scenes(ahead), "delta1", 3, few) is None


def test_no_interval_from_fewer_than_ten_scenes_scored_by_both():
    values = np.linspace(0, 1, 10)
    assert difference_interval(_scenes(values), _scenes(values), "delta1", seed=0) is not None
    values[3] = np.nan  # a scene the model could not score leaves nine
    assert difference_interval(_scenes(values), _scenes(np.zeros(10)), "delta1", seed=0) is None
    # ... as does a scene the model scored on fewer tiles than the baseline: not a pair.
    values[3], tiles = 0.5, [4] * 10
    assert difference_interval(_scenes(values, [3, *tiles[1:]]), _scenes(values, tiles),
                               "delta1", seed=0) is None


def test_each_draw_weights_its_scenes_by_their_tiles():
    # One scene of 1 000 tiles ahead by 1, nine of one tile level: a draw holding the big scene
    # (two in three do) is ahead by about 1, one without it by 0.
    ahead, tiles = np.array([1.0] + [0.0] * 9), [1000] + [1] * 9
    diff, low, high, _ = difference_interval(_scenes(ahead, tiles),
                                             _scenes(np.zeros(10), tiles), "delta1", seed=2)
    assert diff == pytest.approx(1000 / 1009) and low == 0.0 and high > 0.99


def test_interval_table_marks_differences_whose_interval_leaves_out_zero():
    cells = {"rmse_m": (-0.6, -0.8, -0.4, 12), "mae_m": (-0.1, -0.3, 0.1, 12),
             "slope_err_deg": None, "delta1": (0.02, 0.01, 0.03, 11),
             "delta2": (0.0, -0.01, 0.01, 12), "delta3": (-0.02, -0.03, -0.01, 12)}
    table = interval_table({"sfs": cells}, "m", "12 scenes", 12)
    assert table.splitlines()[-1] == (
        "| sfs | **-0.6 [-0.8, -0.4]** | -0.1 [-0.3, +0.1] | – | "
        "**+0.02 [+0.01, +0.03]** (over 11) | +0 [-0.01, +0.01] | **-0.02 [-0.03, -0.01]** |")
    assert "over the 12 scenes" in table


def test_missing_model_file_is_one_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "no.onnx"), "--data", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_file_that_is_no_model_is_refused_before_test_data_is_made(tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"not an onnx file")
    data = tmp_path / "data"
    assert main(["--model", str(checkpoint), "--data", str(data)]) == 2
    assert f"{checkpoint} is not a model the engine can run" in capsys.readouterr().err
    assert not data.exists()


@pytest.mark.parametrize("second", ["other/m.onnx", "sfs=other/m.onnx"])
def test_two_models_under_one_name_are_refused(tmp_path, capsys, second):
    for folder in ("one", "other"):
        (tmp_path / folder).mkdir()
        write_test_model(tmp_path / folder / "m.onnx")
    second = second.replace("other/", f"{tmp_path}/other/")
    assert main(["--model", str(tmp_path / "one" / "m.onnx"), "--model", second,
                 "--data", str(tmp_path)]) == 2
    assert "is taken; name each model NAME=FILE" in capsys.readouterr().err


@pytest.mark.parametrize("given, name", [("{sweep}/m.onnx", "m"), ("run={sweep}/m.onnx", "run"),
                                         ("lr=0.001={sweep}/m.onnx", "lr=0.001"),
                                         ("cnn/v2={sweep}/m.onnx", "cnn/v2")])
def test_a_model_in_a_folder_named_with_an_equals_sign_is_found(tmp_path, given, name):
    from training.evaluate import _parse_models

    sweep = tmp_path / "lr=0.001"
    sweep.mkdir()
    write_test_model(sweep / "m.onnx")
    assert _parse_models([given.format(sweep=sweep)]) == {name: sweep / "m.onnx"}
    with pytest.raises(ValueError, match=f"the model file {sweep} is a folder"):
        _parse_models([str(sweep)])


def test_the_bar_wants_both_baselines_beaten_on_every_metric_of_every_set_with_truth():
    from training.evaluate import bar_checks

    base = {"rmse_m": 2.0, "mae_m": 1.5, "slope_err_deg": 10.0,
            "delta1": 0.2, "delta2": 0.4, "delta3": 0.6}
    sets = {"a": {"m": {**base, "rmse_m": 1.9, "delta1": 0.3},
                  "flat": {**base, "delta1": 0.0}, "sfs": {**base, "slope_err_deg": 12.0}},
            "tiles": {"m": {"reshade_r": 0.1}, "flat": {}, "sfs": {"reshade_r": 0.9}}}
    checks, failed = bar_checks({"sets": sets}, "m")
    # Set "a" only (no truth in "tiles"): RMSE and δ<1.25 beat both; slope error beats SFS but
    # ties flat; the rest tie both, and a tie is no win.
    assert checks == 6
    assert failed == ["a MAE (m) (1.5 against flat's 1.5 and sfs's 1.5)",
                      "a slope err (°) (10 against flat's 10)",
                      "a δ<1.25² (0.4 against flat's 0.4 and sfs's 0.4)",
                      "a δ<1.25³ (0.6 against flat's 0.6 and sfs's 0.6)"]
    del sets["a"]["m"]["mae_m"]  # a metric a model left unscored is not passed
    assert "a MAE (m) (nan against flat's 1.5 and sfs's 1.5)" in bar_checks({"sets": sets}, "m")[1]


def test_a_failed_check_says_whether_the_draw_of_scenes_alone_could_explain_it():
    from training.evaluate import bar_checks

    base = {"rmse_m": 2.0, "mae_m": 1.5, "slope_err_deg": 10.0,
            "delta1": 0.2, "delta2": 0.4, "delta3": 0.6}
    ours = {"rmse_m": 1.0, "mae_m": 1.0, "slope_err_deg": 5.0,
            "delta1": 0.3, "delta2": 0.39, "delta3": 0.7}
    sets = {name: {"m": ours, "other": ours, "flat": {**base, "delta2": 0.0}, "sfs": base}
            for name in ("big", "unpaired", "small", "pairs")}
    intervals = {"big": {"against": {"sfs": {"delta2": (-0.01, -0.03, 0.01, 48)},
                                     "flat": {"delta2": (0.39, 0.3, 0.5, 48)}}}}
    results = {"sets": sets, "intervals": intervals, "interval_model": "m",
               "scenes": {"big": 48, "unpaired": 12, "small": 3, "pairs": 4}}
    assert bar_checks(results, "m")[1] == [
        "big δ<1.25² (0.39 against sfs's 0.4; difference from sfs -0.01 [-0.03, +0.01], which "
        "holds 0)",
        "unpaired δ<1.25² (0.39 against sfs's 0.4; no paired interval against sfs)",
        "small δ<1.25² (0.39 against sfs's 0.4; 3 scene(s): too few for an interval)",
        "pairs δ<1.25² (0.39 against sfs's 0.4; 4 pair(s): too few for an interval)"]
    # The intervals are the first model's: another model's failed check says so.
    assert bar_checks(results, "other")[1][0] == \
        "big δ<1.25² (0.39 against sfs's 0.4; intervals are computed for m alone)"


def test_more_louth_suns_add_renders_of_the_same_crops_after_the_first_three(tmp_path):
    from training.evaluate import louth_scenes

    one = louth_scenes(tmp_path / "one", 7)
    if not one:
        pytest.skip(f"the shared Louth DTM is absent ({set_source('louth')})")
    two = louth_scenes(tmp_path / "two", 7, suns=2)
    assert len(one) == 3 and len(two) == 6
    for a, b in zip(one, two[:3]):  # --louth-suns 1 is the default set, image for image
        assert a.sun == b.sun and np.array_equal(a.image, b.image)
    for a, b in zip(two[:3], two[3:]):  # the same ground, another sun
        assert np.array_equal(a.truth, b.truth) and a.sun != b.sun
        assert not np.array_equal(a.image, b.image)


def test_no_louth_sun_is_refused(tmp_path, capsys):
    model = write_test_model(tmp_path / "m.onnx")
    assert main(["--model", str(model), "--data", str(tmp_path / "d"), "--louth-suns", "0"]) == 2
    assert "--louth-suns 0: give at least 1 sun per crop" in capsys.readouterr().err


def test_the_synthetic_set_follows_the_seed(tmp_path):
    def suns(seed: int) -> list[tuple[float, float]]:
        return [s.sun for s in synthetic_scenes(tmp_path, seed, count=2)]

    first = suns(7)
    assert suns(8) != first  # not the set cached for seed 7
    check_data_folder(tmp_path, 7, ["synthetic"])  # the set of seed 8 is its own to replace
    assert suns(7) == first  # made again, the same


@pytest.mark.slow
def test_evaluation_runs_models_through_the_engine_and_writes_a_report(tmp_path):
    from tests.conftest import SHARED_DATA
    from tests.models import write_test_model

    if not (SHARED_DATA / "gale_hirise").is_dir():
        pytest.skip("the shared Gale HiRISE pair is absent")
    model = write_test_model(tmp_path / "identity.onnx", "identity")
    out = tmp_path / "report"
    out.mkdir()
    for earlier in ("gale.png", "louth.png", "notes.txt"):  # an earlier report's, and the user's
        (out / earlier).write_text("earlier")
    assert main(["--model", f"ident={model}", "--data", str(tmp_path / "data"), "--out",
                 str(out), "--sets", "gale", "--no-speed", "--roughness-control", "4"]) == 0
    text = (out / "report.md").read_text()
    assert "| ident |" in text and "| flat |" in text and "| sfs |" in text
    assert "| ident+noise4px |" in text
    assert re.search(r"## The bar\n\n.*\n\n- `ident` passes \d+ of 6", text)
    assert (out / "gale.png").stat().st_size > 10_000
    # A set left out this time keeps no figure beside the new report; other files stay.
    assert not (out / "louth.png").exists() and (out / "notes.txt").read_text() == "earlier"
    assert sorted(p.name for p in out.iterdir()) == ["gale.png", "metrics.json", "notes.txt",
                                                     "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())["sets"]["gale"]
    # The identity model returns brightness as height: it must not score like the truth.
    assert metrics["ident"]["rmse_m"] > 0 and metrics["flat"]["delta1"] == 0.0
    # Noise of 4 pixels (2.5 m at 0.63 m), averaged 8 x 8 onto the 5 m grid: 0.3 m more error.
    noisy, clean = metrics["ident+noise4px"]["rmse_m"], metrics["ident"]["rmse_m"]
    assert math.sqrt(clean**2 + 0.31**2) - 0.02 < noisy < math.sqrt(clean**2 + 0.31**2) + 0.02


def test_every_set_skipped_names_its_folder_and_fails(tmp_path, capsys, monkeypatch):
    from training import evaluate

    monkeypatch.setattr(evaluate, "DATA_DIR", tmp_path / "shared")  # as on a fresh clone
    karoo = tmp_path / "shared" / "karoo_quickbird"  # and a copy that lost its DEM
    karoo.mkdir(parents=True)
    (karoo / "image_qb2_pan_8m.tif").write_bytes(b"not read")
    model = write_test_model(tmp_path / "m.onnx")  # never run: there is nothing to run it on
    code = main(["--model", str(model), "--data", str(tmp_path / "d"), "--out",
                 str(tmp_path / "eval"), "--sets", "gale,hirise,karoo"])
    assert code == 1
    err = capsys.readouterr().err
    assert (f"gale: skipped: its data in {tmp_path / 'shared' / 'gale_hirise'} is absent or "
            "incomplete") in err
    assert f"karoo: skipped: its data in {karoo} is absent or incomplete" in err
    assert f"hirise: skipped: its data in {tmp_path / 'shared' / 'hirise_tiles'}" in err
    assert "no test set could be evaluated" in err
    assert not (tmp_path / "eval").exists()


def _polar_pairs(folder, count: int = 2, per_shard: int = 1) -> list[dict]:
    """Test shards as ``training.tiles`` writes them: 512 px renders of synthetic DEMs in Mars
    north polar stereographic, where north lies far from image up, with their labels' sun."""
    from osgeo import osr

    from mars_dtm_plugin.core.raster import ground_pixel_size_m, north_in_image
    from training import synth
    from training.shards import Patch, ShardWriter

    srs = osr.SpatialReference()
    srs.SetGeogCS("Mars", "D_Mars", "Mars", 3396190.0, 0.0)
    srs.SetPS(90.0, 0.0, 1.0, 0.0, 0.0)
    made = []
    with ShardWriter(folder, "test", max_count=per_shard) as writer:
        for i in range(count):
            rng = np.random.default_rng(i)
            gt = [1.0e6, 1.0, 0.0, 256.0 + 2000.0 * i, 0.0, -1.0]  # ~73 N, at 90 E
            north = north_in_image(gt, srs, 512, 512)
            pixel = ground_pixel_size_m(gt, srs, 512, 512)
            dem = synth.synthetic_dem(rng, 512, pixel)
            sun_in_image = 200.0 + 40.0 * i
            image = synth.render(dem, pixel, sun_in_image, 30.0, rng)
            meta = {"pair_id": f"PAIR_{i}", "crs_wkt": srs.ExportToWkt(), "geotransform": gt,
                    "north_deg": north, "pixel_size_m": pixel, "sun_elevation_deg": 30.0,
                    "sun_azimuth_deg": (sun_in_image - north) % 360}
            writer.write(Patch(f"PAIR_{i}_x0_y0", image, dem - dem.mean(), meta))
            made.append({"image": image, "truth": dem - dem.mean(), "pixel": pixel,
                         "sun": (sun_in_image, 30.0), "gt": gt, "north": north})
    return made


def test_test_shards_become_georeferenced_scenes_with_the_sun_in_the_image_frame(tmp_path):
    from training.evaluate import pair_scenes, read_band

    made = _polar_pairs(tmp_path / "shards")
    assert 260 < made[0]["north"] < 280  # north points left: the label's sun is 270 off
    pairs = []
    for scene, patch in zip(pair_scenes(tmp_path / "shards", tmp_path), made):
        pairs.append(scene.notes["pair"])
        np.testing.assert_allclose(scene.sun, patch["sun"], atol=1e-9)
        np.testing.assert_array_equal(scene.truth, patch["truth"])
        assert scene.pixel_size_m == scene.truth_pixel_m == patch["pixel"]
        image, _, gt, wkt = read_band(scene.image_path)
        np.testing.assert_array_equal(image, patch["image"])
        assert gt == tuple(patch["gt"]) and "Polar_Stereographic" in wkt
    assert pairs == ["PAIR_0", "PAIR_1"]


def _score_pairs(tmp_path, *more: str) -> tuple[dict, Path]:
    """The identity model (then test models of the kinds ``more``, each named by its kind) and
    both baselines on the shards in ``tmp_path / "shards"``: the metrics and the report folder."""
    models = ["--model", f"ident={write_test_model(tmp_path / 'm.onnx', 'identity')}"]
    for kind in more:
        models += ["--model", f"{kind}={write_test_model(tmp_path / f'{kind}.onnx', kind)}"]
    out = tmp_path / "report"
    assert main([*models, "--data", str(tmp_path / "d"), "--out", str(out),
                 "--sets", "pairs", "--test-shards", str(tmp_path / "shards"),
                 "--no-speed"]) == 0
    return json.loads((out / "metrics.json").read_text()), out


def test_the_reference_control_scores_the_coarser_truth_alone_and_under_the_model(tmp_path):
    made = _polar_pairs(tmp_path / "shards")
    model = write_test_model(tmp_path / "m.onnx", "identity")
    out = tmp_path / "report"
    assert main(["--model", f"ident={model}", "--data", str(tmp_path / "d"), "--out", str(out),
                 "--sets", "pairs", "--test-shards", str(tmp_path / "shards"), "--no-speed",
                 "--reference-control", "8"]) == 0
    pairs = json.loads((out / "metrics.json").read_text())["sets"]["pairs"]

    def bilinear(cells: np.ndarray, size: int) -> np.ndarray:  # between the 8 px cells' centres
        at = (np.arange(size) + 0.5) / 8 - 0.5
        rows = np.array([np.interp(at, np.arange(len(col)), col) for col in cells.T]).T
        return np.array([np.interp(at, np.arange(len(row)), row) for row in rows])

    def tile_rmse(heights: np.ndarray, truth: np.ndarray) -> list[float]:
        tiles = [(slice(r, r + 256), slice(c, c + 256)) for r in (0, 256) for c in (0, 256)]
        return [np.sqrt(np.mean((heights[t] - heights[t].mean() - truth[t] + truth[t].mean())
                                ** 2)) for t in tiles]

    alone = [e for p in made for e in tile_rmse(
        bilinear(p["truth"].reshape(64, 8, 64, 8).mean(axis=(1, 3)), 512), p["truth"])]
    assert pairs["reference DTM 8x"]["rmse_m"] == pytest.approx(np.mean(alone), rel=1e-3)
    # Under the identity model's brightness, the reference's relief beyond some 20 px.
    assert pairs["ident+reference DTM 8x"]["rmse_m"] < 0.5 * pairs["ident"]["rmse_m"]
    assert pairs["reference DTM 8x"]["rmse_m"] < 0.5 * pairs["flat"]["rmse_m"]
    assert "`ident+reference DTM 8x` is `ident` given a reference DTM" in \
        (out / "report.md").read_text()


def test_the_reference_control_on_a_truth_coarser_than_the_image(tmp_path):
    # Karoo's case: truth cells of 3 image pixels, and truth the image leaves uncovered.
    factor, size = 3, (24, 36)  # truth cells
    y, x = (np.indices(size) + 0.5) * factor  # truth cells' centres, in image pixels
    truth = 100 + 0.5 * x - 0.25 * y
    valid = np.ones(size, bool)
    valid[0, 0] = False  # the image covers this cell only in part
    truth[0, 0] = 1e6  # what such a cell holds must not leak into the reference
    truth[0, 4:8] = np.nan  # nor a gap
    image = tmp_path / "image.tif"
    gt = (5000.0, 8.0, 0.0, 9000.0, 0.0, -8.0)
    write_geotiff(image, np.zeros((72, 108), np.float32), gt)
    scene = Scene("k", image, np.zeros((72, 108)), np.ones((72, 108), bool), 8.0, (65.0, 62.0),
                  truth=truth, truth_pixel_m=24.0, factor=factor, truth_valid=valid)
    cells = coarser_truth(scene, 4)  # 4 x 4 truth cells, 12 x 12 image pixels
    assert cells.shape == (6, 9)
    assert cells[0, 0] == pytest.approx(np.mean(truth[:4, :4][valid[:4, :4]]))
    assert cells[0, 1] == pytest.approx(np.mean(truth[1:4, 4:8]))
    written = gdal.Open(str(write_reference(scene, cells, 4, tmp_path)))
    assert written.GetGeoTransform() == pytest.approx((5000.0, 96.0, 0.0, 9000.0, 0.0, -96.0))
    assert written.GetProjection() == gdal.Open(str(image)).GetProjection()
    np.testing.assert_allclose(written.GetRasterBand(1).ReadAsArray(), cells, rtol=1e-6)
    # Alone, on the image's grid, bilinear between the cells' centres: between them, where
    # the cells are whole, the plane itself at each pixel's centre.
    alone = reference_alone(scene, cells, 4)
    assert alone.shape == (72, 108)
    yy, xx = np.indices((72, 108)) + 0.5
    inner = (slice(18, 66), slice(6, 102))
    np.testing.assert_allclose(alone[inner], (100 + 0.5 * xx - 0.25 * yy)[inner], atol=1e-4)
    cells[1, 1] = np.nan  # a reference cell with no truth under it at all: filled, not NaN
    assert np.isfinite(reference_alone(scene, cells, 4)).all()


def test_evaluation_scores_held_out_pairs_from_their_shards(tmp_path):
    made = _polar_pairs(tmp_path / "shards")
    metrics, out = _score_pairs(tmp_path)
    pairs = metrics["sets"]["pairs"]
    assert metrics["notes"]["pairs"] == (
        f"2 patch(es) of 512 x 512 px from 2 pair(s) in {tmp_path / 'shards'}, each scored on "
        "tiles of 256 px from its top-left corner")
    assert pairs["flat"]["tiles"] == pairs["ident"]["tiles"] == 8  # 4 tiles of 256 px each
    assert metrics["intervals"] == {}  # two scenes are too few to resample
    # The flat surface's RMSE is the truth's relief in each 256 px tile.
    relief = [np.std(p["truth"][r:r + 256, c:c + 256]) for p in made
              for r in (0, 256) for c in (0, 256)]
    assert pairs["flat"]["rmse_m"] == pytest.approx(np.mean(relief), rel=1e-4)
    # SFS is given the sun in the image frame, not the label's, which is 270 degrees off.
    def sfs_rmse(sun_of) -> float:
        return float(np.mean([row["rmse_m"] for p in made for row in scene_metrics(
            sfs_fourier(p["image"], p["pixel"], *sun_of(p)), p["truth"], p["pixel"], 256)]))

    assert pairs["sfs"]["rmse_m"] == pytest.approx(sfs_rmse(lambda p: p["sun"]), rel=1e-4)
    label_sun = sfs_rmse(lambda p: ((p["sun"][0] - p["north"]) % 360, 30.0))
    assert label_sun != pytest.approx(pairs["sfs"]["rmse_m"], rel=0.03)
    assert pairs["sfs"]["delta1"] > 0.05
    assert "## Held-out real image / DTM pairs (test shards)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_ten_scenes_give_the_report_intervals_of_the_lead_over_each_other_method(tmp_path):
    _polar_pairs(tmp_path / "shards", count=10, per_shard=5)
    metrics, out = _score_pairs(tmp_path, "blur")
    found, table = metrics["intervals"]["pairs"], metrics["sets"]["pairs"]
    assert (found["drawn"], found["count"]) == ("10 pairs", 10)
    assert list(found["against"]) == ["flat", "sfs", "blur"]
    assert found["against"]["blur"]["rmse_m"][0] != 0  # a model unlike the first
    for name, cells in found["against"].items():
        for key, (diff, low, high, drawn) in cells.items():
            assert diff == pytest.approx(table["ident"][key] - table[name][key])
            assert low <= diff <= high and drawn == 10
    # Brightness in units of pixel size is a surface nearly as flat as flat (RMSE: no telling
    # them apart) and, surely, far from SFS's shapes (every δ behind).
    low, high = found["against"]["flat"]["rmse_m"][1:3]
    assert low < 0 < high
    assert all(found["against"]["sfs"][key][2] < 0 for key in ("delta1", "delta2", "delta3"))
    report = (out / "report.md").read_text()
    assert "intervals over the 10 pairs" in report
    assert re.search(r"\n\| blur \| \**[+-][0-9.e+-]+ \[", report)  # its interval row


def test_each_pair_and_its_prediction_leave_the_disk_once_scored(tmp_path):
    """A test split has thousands of patches: none may pile up in the work folder."""
    from training.evaluate import pair_scenes, predict

    _polar_pairs(tmp_path / "shards")
    model = write_test_model(tmp_path / "m.onnx", "identity")
    work = tmp_path / "work"
    work.mkdir()
    for scene in pair_scenes(tmp_path / "shards", work):
        heights, _ = predict(model, scene, work)
        assert heights.shape == scene.truth.shape
        assert [p.name for p in work.iterdir()] == [scene.image_path.name]
    assert not list(work.iterdir())


@pytest.mark.parametrize(("cut", "code"), [(30_000, 2), (-100_000, 1)])
def test_a_shard_damaged_after_it_was_written_is_one_sentence(tmp_path, capsys, cut, code):
    """Cut in its first patch (refused before anything runs, as bad input) or in its last
    (found part-way: the run fails, and writes no report)."""
    _polar_pairs(tmp_path / "shards", per_shard=2)
    shard = sorted((tmp_path / "shards").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:cut])
    model = write_test_model(tmp_path / "m.onnx")
    out = tmp_path / "report"
    assert main(["--model", str(model), "--data", str(tmp_path / "d"), "--out", str(out),
                 "--sets", "pairs", "--test-shards", str(tmp_path / "shards"),
                 "--no-speed"]) == code
    assert f"error: the shard {shard} cannot be read" in capsys.readouterr().err
    assert not out.exists()  # not even an empty report folder


@pytest.mark.parametrize(("args", "message"), [
    (["--sets", "pairs"], "the pairs set needs --test-shards DIR"),
    (["--test-shards", "{tmp}/shards", "--sets", "gale"], "--sets leaves out pairs"),
    (["--test-shards", "{tmp}/none"], "test shard folder {tmp}/none does not exist"),
    (["--test-shards", "{tmp}"], "holds no patches in shards (*.tar)"),
    (["--test-shards", "{tmp}/pool"], "lack pair_id, geotransform, crs_wkt, north_deg: give "
                                      "shards that training.tiles cut"),
    (["--test-shards", "{tmp}/mixed"], "mixed/pool-000000.tar lack pair_id"),
    (["--test-shards", "{tmp}/tiny"], "are 12 x 12 px; the engine takes at least 16 px"),
])
def test_test_shards_that_cannot_be_read_are_one_sentence(tmp_path, capsys, args, message):
    """Refused before anything runs, even when only a later shard is wrong."""
    from training.data import SunRange, SyntheticPatches, write_pool
    from training.shards import Patch, ShardWriter

    write_pool([(SyntheticPatches(64, sun=SunRange(270.0, 0.0)), 1)], tmp_path / "pool", seed=0)
    _polar_pairs(tmp_path / "shards", count=1)
    shutil.copytree(tmp_path / "shards", tmp_path / "mixed")
    shutil.copy(tmp_path / "pool" / "pool-000000.tar", tmp_path / "mixed")
    good = next(read_shards(sorted((tmp_path / "shards").glob("*.tar"))))
    with ShardWriter(tmp_path / "tiny", "test") as writer:
        writer.write(Patch("tiny", good.image[:12, :12], good.height[:12, :12], good.meta))
    model = write_test_model(tmp_path / "m.onnx")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["--model", str(model), "--data", str(tmp_path / "d"), *args]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gale", "karoo"])
def test_the_real_truth_lies_on_its_image(tmp_path, name):
    """The truth as loaded shades like the image better than when flipped or moved 3 cells,
    so a truth read upside down or shifted against its image cannot score unnoticed."""
    scenes = TEST_SETS[name](tmp_path, 7)
    if not scenes:
        pytest.skip(f"the shared {name} pair is absent ({set_source(name)})")
    scene = scenes[0]
    image = block_mean(scene.image.astype(float), scene.factor)
    valid = np.ones(scene.truth.shape, bool) if scene.truth_valid is None else scene.truth_valid

    def fit(truth: np.ndarray) -> float:
        return estimate_sun(image, truth, scene.truth_pixel_m, valid & np.isfinite(truth))[2]

    aligned = fit(scene.truth)
    flipped = [fit(np.flipud(scene.truth)), fit(np.fliplr(scene.truth))]
    moved = [fit(np.roll(scene.truth, 3, axis)) for axis in (0, 1)]
    assert aligned > max(flipped) + 0.1
    assert aligned > max(moved)


def test_a_model_the_engine_refuses_on_a_scene_stops_in_one_sentence(tmp_path, capsys):
    _polar_pairs(tmp_path / "shards", count=1)
    model = write_test_model(tmp_path / "nan.onnx", "nan")
    out = tmp_path / "eval"
    code = main(["--model", str(model), "--data", str(tmp_path / "d"), "--out", str(out),
                 "--sets", "pairs", "--test-shards", str(tmp_path / "shards"), "--no-speed"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "error: nan.onnx on the scene " in err and "no report was written" in err
    assert not out.exists()


def test_files_in_the_data_folder_that_it_did_not_make_are_not_replaced(tmp_path, capsys):
    mine = tmp_path / "d" / "synthetic" / "synth-1-000000.tar"  # another tool's, or seed's
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"kept")
    model = write_test_model(tmp_path / "m.onnx")
    assert main(["--model", str(model), "--data", str(tmp_path / "d"), "--sets", "synthetic",
                 "--no-speed", "--out", str(tmp_path / "eval")]) == 2
    assert "holds files that no evaluation with --seed 7 made" in capsys.readouterr().err
    assert mine.read_bytes() == b"kept"


@pytest.mark.parametrize("flag", ["--data", "--out"])
def test_a_file_given_as_a_folder_is_one_sentence(tmp_path, capsys, flag):
    taken = tmp_path / "taken"
    taken.write_text("notes")
    model = write_test_model(tmp_path / "m.onnx")
    folders = {"--data": str(tmp_path / "d"), "--out": str(tmp_path / "eval"), flag: str(taken)}
    assert main(["--model", str(model), "--sets", "synthetic", "--no-speed",
                 *[a for k, v in folders.items() for a in (k, v)]]) == 2
    assert f"{flag} {taken} is a file; give a folder" in capsys.readouterr().err
    assert taken.read_text() == "notes"
