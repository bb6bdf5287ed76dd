"""The engine end to end on real GeoTIFFs and real onnxruntime sessions."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from mars_dtm_plugin.core import model as model_module
from mars_dtm_plugin.core.engine import MODEL_SHARE, TURN_BACK_SHARE, PredictOptions, predict_dtm
from mars_dtm_plugin.core.errors import Caution, DtmCancelled, DtmError
from mars_dtm_plugin.core.model import preload_cuda_libraries
from mars_dtm_plugin.core.writer import BLOCK, NODATA, DtmWriter
from tests.models import write_test_model
from tests.rasters import mars_eqc_wkt, plane_fit, ramp, read_raster, write_raster

GT = (1000.0, 2.0, 0.0, 5000.0, 0.0, -2.0)


def predict(tmp_path, image, kind="identity", name="dtm.tif", **options):
    contract = options.pop("contract", {})
    source = write_raster(tmp_path / "image.tif", image, GT, **options.pop("raster", {}))
    model = write_test_model(tmp_path / f"{kind}.onnx", kind, **contract)
    out = tmp_path / name
    report = predict_dtm(str(source), str(out), PredictOptions(model_path=str(model), **options))
    heights, ds = read_raster(out)
    return heights, ds, report


def test_tiles_with_large_offsets_stitch_without_steps(tmp_path):
    # 13 x 5 tiles of 64 px, each shifted by up to 500 gsd by the model.
    image = ramp(260, 700)
    heights, _, report = predict(tmp_path, image, "offsets")
    assert report.tiles >= 50
    coef, residual = plane_fit(heights)
    # Heights are pixel size x normalised brightness: 2 m / (max - min) per brightness unit.
    expected = 2.0 / (image.max() - image.min())
    assert coef[0] == pytest.approx(expected, rel=1e-4)
    assert coef[1] == pytest.approx(0.5 * expected, rel=1e-4)
    assert residual < 1e-3
    steps = np.abs(np.diff(heights, axis=1))
    assert steps.max() == pytest.approx(expected, abs=2e-4)  # float32 after +-500 offsets


def test_identity_model_gives_scaled_brightness_with_zero_mean(tmp_path):
    image = ramp(150, 170, a=3.0, b=-1.0) + 50
    heights, _, report = predict(tmp_path, image)
    assert "Model: identity.onnx, version test" in report.messages  # which model made it
    expected = 2.0 * (image - image.min()) / (image.max() - image.min())
    assert abs(heights.mean()) < 0.05 * np.ptp(heights)  # about the scene mean
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=2e-4)


def test_percentiles_and_standardisation_follow_the_contract(tmp_path):
    # x = ((v - p10) / (p90 - p10) - 0.5) / 0.25, and |x| puts the input's zero in sight.
    image = ramp(150, 170, a=3.0, b=-1.0) + 50
    heights, _, _ = predict(tmp_path, image, "abs", contract={
        "input_percentiles": [10.0, 90.0], "standardization_mean": [0.5],
        "standardization_std": [0.25]})
    low, high = np.percentile(image, [10.0, 90.0])
    expected = 2.0 * np.abs(((image - low) / (high - low) - 0.5) / 0.25)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)


@pytest.mark.parametrize("elevation", [30.0, 60.0])
def test_mean_ratio_scaling_gives_linearised_slopes_toward_the_sun(tmp_path, elevation):
    # Identity model: height = (I / mean(I) - 1) * tan(elevation) in pixel units, x 2 m.
    image = ramp(96, 100, a=1.0, b=0.5) + 20
    heights, _, report = predict(tmp_path, image, sun_elevation=elevation,
                                 contract={"input_scaling": "mean_ratio"})
    expected = 2.0 * (image / image.mean() - 1) * math.tan(math.radians(elevation))
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-4)
    assert report.sun_elevation == elevation


@pytest.mark.parametrize(("contrast", "cautioned"), [(0.02, True), (0.05, False)])
def test_little_contrast_is_pointed_out(tmp_path, contrast, cautioned):
    """Below 3 % (std / mean) the bundled model's own bias outweighs the relief it reads."""
    plane = ramp(64, 64)
    image = 1000.0 * (1.0 + contrast * (plane - plane.mean()) / plane.std())
    _, _, report = predict(tmp_path, image.astype(np.float32),
                           contract={"input_scaling": "mean_ratio"})
    said = [m for m in report.messages if "little shading" in m]
    assert said == ([Caution(f"The image's brightness varies by only {contrast:.1%} of its "
                             "mean (standard deviation): there is little shading to read relief "
                             "from, and the DTM will show more of the model's own bias than of "
                             "the ground")] if cautioned else [])


def test_mean_ratio_scaling_of_float_radiance_near_float32_limits(tmp_path):
    # The scene mean of values near 1e37 overflows in float32; the heights must not care.
    image = ramp(64, 64) + 20
    heights, _, _ = predict(tmp_path, image, contract={"input_scaling": "mean_ratio"})
    huge, _, _ = predict(tmp_path, image * np.float32(1e35), name="huge.tif",
                         contract={"input_scaling": "mean_ratio"})
    np.testing.assert_allclose(huge, heights, atol=1e-4)


def test_mean_ratio_scaling_assumes_45_degrees_and_says_so(tmp_path):
    image = ramp(64, 64) + 20
    heights, _, report = predict(tmp_path, image, contract={"input_scaling": "mean_ratio"})
    expected = 2.0 * (image / image.mean() - 1)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-4)
    assert any("45 degrees assumed" in line for line in report.messages)


def test_mean_ratio_scaling_refuses_a_band_without_positive_mean_or_a_bad_elevation(tmp_path):
    image = ramp(64, 64).astype(np.float32) - 1000
    with pytest.raises(DtmError, match="positive mean"):
        predict(tmp_path, image, contract={"input_scaling": "mean_ratio"})
    with pytest.raises(DtmError, match="above 0 and below 90"):
        predict(tmp_path, image + 2000, sun_elevation=95.0,
                contract={"input_scaling": "mean_ratio"})
    assert not (tmp_path / "dtm.tif").exists()
    # Refused also for a model that does not read the elevation: it is still reported.
    with pytest.raises(DtmError, match="above 0 and below 90"):
        predict(tmp_path, image + 2000, sun_elevation=999.0)
    assert not (tmp_path / "dtm.tif").exists()  # refused before anything is written


def test_mars_crs_without_epsg_and_geotransform_survive(tmp_path):
    _, ds, _ = predict(tmp_path, ramp(100, 120))
    assert ds.GetGeoTransform() == GT
    out_srs, in_srs = osr.SpatialReference(), osr.SpatialReference()
    out_srs.ImportFromWkt(ds.GetProjection())
    in_srs.ImportFromWkt(mars_eqc_wkt())
    assert out_srs.IsSame(in_srs)
    assert out_srs.GetAuthorityCode(None) is None
    assert out_srs.GetSemiMajor() == pytest.approx(3396190.0)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32
    assert band.GetNoDataValue() == NODATA
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert band.GetBlockSize() == [256, 256]


def test_a_crs_given_for_an_input_without_one_is_the_dtms(tmp_path):
    image = ramp(100, 120)
    heights, ds, _ = predict(tmp_path, image, raster={"wkt": ""}, crs_wkt=mars_eqc_wkt())
    out_srs, mars = osr.SpatialReference(), osr.SpatialReference()
    out_srs.ImportFromWkt(ds.GetProjection())
    mars.ImportFromWkt(mars_eqc_wkt())
    assert out_srs.IsSame(mars) and ds.GetGeoTransform() == GT
    expected = 2.0 * (image - image.min()) / (image.max() - image.min())  # 2 m pixels
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=2e-4)
    with pytest.raises(DtmError, match="not valid WKT"):
        predict(tmp_path, image, name="bad.tif", raster={"wkt": ""}, crs_wkt="PROJCS[oops")
    assert not (tmp_path / "bad.tif").exists()


def test_nodata_value_nan_and_alpha_stay_nodata(tmp_path):
    image = ramp(200, 260) + 10
    image[20:60, 30:90] = -5  # nodata value
    image[150:, 200:] = np.nan
    heights, _, _ = predict(tmp_path, image, "offsets", raster={"nodata": -5})
    invalid = np.zeros(image.shape, bool)
    invalid[20:60, 30:90] = True
    invalid[150:, 200:] = True
    assert np.all(heights[invalid] == NODATA)
    assert np.all(heights[~invalid] != NODATA)
    _, residual = plane_fit(heights, ~invalid)
    assert residual < 1e-3


@pytest.mark.parametrize("azimuth", [200.0, 333.0])
def test_a_turned_scene_has_heights_exactly_where_the_image_has_data(tmp_path, azimuth):
    # Turned to the sun and back, every valid pixel (the raster's edges and corners, and
    # those around a hole) gets a height, and no nodata pixel does.
    image = ramp(150, 190) + 10
    image[40:70, 60:100] = -5  # nodata value
    image[:3, 150:] = np.nan  # a notch in the edge
    heights, _, report = predict(tmp_path, image, "offsets", raster={"nodata": -5},
                                 sun_azimuth=azimuth,
                                 contract={"sun_mode": "rotate", "sun_azimuth": 270.0})
    assert f"scene rotated by {(270.0 - azimuth) % 360:.1f} degrees" in report.messages[4]
    invalid = np.zeros(image.shape, bool)
    invalid[40:70, 60:100] = True
    invalid[:3, 150:] = True
    np.testing.assert_array_equal(heights == NODATA, invalid)
    # Two bilinear resamplings keep a plane; within two pixels of nodata or the edge, a pixel
    # takes it from fewer neighbours, some fraction of a pixel off.
    inner = np.zeros(image.shape, bool)
    inner[2:-2, 2:-2] = True
    padded = np.pad(invalid, 2)
    inner &= ~np.any([padded[2 + dy : 2 + dy + 150, 2 + dx : 2 + dx + 190]
                      for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)
    (a, b, c), residual = plane_fit(heights, inner)
    assert residual < 0.01 * math.hypot(a, b)  # a hundredth of a pixel
    rows, cols = np.nonzero(~invalid)
    assert np.abs(heights[rows, cols] - (a * cols + b * rows + c)).max() < 0.5 * math.hypot(a, b)


def test_data_joined_by_a_thin_strip_stitches_into_one_surface(tmp_path):
    # Two patches of data joined only by row 23: the tiles right of the join share just that
    # row with their neighbours, and must still be tied to the rest, not float on their own.
    image = ramp(50, 141) + 100
    image[0:23, 13:129] = -1
    image[24:, 53:] = -1
    valid = image != -1
    heights, _, _ = predict(tmp_path, image, "offsets", raster={"nodata": -1})
    _, residual = plane_fit(heights, valid)
    assert residual < 1e-3


def test_data_joined_only_at_the_rasters_edge_stitches_into_one_surface(tmp_path):
    # The two blobs share data only in rows 0-1, the ends of their tiles' overlaps, which
    # are blended: those rows must tie the tiles too.
    image = ramp(300, 333) + 100
    valid = np.zeros(image.shape, bool)
    valid[0:2, :] = True
    valid[0:40, 0:30] = valid[0:40, 80:110] = True
    heights, _, _ = predict(tmp_path, np.where(valid, image, -1), "offsets",
                            raster={"nodata": -1})
    _, residual = plane_fit(heights, valid)
    assert residual < 1e-3


def test_tiles_always_overlap_so_that_they_can_be_stitched(tmp_path):
    # 176 = 56 + 64 + 56: without overlap the edge tiles and the middle one would just abut.
    image = ramp(176, 176) + 5
    heights, ds, _ = predict(tmp_path, image, "offsets", contract={"tiles_overlap": 0.0})
    assert ds.GetMetadataItem("MARSDTM_TILES").endswith("overlap 1 px")
    assert plane_fit(heights)[1] < 1e-3
    with pytest.raises(DtmError, match=r"from 1 to 31 pixels for this model "
                                       r"\(.*cannot be stitched\), not 0\."):
        predict(tmp_path, image, "offsets", name="none.tif", overlap_px=0)
    assert not (tmp_path / "none.tif").exists()


def test_nodata_ranges_given_are_nodata_on_the_stored_values(tmp_path):
    image = ramp(100, 120) + 10  # 10 to 179.5
    image[40:60, 50:70] = 250  # a saturated patch, and a band of values read as nodata
    heights, _, report = predict(tmp_path, image, nodata=((250.0, 250.0), (20.0, 30.0)))
    invalid = (image == 250) | ((image >= 20) & (image <= 30))
    assert "Input: 120 x 100 px, band 1, 250 as nodata, 20 to 30 as nodata" in report.messages
    assert (heights[invalid] == NODATA).all() and (heights[~invalid] != NODATA).all()
    assert plane_fit(heights, ~invalid)[1] < 1e-3


def test_a_nodata_value_given_as_gdalinfo_prints_it_masks_the_float32_fill(tmp_path):
    image = ramp(100, 120) + 10
    fill = np.float32(-3.4028226550889045e38)  # HiRISE's MISSING_CONSTANT, a number not NaN
    image[:, :30] = fill
    # gdalinfo prints it as -3.4028227e+38, which is not that float32 until rounded to one.
    heights, _, _ = predict(tmp_path, image, nodata=((-3.4028227e38, -3.4028227e38),))
    assert (heights[:, :30] == NODATA).all() and (heights[:, 30:] != NODATA).all()


def test_nan_given_as_nodata_masks_the_nans_only(tmp_path):
    """As a batch passes on a file's "NoData Value=nan": NaN compares false with everything."""
    image = ramp(100, 120).astype(np.float32) + 10
    image[:, :30] = np.nan
    heights, _, _ = predict(tmp_path, image, nodata=((math.nan, math.nan),))
    assert (heights[:, :30] == NODATA).all() and (heights[:, 30:] != NODATA).all()


def test_the_files_nodata_value_switched_off_is_a_value_like_any_other(tmp_path):
    image = ramp(80, 90).astype(np.float32) + 10
    image[20:30] = -1  # the file's nodata value
    heights, _, _ = predict(tmp_path, image, raster={"nodata": -1})
    assert (heights[20:30] == NODATA).all()
    heights, _, report = predict(tmp_path, image, raster={"nodata": -1}, file_nodata=False)
    assert "Input: 90 x 80 px, band 1, the file's nodata value not used" in report.messages
    assert (heights != NODATA).all()
    assert np.ptp(heights[20:30]) < np.ptp(heights[40:50])  # dark flat rows, as the image has


def test_a_collar_is_pointed_out_when_the_files_nodata_value_is_not_used(tmp_path):
    image = np.pad(ramp(60, 70) + 10, 6)  # a collar of zeros; the file marks -1, not 0
    _, _, report = predict(tmp_path, image, raster={"nodata": -1})
    assert not any("black collar" in str(m) for m in report.messages)  # the file marks nodata
    _, _, report = predict(tmp_path, image, raster={"nodata": -1}, file_nodata=False)
    assert any("black collar" in str(m) for m in report.messages)


def test_a_nodata_band_wider_than_a_strip_stays_nodata(tmp_path):
    # Rows 300-999 are nodata: whole output strips of 256 rows meet no predicted tile.
    image = ramp(1200, 64).astype(np.float32) + 10
    image[300:1000] = -1
    heights, ds, _ = predict(tmp_path, image, raster={"nodata": -1})
    assert ds.GetRasterBand(1).GetNoDataValue() == NODATA
    assert (heights[300:1000] == NODATA).all()
    assert (heights[:300] != NODATA).all() and (heights[1000:] != NODATA).all()


def test_rgba_uses_luminance_and_alpha_mask(tmp_path):
    red, green, blue = ramp(80, 90, 1, 0), ramp(80, 90, 0, 1), np.full((80, 90), 7, np.float32)
    alpha = np.full((80, 90), 255, np.uint8)
    alpha[:10] = 0
    bands = np.stack([red, green, blue, alpha]).astype(np.uint8)
    colour = [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand]
    heights, _, report = predict(tmp_path, bands, raster={"colour": colour})
    assert "Input: 90 x 80 px, luminance of the red, green and blue bands" in report.messages
    assert np.all(heights[:10] == NODATA)
    coef, residual = plane_fit(heights[10:])
    assert coef[1] / coef[0] == pytest.approx(0.587 / 0.299, rel=1e-3)
    assert residual < 1e-3


@pytest.mark.parametrize("dtype, factor", [("uint16", 256.0), ("float32", 0.01)])
def test_bit_depth_does_not_change_heights(tmp_path, dtype, factor):
    image = ramp(90, 100).astype(np.uint8)
    reference, _, report = predict(tmp_path, image, name="a.tif")
    assert "Input: 100 x 90 px, band 1" in report.messages
    scaled = (image.astype(np.float64) * factor).astype(dtype)
    heights, _, _ = predict(tmp_path, scaled, name="b.tif")
    np.testing.assert_allclose(heights, reference, atol=1e-4)


def test_raster_smaller_than_a_tile(tmp_path):
    image = ramp(20, 30) + 1
    heights, _, report = predict(tmp_path, image)
    assert heights.shape == (20, 30) and report.tiles == 1
    _, residual = plane_fit(heights)
    assert residual < 1e-4


@pytest.mark.parametrize("azimuth, coarse_pass", [
    (0.0, None), (90.0, None), (135.0, None), (200.0, None), (333.0, None),
    # A coarse pass turns its tiles alike, and its heights (in units of its blocks) slope as
    # steeply: the long wavelengths it gives are the same plane.
    (135.0, {"factor": 2, "sigma_px": 16.0}), (200.0, {"factor": 3, "sigma_px": 24.0}),
])
def test_rotation_puts_the_sun_where_the_model_expects_it(tmp_path, azimuth, coarse_pass):
    # The ramp model's heights rise to the right of its own frame, i.e. away from its canonical
    # sun at 270 degrees; back in the scene they must rise away from the scene's sun.
    heights, _, _ = predict(tmp_path, ramp(300, 330), "ramp", sun_azimuth=azimuth,
                            contract={"sun_mode": "rotate", "sun_azimuth": 270.0,
                                      "coarse_pass": coarse_pass})
    coef, residual = plane_fit(heights)
    east, north = coef[0], -coef[1]  # rows run south
    bearing = math.degrees(math.atan2(east, north)) % 360
    assert bearing == pytest.approx((azimuth + 180) % 360, abs=0.5)
    # One pixel size of height per pixel: a 45 degree plane, whatever the rotation.
    assert math.hypot(east, north) == pytest.approx(2.0, rel=0.02)
    assert residual < 0.05 * np.ptp(heights)


def test_a_grid_turned_against_the_sun_is_not_rotated_a_full_turn(tmp_path):
    # Turned 30 degrees, with the sun 30 degrees off the model's: no rotation is needed, but
    # north comes out 1e-13 degrees off, which gave "rotated by 360.0 degrees".
    turn = math.radians(30)
    gt = (8144343.4, 2 * math.cos(turn), 2 * math.sin(turn), -272663.6, 2 * math.sin(turn),
          -2 * math.cos(turn))
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), gt)
    model = write_test_model(tmp_path / "ramp.onnx", "ramp", sun_mode="rotate", sun_azimuth=270.0)
    report = predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                         PredictOptions(model_path=str(model), sun_azimuth=240.0))
    assert "scene rotated by 0.0 degrees" in report.messages[4]


def test_a_sun_a_hair_off_the_models_turns_the_scene_exactly(tmp_path):
    # A north-up UTM scene near its central meridian has north a thousandth of a degree off
    # grid up: resampling for it blurred every pixel (samples halfway between pixels).
    rng = np.random.default_rng(3)
    image = ramp(150, 170) + rng.normal(0, 5, (150, 170)).astype(np.float32)  # texture
    contract = {"sun_mode": "rotate", "sun_azimuth": 270.0}
    exact, _, _ = predict(tmp_path, image, sun_azimuth=270.0, contract=contract)
    hair, _, report = predict(tmp_path, image, name="hair.tif", sun_azimuth=270.3,
                              contract=contract)
    assert "Tiles: 16 of 64 px, scene rotated by 0.0 degrees" in report.messages
    np.testing.assert_array_equal(hair, exact)


@pytest.mark.parametrize("width, height", [(101, 101), (100, 101), (101, 100), (100, 100)])
def test_a_small_turn_samples_near_pixel_centres(width, height):
    from mars_dtm_plugin.core.turn import Turned

    class Impulse:  # the raster's centre pixel lit (or the four of an even side's centre)
        def __init__(self) -> None:
            self.width, self.height = width, height
            self.image = np.zeros((height, width), np.float32)
            self.image[(height - 1) // 2, (width - 1) // 2] = 1.0

        def read(self, x0, y0, w, h):
            values = np.pad(self.image, 200)[y0 + 200 : y0 + 200 + h, x0 + 200 : x0 + 200 + w]
            return values, np.ones_like(values, bool)

    turned = Turned(Impulse(), 0.7)  # beyond the snap: resampled
    values, _ = turned.read(0, 0, turned.width, turned.height)
    assert values.max() > 0.95  # not spread over four pixels


@pytest.mark.parametrize("flip", ["south-up", "east-left"])
def test_a_mirrored_grid_keeps_the_sun_where_it_is_on_the_ground(tmp_path, flip):
    # Rows running north (or columns running west) turn clockwise on the ground into
    # anticlockwise in the image; the heights must still rise away from the sun on the ground.
    rows, cols, azimuth = 300, 330, 135.0
    gt = ((1000.0, 2.0, 0.0, 5000.0 - 2.0 * rows, 0.0, 2.0) if flip == "south-up"
          else (1000.0 + 2.0 * cols, -2.0, 0.0, 5000.0, 0.0, -2.0))
    source = write_raster(tmp_path / "image.tif", ramp(rows, cols), gt)
    model = write_test_model(tmp_path / "ramp.onnx", "ramp", sun_mode="rotate", sun_azimuth=270.0)
    predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                PredictOptions(model_path=str(model), sun_azimuth=azimuth))
    heights, ds = read_raster(tmp_path / "dtm.tif")
    assert ds.GetGeoTransform() == pytest.approx(gt)
    coef, _ = plane_fit(heights)
    east = coef[0] * np.sign(gt[1])  # height per metre of map x and y
    north = coef[1] * np.sign(gt[5])
    bearing = math.degrees(math.atan2(east, north)) % 360
    assert bearing == pytest.approx((azimuth + 180) % 360, abs=0.5)


def test_sun_from_label_is_used_when_not_given(tmp_path):
    (tmp_path / "image.LBL").write_text(
        'PDS_VERSION_ID = PDS3\nGROUP = VIEWING_PARAMETERS\n  INCIDENCE_ANGLE = 60.0 <DEG>\n'
        "  SUB_SOLAR_AZIMUTH = 180.0 <DEG>\n  NORTH_AZIMUTH = 270.0 <DEG>\n"
        "END_GROUP = VIEWING_PARAMETERS\nEND\n")
    _, dataset, report = predict(tmp_path, ramp(80, 80), "ramp",
                                 contract={"sun_mode": "rotate", "sun_azimuth": 270.0,
                                           "input_scaling": "mean_ratio"})
    assert report.sun_source == "label"
    assert report.sun_azimuth == pytest.approx(270.0)
    assert report.sun_elevation == pytest.approx(30.0)
    assert "Sun elevation: 30.0 degrees (label)" in report.messages
    # What the DTM was made with stays in its file.
    assert dataset.GetMetadata() == {
        "AREA_OR_POINT": "Area", "MARSDTM_MODEL": "ramp.onnx, version test",
        "MARSDTM_SUN_AZIMUTH": "270.0 (label)", "MARSDTM_SUN_ELEVATION": "30.0 (label)",
        "MARSDTM_PIXEL_SIZE_M": "2", "MARSDTM_TILES": "64 px, overlap 16 px",
        "MARSDTM_COARSE_PASS": "none", "MARSDTM_REFERENCE": "none",
        "MARSDTM_HEIGHTS": "metres, relative: the scene's mean height is about 0"}


def test_sun_from_geotiff_metadata(tmp_path):
    _, _, report = predict(tmp_path, ramp(80, 80), "ramp",
                           raster={"metadata": {"SUN_AZIMUTH": "123.5", "SUN_ELEVATION": "30"}},
                           contract={"sun_mode": "rotate", "sun_azimuth": 270.0})
    assert (report.sun_source, report.sun_azimuth) == ("metadata", 123.5)


def test_cancelling_leaves_no_file(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx", "offsets")
    calls = []

    def cancel_on_third_call():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(DtmCancelled):
        predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                    PredictOptions(model_path=str(model), batch_size=2),
                    is_cancelled=cancel_on_third_call)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "m.onnx"]


def test_cancelling_during_the_coarse_pass_leaves_no_file(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx", coarse_pass={"factor": 2, "sigma_px": 16.0})
    seen: list[float] = []

    def cancel_in_the_coarse_pass() -> bool:
        # The first pass's share ends at MODEL_SHARE * 4 / 5 with 2 x 2 blocks.
        return bool(seen) and seen[-1] > MODEL_SHARE * 0.8 + 1e-9

    with pytest.raises(DtmCancelled):
        predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                    PredictOptions(model_path=str(model), batch_size=1),
                    progress=seen.append, is_cancelled=cancel_in_the_coarse_pass)
    assert MODEL_SHARE * 0.8 < seen[-1] < MODEL_SHARE  # stopped within the coarse pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "m.onnx"]


def test_cancelling_while_writing_leaves_no_file(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(700, 300), GT)
    model = write_test_model(tmp_path / "m.onnx")
    progress = []
    with pytest.raises(DtmCancelled):
        predict_dtm(str(source), str(tmp_path / "dtm.tif"), PredictOptions(model_path=str(model)),
                    progress=progress.append,
                    is_cancelled=lambda: bool(progress) and progress[-1] > MODEL_SHARE)
    assert progress[-1] > MODEL_SHARE  # it was writing the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "m.onnx"]


def test_cancelling_a_turned_scene_after_its_model_pass_leaves_no_file(tmp_path):
    # Between the model pass and the output, the turned scene's heights are parked and
    # turned back: a cancel there must leave nothing either.
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx", "offsets", sun_mode="rotate",
                             sun_azimuth=270.0)
    seen: list[float] = []
    with pytest.raises(DtmCancelled):
        predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                    PredictOptions(model_path=str(model), sun_azimuth=200.0),
                    progress=seen.append,
                    is_cancelled=lambda: bool(seen) and seen[-1] >= MODEL_SHARE - 1e-9)
    assert seen[-1] == pytest.approx(MODEL_SHARE)  # the model pass was over, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "m.onnx"]


def test_a_model_that_needs_no_sun_does_not_read_it(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT,
                          metadata={"SUN_ELEVATION": "unknown", "SUN_AZIMUTH": "west"})
    model = write_test_model(tmp_path / "m.onnx")  # no sun: neither rotation nor mean_ratio
    report = predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                         PredictOptions(model_path=str(model)))
    assert (report.sun_azimuth, report.sun_elevation) == (None, None)
    with pytest.raises(DtmError, match="is not a number"):  # a model that uses it
        predict_dtm(str(source), str(tmp_path / "dtm2.tif"), PredictOptions(
            model_path=str(write_test_model(tmp_path / "r.onnx", input_scaling="mean_ratio")),
            sun_azimuth=270))


def test_a_sun_azimuth_from_metadata_is_read_round_the_circle(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT,
                          metadata={"SUN_AZIMUTH": "-90", "SUN_ELEVATION": "30"})
    model = write_test_model(tmp_path / "m.onnx", sun_mode="rotate", sun_azimuth=270.0)
    report = predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                         PredictOptions(model_path=str(model)))
    assert (report.sun_azimuth, report.sun_source) == (270, "metadata")
    assert gdal.Open(str(tmp_path / "dtm.tif")).GetMetadataItem("MARSDTM_SUN_AZIMUTH") == \
        "270.0 (metadata)"


def test_a_bad_sun_angle_the_user_gave_instead_does_not_stop_the_run(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT,
                          metadata={"SUN_AZIMUTH": "west", "SUN_ELEVATION": "30"})
    model = write_test_model(tmp_path / "m.onnx", input_scaling="mean_ratio",
                             sun_mode="rotate", sun_azimuth=270.0)
    report = predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                         PredictOptions(model_path=str(model), sun_azimuth=270))
    assert (report.sun_azimuth, report.sun_source, report.sun_elevation) == (270, "user", 30)
    with pytest.raises(DtmError, match="SUN_AZIMUTH is not a number"):  # when it is needed
        predict_dtm(str(source), str(tmp_path / "dtm2.tif"), PredictOptions(
            model_path=str(model), sun_elevation=30))


def test_rerun_drops_statistics_and_overviews_cached_for_the_old_output(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT)
    model = write_test_model(tmp_path / "m.onnx")
    out = tmp_path / "dtm.tif"
    predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
    dataset = gdal.Open(str(out))  # read-only: overviews go to an external .ovr
    dataset.GetRasterBand(1).ComputeStatistics(False)  # as QGIS does
    dataset.BuildOverviews("AVERAGE", [2])  # as QGIS's pyramids dialog does
    dataset = None  # closing writes the .aux.xml
    assert (tmp_path / "dtm.tif.aux.xml").exists() and (tmp_path / "dtm.tif.ovr").exists()
    predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtm.tif", "image.tif", "m.onnx"]
    assert gdal.Open(str(out)).GetRasterBand(1).GetOverviewCount() == 0


@pytest.mark.parametrize("placed", [False, True])
def test_a_world_file_beside_the_output_goes_where_it_would_place_a_dtm_that_has_no_grid(
        tmp_path, placed):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT if placed else None,
                          wkt=None if placed else "")
    model = write_test_model(tmp_path / "m.onnx")
    out = tmp_path / "dtm.tif"
    world = tmp_path / "dtm.tfw"  # left by an earlier output, or by hand
    world.write_text("2\n0\n0\n-2\n1000\n2000\n")
    predict_dtm(str(source), str(out), PredictOptions(model_path=str(model), pixel_size=2.0))
    assert world.exists() is placed  # a grid of its own comes before a world file
    assert gdal.Open(str(out)).GetGeoTransform() == (GT if placed else (0, 1, 0, 0, 0, 1))



@pytest.mark.parametrize("beside, worlds, kept", [
    (["dtm.prj", "dtm.v2.tif", "dtm.v2.tfw"], ["dtm.tfw"], []),  # none of them holds dtm.tfw
    (["dtm.tiff"], ["dtm.tfw"], ["dtm.tfw"]),  # a .tfw beside dtm.tiff may be its
    (["dtm.png"], ["dtm.tfw", "dtm.wld"], ["dtm.wld"]),  # a .wld beside dtm.png may be its
])
def test_a_world_file_that_may_be_another_file_s_stays(tmp_path, beside, worlds, kept):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), None, wkt="")
    model = write_test_model(tmp_path / "m.onnx")
    for name in [*beside, *worlds]:
        (tmp_path / name).write_text("2\n0\n0\n-2\n1000\n2000\n")
    predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                PredictOptions(model_path=str(model), pixel_size=2.0))
    names = {p.name for p in tmp_path.iterdir()}
    assert set(beside) <= names and names - set(beside) == {"image.tif", "m.onnx", "dtm.tif",
                                                            *kept}


def test_the_sidecars_of_a_linked_output_go_from_beside_the_link_too(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), None, wkt="")
    target, link = tmp_path / "store" / "dtm.tif", tmp_path / "dtm.tif"
    target.parent.mkdir()
    target.write_bytes(b"an earlier DTM")
    link.symlink_to(target)
    for sidecar in ("dtm.tif.aux.xml", "dtm.tfw"):  # what GDAL reads when it opens the link
        (tmp_path / sidecar).write_text("stale")
    predict_dtm(str(source), str(link), PredictOptions(
        model_path=str(write_test_model(tmp_path / "m.onnx")), pixel_size=2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtm.tif", "image.tif", "m.onnx",
                                                          "store"]
    assert gdal.Open(str(link)).GetGeoTransform() == (0, 1, 0, 0, 0, 1)


def test_an_output_named_up_to_the_file_system_s_limit_is_written(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT)
    out = tmp_path / ("é" * 100 + "a" * 46 + ".tif")  # 250 bytes: the partial file's is less
    predict_dtm(str(source), str(out),
                PredictOptions(model_path=str(write_test_model(tmp_path / "m.onnx"))))
    assert gdal.Open(str(out)).RasterXSize == 100


def test_existing_output_is_replaced_only_on_success(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT)
    model = write_test_model(tmp_path / "m.onnx")
    out = tmp_path / "dtm.tif"
    out.write_bytes(b"previous result")
    with pytest.raises(DtmCancelled):
        predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)),
                    is_cancelled=lambda: True)
    assert out.read_bytes() == b"previous result"
    predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
    assert gdal.Open(str(out)).RasterXSize == 100


def test_an_output_that_is_a_link_is_written_through(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(100, 100), GT)
    model = write_test_model(tmp_path / "m.onnx")
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "dtm.tif"
    target.write_bytes(b"previous result")
    link = tmp_path / "latest.tif"
    link.symlink_to(os.path.join("results", "dtm.tif"))  # relative, as links often are
    report = predict_dtm(str(source), str(link), PredictOptions(model_path=str(model)))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert report.output_path == str(target.resolve())
    assert gdal.Open(str(target)).RasterXSize == 100
    assert sorted(p.name for p in target.parent.iterdir()) == ["dtm.tif"]  # no partial left


def test_progress_reaches_one_and_increases(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx")
    seen = []
    predict_dtm(str(source), str(tmp_path / "o.tif"), PredictOptions(model_path=str(model)),
                progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_progress_moves_while_a_turned_scene_is_turned_back(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(600, 600), GT)
    model = write_test_model(tmp_path / "m.onnx", sun_mode="rotate")
    seen = []
    predict_dtm(str(source), str(tmp_path / "o.tif"),
                PredictOptions(model_path=str(model), sun_azimuth=315.0), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    # The turned grid is some 850 rows: four strips parked, each a step of the bar.
    parking = [f for f in seen if MODEL_SHARE + 1e-9 < f <= MODEL_SHARE + TURN_BACK_SHARE + 1e-9]
    assert len(parking) == 4 and parking[-1] == pytest.approx(MODEL_SHARE + TURN_BACK_SHARE)


def test_the_log_says_what_the_run_does_before_it_runs(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx")
    events: list[str] = []
    report = predict_dtm(str(source), str(tmp_path / "o.tif"),
                         PredictOptions(model_path=str(model)),
                         progress=lambda _: events.append("progress"), log=events.append)
    first_progress = events.index("progress")
    assert any(e.startswith("Execution provider") for e in events[:first_progress])
    assert any(e.startswith("Tiles:") for e in events[:first_progress])
    assert events[-1].startswith("Output:") and events[-2].startswith("Heights:")
    logged = [e for e in events if e != "progress"]
    assert logged == report.messages  # each line once


def test_report_times_each_stage(tmp_path):
    _, _, report = predict(tmp_path, ramp(300, 300))
    assert list(report.timings) == ["model pass", "offsets", "blend and write"]
    assert report.timings["model pass"] > 0 and report.timings["blend and write"] > 0
    assert 0.5 * report.seconds < sum(report.timings.values()) <= report.seconds


def test_report_names_the_provider(tmp_path):
    _, _, report = predict(tmp_path, ramp(50, 50), provider="auto")
    assert report.provider == "CPUExecutionProvider"
    assert "CUDA" in report.provider_note  # says why the GPU is not used
    _, _, report = predict(tmp_path, ramp(50, 50), name="cpu.tif", provider="cpu")
    assert report.provider_note == ""


class _GpuOnnxruntime:
    """What the CUDA preload sees of a GPU build of onnxruntime; a GPU cannot exist here."""

    def __init__(self, preload_fails: bool = False) -> None:
        self.preloads, self.preload_fails = 0, preload_fails

    def preload_dlls(self) -> None:
        self.preloads += 1
        time.sleep(0.05)  # long enough for another thread to come in
        print("Failed to load libcublasLt.so.13: cannot open shared object file")
        if self.preload_fails:
            raise RuntimeError("Invalid parameter of directory")


@pytest.mark.parametrize("preload_fails", [False, True])
def test_cuda_libraries_from_pip_are_preloaded_once_and_quietly(preload_fails, capsys):
    ort, stdout = _GpuOnnxruntime(preload_fails), sys.stdout
    with ThreadPoolExecutor(2) as pool:  # as two layers' runs may start at once
        reports = list(pool.map(lambda _: preload_cuda_libraries(ort), range(2)))
    assert reports == ["Failed to load libcublasLt.so.13: cannot open shared object file"] * 2
    assert ort.preloads == 1 and sys.stdout is stdout
    assert capsys.readouterr().out == ""


def test_an_onnxruntime_without_the_preload_is_left_as_it_is():
    assert preload_cuda_libraries(object()) == ""


class _GpuBuildWithoutItsLibraries(_GpuOnnxruntime):
    """A GPU build of onnxruntime whose CUDA provider cannot start: its sessions run on the
    CPU, as onnxruntime's own fall back does."""

    def __init__(self) -> None:
        super().__init__()
        import onnxruntime

        self.real, self.SessionOptions = onnxruntime, onnxruntime.SessionOptions

    def get_available_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def InferenceSession(self, path, options, providers):  # onnxruntime's name
        assert providers[0] == "CUDAExecutionProvider"
        return self.real.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def test_a_gpu_that_cannot_start_is_explained_by_the_library_it_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "_onnxruntime", lambda: _GpuBuildWithoutItsLibraries())
    path = write_test_model(tmp_path / "m.onnx")
    lacking = "Failed to load libcublasLt.so.13: cannot open shared object file"
    generator = model_module.Generator(path, "auto")
    assert generator.provider == "CPUExecutionProvider"
    assert generator.provider_note == (
        f"CUDAExecutionProvider could not start (no usable GPU or CUDA libraries; {lacking}); "
        "running on CPUExecutionProvider.")
    with pytest.raises(DtmError, match=f"CUDA was requested, but it could not start .*{lacking}"):
        model_module.Generator(path, "cuda")


def test_overviews_average_the_full_resolution_heights(tmp_path):
    image = ramp(600, 530) + 1
    image[100:103, 51:300] = 0  # nodata rows with odd edges
    heights, ds, _ = predict(tmp_path, image, raster={"nodata": 0})
    band = ds.GetRasterBand(1)
    assert band.GetOverviewCount() == 1
    overview = band.GetOverview(0).ReadAsArray()
    assert overview.shape == (300, 265)
    full = np.where(heights == NODATA, np.nan, heights)
    quads = full.reshape(300, 2, 265, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata quads: NaN expected
        expected = np.nanmean(quads, axis=(1, 3))
    np.testing.assert_allclose(np.where(overview == NODATA, np.nan, overview), expected,
                               atol=1e-5)
    assert np.all(overview[50, 26:150] == NODATA)  # rows 100 and 101 were all nodata there


def test_overviews_of_a_very_tall_raster_hold_whole_rows(tmp_path):
    rows, cols = 140_000, 8  # so tall that a factor above the block size would split rows
    writer = DtmWriter(str(tmp_path / "tall.tif"), cols, rows, GT, "")
    for y0 in range(0, rows, BLOCK):
        strip = np.arange(y0, min(y0 + BLOCK, rows), dtype=np.float32)  # each row's index
        writer.write_rows(y0, np.repeat(strip[:, None], cols, axis=1))
    writer.finish((0.0, rows - 1.0, rows / 2, 1.0))
    dataset = gdal.Open(str(tmp_path / "tall.tif"))
    band = dataset.GetRasterBand(1)
    for i in range(band.GetOverviewCount()):
        factor = 2 ** (i + 1)
        whole = rows // factor  # the last row may average a ragged remainder
        expected = np.arange(whole) * factor + (factor - 1) / 2
        values = band.GetOverview(i).ReadAsArray()[:whole, 0]
        np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert 2 ** band.GetOverviewCount() == BLOCK


def test_two_runs_to_one_output_at_once_do_not_mix(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    reference, _, _ = predict(tmp_path, ramp(300, 280), name="reference.tif")
    source, model = tmp_path / "image.tif", tmp_path / "identity.onnx"
    out = tmp_path / "dtm.tif"
    with ThreadPoolExecutor(2) as pool:  # as a QGIS batch may, in one process
        runs = [pool.submit(predict_dtm, str(source), str(out),
                            PredictOptions(model_path=str(model))) for _ in range(2)]
        for run in runs:
            run.result()
    np.testing.assert_array_equal(read_raster(out)[0], reference)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.skipif(os.name != "posix", reason="processes are probed only on POSIX")
def test_a_killed_runs_partial_file_is_removed_by_the_next_run(tmp_path):
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has ended: its partial is stale
    host = socket.gethostname()
    stale = [tmp_path / f".dtm.tif.partial-{host}-{gone.pid}-0123abcd.tif{tail}"
             for tail in ("", ".aux.xml")]
    kept = [tmp_path / f".dtm.tif.partial-{host}-{os.getpid()}-0123abcd.tif",  # running
            tmp_path / f".dtm.tif.partial-{host}x-{gone.pid}-0123abcd.tif",  # another host's
            tmp_path / f".other.tif.partial-{host}-{gone.pid}-0123abcd.tif"]  # another output's
    for path in stale + kept:
        path.write_bytes(b"partial")
    predict(tmp_path, ramp(64, 64))
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == b"partial" for path in kept)


def test_runs_share_a_loaded_model_until_its_file_changes(tmp_path):
    from mars_dtm_plugin.core.model import shared_generator

    model = write_test_model(tmp_path / "m.onnx", "identity")
    first = shared_generator(model, "cpu")
    assert shared_generator(model, "cpu") is first
    assert shared_generator(model, "cpu", threads=1) is not first  # other session options
    write_test_model(model, "ramp")  # replaced in place: a new session, the new graph
    stamp = model.stat().st_mtime_ns  # a later time even where file times are coarse
    os.utime(model, ns=(stamp, stamp + 10**9))
    renewed = shared_generator(model, "cpu")
    assert renewed is not first
    x = np.ones((1, 64, 64), np.float32)
    assert renewed.run(x)[0, 0, -1] == 64.0  # the ramp model's last column


def test_pixels_far_from_square_on_the_ground_are_reported(tmp_path):
    geographic = osr.SpatialReference()
    geographic.ImportFromProj4("+proj=longlat +R=3396190 +no_defs")
    model = write_test_model(tmp_path / "m.onnx")
    aspects = {}
    for lat in (0.0, 60.0):
        gt = (10.0, 1e-4, 0.0, lat + 32 * 1e-4, 0.0, -1e-4)  # 64 rows centred on lat
        source = write_raster(tmp_path / f"lat{lat:.0f}.tif", ramp(64, 64), gt,
                              wkt=geographic.ExportToWkt())
        report = predict_dtm(str(source), str(tmp_path / f"dtm{lat:.0f}.tif"),
                             PredictOptions(model_path=str(model)))
        aspects[lat] = [m for m in report.messages if "as wide as tall" in m]
    assert aspects[0.0] == []
    (message,) = aspects[60.0]
    assert "0.50 times as wide as tall" in message and "gdalwarp" in message


@pytest.mark.parametrize("degrees, said", [(8e-5, True), (8.0, False)])
def test_a_grid_in_degrees_labelled_in_metres_is_reported(tmp_path, degrees, said):
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32735)
    source = write_raster(tmp_path / "image.tif", ramp(64, 64),
                          (24.39, degrees, 0.0, -33.69, 0.0, -degrees), wkt=utm.ExportToWkt())
    report = predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                         PredictOptions(model_path=str(write_test_model(tmp_path / "m.onnx"))))
    cautions = [m for m in report.messages if "not an orbital or aerial image's" in m]
    assert len(cautions) == said  # 8e-5 degrees read as metres: 0.08 mm on the ground
    assert all(c.startswith("Pixels of 7.95e-05 m") and "(a grid in degrees labelled with a "
               "CRS in metres?)" in c for c in cautions)
    given = predict_dtm(str(source), str(tmp_path / "given.tif"), PredictOptions(
        model_path=str(tmp_path / "m.onnx"), pixel_size=degrees))  # a bench photo's, say
    assert not [m for m in given.messages if "not an orbital or aerial image's" in m]


@pytest.mark.parametrize("azimuth", [270.0, 0.0, 315.0, 250.0])
def test_the_rasters_edge_shows_no_padding_of_the_model(tmp_path, azimuth):
    # The blur model sags by a third at its own border (zero padding). At the raster's edge
    # it must see context beyond instead, and tile offsets must not carry the sag inwards.
    image = np.full((150, 170), 100, np.float32)
    image[0, 0] = 0  # percentile scaling maps the rest to 1
    heights, _, _ = predict(tmp_path, image, "blur", sun_azimuth=azimuth,
                            contract={"sun_mode": "rotate"})
    level = np.median(heights)
    for edge in (heights[0, 5:], heights[-1], heights[5:, 0], heights[:, -1]):
        np.testing.assert_allclose(edge, level, atol=5e-3)  # a sag would be 0.33
    assert np.ptp(heights[5:, 5:]) < 1e-2


def test_a_black_collar_without_nodata_is_pointed_out(tmp_path):
    image = ramp(80, 90) + 20
    collared = np.pad(image[8:-8, 8:-8], 8)  # zeros all round, no nodata value
    _, _, plain = predict(tmp_path, image)
    _, _, report = predict(tmp_path, collared, name="collared.tif")
    assert not any("black collar" in m for m in plain.messages)
    (message,) = [m for m in report.messages if "black collar" in m]
    assert isinstance(message, Caution)  # shown as a warning
    assert message.startswith("100% of the image's outermost pixels are 0")
    _, _, tagged = predict(tmp_path, collared, name="tagged.tif", raster={"nodata": 0})
    assert not any("black collar" in m for m in tagged.messages)
    # The collar's value given as nodata: masked, and nothing to point out.
    heights, _, given = predict(tmp_path, collared, name="given.tif", nodata=((0.0, 0.0),))
    assert not any("black collar" in m for m in given.messages)
    assert "Input: 90 x 80 px, band 1, 0 as nodata" in given.messages
    assert (heights[:8] == NODATA).all() and (heights[8:-8, 8:-8] != NODATA).all()
    nan_collar = np.pad(image[8:-8, 8:-8], 8, constant_values=np.nan)  # NaN is nodata
    heights, ds, untagged = predict(tmp_path, nan_collar, name="nan.tif")
    assert not any("black collar" in m for m in untagged.messages)
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    assert (heights[0] == nodata).all() and (heights[8:-8, 8:-8] != nodata).all()


def test_a_turned_grid_of_oblong_pixels_keeps_its_geotransform_and_ground_pixel_size(tmp_path):
    # Columns 2 m apart and rows 3 m apart, the grid turned 30 degrees, in a local CRS in metres.
    turn = math.radians(30.0)
    gt = (500.0, 2 * math.cos(turn), 3 * math.sin(turn), 900.0, 2 * math.sin(turn),
          -3 * math.cos(turn))
    local = osr.SpatialReference()
    local.SetLocalCS("site grid")
    local.SetLinearUnits("metre", 1.0)
    rng = np.random.default_rng(5)
    image = (100 + 20 * rng.random((150, 170))).astype(np.float32)
    source = write_raster(tmp_path / "image.tif", image, gt, wkt=local.ExportToWkt())
    model = write_test_model(tmp_path / "identity.onnx", "identity")
    predict_dtm(str(source), str(tmp_path / "dtm.tif"),
                PredictOptions(model_path=str(model), sun_azimuth=90.0))
    heights, ds = read_raster(tmp_path / "dtm.tif")
    assert ds.GetGeoTransform() == pytest.approx(gt)
    # The geometric mean of the two sides, not of the geotransform's rows.
    assert float(ds.GetMetadataItem("MARSDTM_PIXEL_SIZE_M")) == pytest.approx(math.sqrt(6.0))
    # The statistics stored with the band are those of the heights written.
    band = ds.GetRasterBand(1)
    stored = [float(band.GetMetadataItem(f"STATISTICS_{k}")) for k in
              ("MINIMUM", "MAXIMUM", "MEAN", "STDDEV")]
    assert stored == pytest.approx([heights.min(), heights.max(), heights.mean(), heights.std()],
                                   rel=1e-4, abs=1e-6)


def test_the_scene_mean_is_about_zero_where_tiles_hold_unequal_shares_of_data(tmp_path):
    image = ramp(200, 300, a=3.0, b=1.0) + 50
    image[:, 150:] = 0  # the right half nodata: the tiles along its edge are partly valid
    heights, _, _ = predict(tmp_path, image, "offsets", raster={"nodata": 0})
    valid = heights != NODATA
    assert abs(heights[valid].mean()) < 0.03 * np.ptp(heights[valid])


def _waves(size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A wave 384 px long down the rows and one 8 px long across them."""
    yy, xx = np.mgrid[0:size, 0:size]
    return 20 * np.sin(2 * np.pi * yy / size), 10 * np.sin(2 * np.pi * xx / 8)


@pytest.mark.parametrize("factor, units", [(2, "gsd"), (3, "gsd"), (3, "metres")])
def test_a_coarse_pass_gives_the_long_wavelengths_and_the_fine_pass_the_detail(
        tmp_path, factor, units):
    # The identity model's heights in pixel sizes are its input times the pixel size: over
    # blocks of `factor` pixels, `factor` times those of the fine pass (in metres, the same).
    # Beyond sigma the DTM takes the coarse pass's: a wave 384 px long `factor` times as high,
    # less a blur's gain of 0.97; one 64 px long gets 0.267 of the difference: exp(-2 pi^2
    # s^2 / 64^2), with s^2 = sigma^2 + what the cells of about sigma / 2 add (a box and the
    # bilinear tent: cell^2 / 12 + cell^2 / 6). Below sigma it keeps the fine pass's: a wave
    # 8 px long as it was.
    long_wave, short_wave = _waves()
    middle_wave = 10 * np.sin(2 * np.pi * np.arange(384) / 64)[:, None] * np.ones((1, 384))
    image = (100 + long_wave + middle_wave + short_wave).astype(np.float32)
    coarse_pass = {"factor": factor, "sigma_px": 16.0}
    contract = {"coarse_pass": coarse_pass, "height_units": units}
    heights, ds, report = predict(tmp_path, image, contract=contract)
    one_pass, *_ = predict(tmp_path, image, name="one.tif", contract={"height_units": units})
    scale = (2.0 if units == "gsd" else 1.0) / np.ptp(image)  # percentiles [0, 100]; 2 m pixels
    inner = (slice(64, -64), slice(64, -64))  # away from the scene's edges
    design = np.c_[long_wave[inner].ravel(), middle_wave[inner].ravel(),
                   short_wave[inner].ravel(), np.ones(inner_size(inner))]
    fitted, *_ = np.linalg.lstsq(design, heights[inner].ravel() / scale, rcond=None)
    gain = factor - 1 if units == "gsd" else 0  # what the coarse pass adds, before the blur
    assert fitted[0] == pytest.approx(1 + gain * 0.97, rel=0.03)
    assert fitted[1] == pytest.approx(1 + gain * 0.267, abs=0.015)
    assert fitted[2] == pytest.approx(1.0, abs=0.03)
    fitted_one, *_ = np.linalg.lstsq(design, one_pass[inner].ravel() / scale, rcond=None)
    assert fitted_one[:3] == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    said = f"image averaged in {factor} x {factor} blocks"
    assert any(said in line for line in report.messages)
    assert said in ds.GetMetadataItem("MARSDTM_COARSE_PASS")
    assert list(report.timings)[2] == "coarse pass" and report.timings["coarse pass"] > 0
    # 384 px in tiles of 64 overlapping by 16: 8 x 8; the coarse pass's 384 / factor px more.
    coarse_side = {2: 4, 3: 3}[factor]
    assert report.tiles == 8 * 8 + coarse_side**2


def inner_size(window: tuple[slice, slice], size: int = 384) -> int:
    return len(range(size)[window[0]]) * len(range(size)[window[1]])


def test_a_coarse_pass_keeps_nodata_where_it_was_and_heights_beside_it(tmp_path):
    long_wave, short_wave = _waves(256)
    image = (100 + long_wave + short_wave).astype(np.float32)
    image[100:140, 30:90] = -9999
    heights, ds, _ = predict(tmp_path, image, raster={"nodata": -9999},
                             contract={"coarse_pass": {"factor": 3, "sigma_px": 16.0}})
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    assert (heights[100:140, 30:90] == nodata).all()
    beside = np.ones(heights.shape, bool)
    beside[100:140, 30:90] = False
    assert np.isfinite(heights[beside]).all() and (heights[beside] != nodata).all()


@pytest.mark.parametrize("rows, coarse", [(47, False), (48, True)])
def test_a_raster_too_small_for_a_coarse_pass_gets_one_pass(tmp_path, rows, coarse):
    image = ramp(rows, 60) + 50  # a coarse pass needs 16 blocks of 3 px on each side
    heights, ds, report = predict(tmp_path, image,
                                  contract={"coarse_pass": {"factor": 3, "sigma_px": 16.0}})
    said = any("Long wavelengths" in line for line in report.messages)
    assert said == coarse
    assert (ds.GetMetadataItem("MARSDTM_COARSE_PASS") != "none") == coarse
    if not coarse:
        one_pass, *_ = predict(tmp_path, image, name="one.tif")
        np.testing.assert_array_equal(heights, one_pass)


def test_progress_reaches_one_and_increases_through_a_coarse_pass(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(300, 300), GT)
    model = write_test_model(tmp_path / "m.onnx",
                             coarse_pass={"factor": 2, "sigma_px": 16.0})
    seen = []
    predict_dtm(str(source), str(tmp_path / "o.tif"),
                PredictOptions(model_path=str(model), batch_size=1), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    # The coarse pass's 2 x 2 blocks are a fifth of the model's work: the last fifth of its share.
    in_coarse = [f for f in seen if MODEL_SHARE * 0.8 + 1e-9 < f <= MODEL_SHARE + 1e-9]
    assert len(in_coarse) > 1 and in_coarse[-1] == pytest.approx(MODEL_SHARE)


def test_partial_files_of_hosts_whose_long_names_differ_late_are_told_apart(monkeypatch):
    from mars_dtm_plugin.core import writer

    prefixes = set()
    for host in ("render-node-0001.cluster.example-university.edu",
                 "render-node-0001.cluster.example-university.org"):  # the same first 40
        monkeypatch.setattr(writer.socket, "gethostname", lambda host=host: host)
        prefixes.add(writer._partial_prefix(Path("dtm.tif")))
    assert len(prefixes) == 2
