"""A reference DTM gives the output its long wavelengths and datum; the model, the detail."""

from __future__ import annotations

import re

import numpy as np
import pytest
from osgeo import gdal, osr

from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.errors import Caution, DtmCancelled, DtmError
from mars_dtm_plugin.core.raster import InputRaster
from mars_dtm_plugin.core.reference import open_reference
from tests.conftest import SHARED_DATA
from tests.models import write_test_model
from tests.rasters import mars_eqc_wkt, read_raster, write_raster

GT = (1000.0, 2.0, 0.0, 5000.0, 0.0, -2.0)  # 2 m pixels
SIZE = 256


def _image(rows: int = SIZE, cols: int = SIZE) -> np.ndarray:
    """Flat ground but for a wave 8 px long across the rows: all the identity model sees."""
    xx = np.mgrid[0:rows, 0:cols][1]
    return (100 + 10 * np.sin(2 * np.pi * xx / 8)).astype(np.float32)


def _plane(east: np.ndarray, north: np.ndarray) -> np.ndarray:
    return 3000 + 0.1 * (east - 1000) - 0.05 * (north - 5000)


def _pixel_centres(gt: tuple[float, ...], rows: int, cols: int) -> tuple[np.ndarray, ...]:
    rr, cc = np.mgrid[0:rows, 0:cols] + 0.5
    return gt[0] + cc * gt[1] + rr * gt[2], gt[3] + cc * gt[4] + rr * gt[5]


def _run(tmp_path, reference, name: str = "dtm.tif", image=None, gt=GT, model=None,
         **options):
    source = write_raster(tmp_path / "image.tif", _image() if image is None else image, gt)
    model = model or write_test_model(tmp_path / "identity.onnx", "identity",
                                      height_units="metres")
    out = tmp_path / name
    report = predict_dtm(str(source), str(out), PredictOptions(
        model_path=str(model), reference_dtm=reference and str(reference), **options))
    heights, ds = read_raster(out)
    return heights, ds, report


def _plane_reference(tmp_path, gt=(600.0, 64.0, 0.0, 5400.0, 0.0, -64.0), size=20, **kw):
    """The plane on a grid of 64 m pixels beyond the image's on every side, with an offset:
    half a pixel is 16 of the image's, cells of 8 hold whole waves of its detail."""
    heights = _plane(*_pixel_centres(gt, size, size)).astype(np.float32)
    return write_raster(tmp_path / "reference.tif", heights, gt, **kw)


def test_the_output_takes_the_reference_s_plane_and_datum_and_keeps_the_model_s_detail(
        tmp_path):
    reference = _plane_reference(tmp_path)
    heights, ds, report = _run(tmp_path, reference)
    without, *_ = _run(tmp_path, None, name="relative.tif")
    plane = _plane(*_pixel_centres(GT, SIZE, SIZE))
    # Alone, the model's heights are its detail about zero; with the reference, that detail
    # on the reference's plane: 3 000 m up, rising 0.1 m per metre east.
    # The reference beyond the image keeps its slope unbent up to the image's edges. Averaged
    # onto cells a quarter of its pixel, it is a staircase that the blur of half a pixel
    # smooths to within 0.6 % of a pixel's rise (6.4 m here).
    assert abs(without.mean()) < 0.01
    np.testing.assert_allclose(heights, plane + without, atol=0.006 * 6.4)
    assert "reference DTM reference.tif" in ds.GetMetadataItem("MARSDTM_REFERENCE")
    assert ds.GetMetadataItem("MARSDTM_HEIGHTS") == "metres, on the reference DTM's datum"
    assert any("beyond 16 px, from the reference DTM reference.tif" in line
               for line in report.messages)
    assert report.timings["reference DTM"] > 0
    assert report.height_min == pytest.approx(float(heights.min()), abs=1e-3)


def test_a_reference_in_another_crs_and_scaled_integers_is_warped_and_scaled(tmp_path):
    # A geographic grid of Mars, in decimetres above -1 000 m: the output's level is its
    # height in metres, wherever its pixels fall on the image's grid.
    srs = osr.SpatialReference(wkt=mars_eqc_wkt())
    geographic = srs.CloneGeogCS()
    geographic.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_degrees = osr.CoordinateTransformation(srs, geographic)
    corners = np.array([to_degrees.TransformPoint(GT[0] + dx, GT[3] - dy)[:2]
                        for dx in (0, SIZE * 2) for dy in (0, SIZE * 2)])
    west, north = corners[:, 0].min() - 0.002, corners[:, 1].max() + 0.002
    stored = np.full((40, 40), 2500, np.int16)  # -1 000 + 0.1 * 2 500 = -750 m
    # Pixels of 64 m, cells of 16 px: whole cells, each two waves of the model's detail.
    degrees = 64 / np.radians(srs.GetSemiMajor())
    path = write_raster(tmp_path / "geographic.tif", stored,
                        (west, degrees, 0, north, 0, -degrees), geographic.ExportToWkt())
    ds = gdal.Open(str(path), gdal.GA_Update)
    ds.GetRasterBand(1).SetScale(0.1)
    ds.GetRasterBand(1).SetOffset(-1000.0)
    ds.GetRasterBand(1).SetUnitType("Metres")  # as some products spell it
    ds = None
    heights, _, _ = _run(tmp_path, path)
    without, *_ = _run(tmp_path, None, name="relative.tif")
    np.testing.assert_allclose(heights, without - 750.0, atol=0.01)


def _refusal(tmp_path, reference, says: str, **options) -> None:
    with pytest.raises(DtmError, match=says):
        _run(tmp_path, reference, **options)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("dtm", ".marsdtm"))]


def test_a_reference_that_does_not_overlap_the_image_is_refused(tmp_path):
    far = _plane_reference(tmp_path, gt=(90000.0, 64.0, 0.0, 5100.0, 0.0, -64.0))
    _refusal(tmp_path, far, "The reference DTM reference.tif does not overlap the image.")


def test_a_reference_that_covers_part_of_the_image_is_refused_after_the_model(tmp_path):
    # It covers the image's top right quarter. The blur reaches 3 sigma and a cell or two
    # beyond it, under 64 px: at least 44 % of the image is uncovered, at most 75 %.
    quarter = _plane_reference(tmp_path, gt=(1256.0, 64.0, 0.0, 5000.0, 0.0, -64.0), size=4)
    with pytest.raises(DtmError, match="give one that covers the whole image") as refusal:
        _run(tmp_path, quarter)
    share = int(re.search(r"leaves (\d+)% of the image uncovered", str(refusal.value))[1])
    assert 44 <= share <= 75
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("dtm", ".marsdtm"))]


def test_a_reference_in_feet_without_a_crs_or_unreadable_is_refused(tmp_path):
    feet = _plane_reference(tmp_path)
    ds = gdal.Open(str(feet), gdal.GA_Update)
    ds.GetRasterBand(1).SetUnitType("ft")
    ds = None
    _refusal(tmp_path, feet, "holds heights in 'ft'; give one in metres.")
    placeless = _plane_reference(tmp_path, wkt="")
    _refusal(tmp_path, placeless, "has no geotransform and CRS to place it by.")
    (tmp_path / "text.tif").write_text("not a raster")
    _refusal(tmp_path, tmp_path / "text.tif", "The reference DTM '.*text.tif' cannot be read")


def test_a_reference_file_without_a_crs_is_placed_by_the_crs_given_for_it(tmp_path):
    # As a QGIS layer carries a CRS its file lacks: the same heights as with the file's own.
    placed, *_ = _run(tmp_path, _plane_reference(tmp_path))
    placeless = _plane_reference(tmp_path, wkt="")
    given, *_ = _run(tmp_path, placeless, name="given.tif", reference_crs_wkt=mars_eqc_wkt())
    np.testing.assert_array_equal(given, placed)
    with_nodata, *_ = _run(tmp_path, placeless, name="nodata.tif",
                           reference_crs_wkt=mars_eqc_wkt(), reference_nodata=-9999.0)
    np.testing.assert_allclose(with_nodata, placed, atol=1e-4)  # and with a value given


def test_a_reference_of_another_body_is_refused_in_one_short_sentence(tmp_path):
    earth = osr.SpatialReference()
    earth.ImportFromEPSG(32633)
    reference = _plane_reference(tmp_path, wkt=earth.ExportToWkt())
    with pytest.raises(DtmError) as refusal:
        _run(tmp_path, reference)
    assert str(refusal.value) == (
        "The reference DTM reference.tif cannot be placed on the image's grid: PROJ knows no "
        "way from its CRS to the image's (is it of another body?).")


def test_a_reference_resolution_finer_than_its_pixels_or_without_a_reference_is_refused(
        tmp_path):
    _refusal(tmp_path, _plane_reference(tmp_path),
             "The reference DTM's resolution, 10 m, cannot be finer than its 64 m pixels.",
             reference_resolution_m=10.0)
    _refusal(tmp_path, None, "A reference resolution is given without a reference DTM.",
             reference_resolution_m=200.0)
    _refusal(tmp_path, None, "A reference nodata value is given without a reference DTM.",
             reference_nodata=-9999.0)


def test_a_reference_needs_a_georeferenced_image(tmp_path):
    reference = _plane_reference(tmp_path)
    source = write_raster(tmp_path / "plain.tif", _image(), None, wkt="")
    model = write_test_model(tmp_path / "identity.onnx", "identity")
    with pytest.raises(DtmError, match="A reference DTM needs an image with a geotransform"):
        predict_dtm(str(source), str(tmp_path / "dtm.tif"), PredictOptions(
            model_path=str(model), pixel_size=2.0, reference_dtm=str(reference)))


def test_the_output_may_not_overwrite_the_reference(tmp_path):
    reference = _plane_reference(tmp_path)
    before = reference.read_bytes()
    with pytest.raises(DtmError, match="which this run reads from"):
        _run(tmp_path, reference, name="reference.tif")
    assert reference.read_bytes() == before


def test_the_output_may_not_overwrite_a_file_a_vrt_reference_is_read_from(tmp_path):
    reference = _plane_reference(tmp_path)
    gdal.Translate(str(tmp_path / "reference.vrt"), str(reference), format="VRT")
    before = reference.read_bytes()
    with pytest.raises(DtmError, match=r"reference\.tif', which this run reads from"):
        _run(tmp_path, tmp_path / "reference.vrt", name="reference.tif")
    assert reference.read_bytes() == before


def test_a_reference_of_few_pixels_across_the_image_is_a_caution(tmp_path):
    # 512 m of image under pixels of 200 m: 2.6 of them.
    coarse = _plane_reference(tmp_path, gt=(600.0, 200.0, 0.0, 5400.0, 0.0, -200.0), size=6)
    *_, report = _run(tmp_path, coarse)
    assert any(isinstance(line, Caution) and "has only 2.6 pixels across the image" in line
               for line in report.messages)
    *_, fine = _run(tmp_path, _plane_reference(tmp_path), name="fine.tif")
    assert not any(isinstance(line, Caution) for line in fine.messages)


def test_the_cells_of_a_fine_reference_under_a_huge_image_stay_few(tmp_path):
    from mars_dtm_plugin.core.reference import MAX_CELLS, open_reference

    # A reference of 2 m pixels, as fine as the image, under 40 000 x 40 000 of them.
    fine = _plane_reference(tmp_path, gt=(600.0, 2.0, 0.0, 5400.0, 0.0, -2.0), size=300)
    georef = InputRaster(str(write_raster(tmp_path / "image.tif", _image(), GT))).georef
    small = open_reference(str(fine), georef, SIZE, SIZE)
    huge = open_reference(str(fine), georef, 40_000, 40_000)
    assert (small.sigma, small.cell) == (2.0, 1)
    assert (huge.sigma, huge.cell) == (2.0, 20)
    # The blur reaches one cell: the ring alone is kept around 2000 x 2000 cells.
    assert huge.long.shape == (2002, 2002) and huge.long.size <= 1.01 * MAX_CELLS
    # The plane at the cells' centres where the reference covers them: 240 m from the ring's
    # corner, 6 cells of 40 m each way.
    plane = _plane(*_pixel_centres((GT[0] - 40, 40, 0, GT[3] + 40, 0, -40), 6, 6))
    assert np.abs(huge.long[:6, :6] - plane).max() < 0.05


def test_an_unmarked_fill_in_the_reference_is_a_hole_the_blur_closes(tmp_path):
    reference = _plane_reference(tmp_path)
    ds = gdal.Open(str(reference), gdal.GA_Update)
    heights = ds.GetRasterBand(1).ReadAsArray()
    heights[8, 8] = -3.4028227e38  # under the image, as a HiRISE DTM marks a gap
    ds.GetRasterBand(1).WriteArray(heights)
    ds = None
    heights, *_ = _run(tmp_path, reference)
    without, *_ = _run(tmp_path, None, name="relative.tif")
    plane = _plane(*_pixel_centres(GT, SIZE, SIZE))
    # Across the hole, the plane is bridged from around it: within half a pixel's rise.
    assert np.abs(heights - plane - without).max() < 0.5 * 6.4
    assert np.abs(heights - plane - without)[160:].max() < 0.006 * 6.4  # and far from it


def _reference_with_patch(tmp_path, value: float, name: str, nodata: float | None = None):
    """The plane reference with a 3 x 3 patch of ``value`` under the image."""
    gt = (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0)
    heights = _plane(*_pixel_centres(gt, 20, 20)).astype(np.float32)
    heights[7:10, 7:10] = value
    return write_raster(tmp_path / name, heights, gt, nodata=nodata)


def test_nodata_values_given_for_the_reference_are_holes_as_its_file_s_would_be(tmp_path):
    # A GIS layer's own nodata value on a file without one reads as the file's would.
    unmarked = _reference_with_patch(tmp_path, -9999.0, "unmarked.tif")
    marked = _reference_with_patch(tmp_path, -9999.0, "marked.tif", nodata=-9999.0)
    given, _, report = _run(tmp_path, unmarked, name="given.tif", reference_nodata=-9999.0)
    assert any(line.endswith("unmarked.tif, -9999 as nodata") for line in report.messages)
    as_file, *_ = _run(tmp_path, marked, name="as_file.tif")
    ignored, *_ = _run(tmp_path, unmarked, name="ignored.tif")
    np.testing.assert_allclose(given, as_file, atol=1e-4)
    assert np.abs(ignored - as_file).max() > 100  # read as heights, the patch is a deep pit


@pytest.mark.parametrize("dtype, value, holes", [
    (np.int16, -9999.0, True), (np.int16, -1e6, False),  # GDAL would clamp -1e6 to -32768
    (np.float32, 0.1, True)])  # typed as a double, stored as the nearest float32
def test_a_value_given_is_compared_with_the_stored_type_s_values(tmp_path, dtype, value, holes):
    gt = (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0)
    heights = _plane(*_pixel_centres(gt, 20, 20)).astype(dtype)
    heights[7:10, 7:10] = value if holes else np.iinfo(dtype).min
    given = write_raster(tmp_path / "given.tif", heights, gt)
    expected = write_raster(tmp_path / "marked.tif", heights, gt,
                            nodata=float(heights[7, 7])) if holes else given
    dtm, *_ = _run(tmp_path, given, name="given_dtm.tif", reference_nodata=value)
    as_file, *_ = _run(tmp_path, expected, name="as_file.tif")
    np.testing.assert_allclose(dtm, as_file, atol=1e-4)


def test_a_value_given_for_a_scaled_reference_is_a_stored_one_beside_its_file_s(tmp_path):
    # Int16 heights stored as (h - 1000) / 0.5; -32768 marked in the file, -9999 given.
    gt = (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0)
    stored = ((_plane(*_pixel_centres(gt, 20, 20)) - 1000) / 0.5).round().astype(np.int16)
    holed = stored.copy()
    stored[7:10, 7:10], stored[12, 12] = -9999, -32768
    holed[7:10, 7:10] = holed[12, 12] = -32768
    for name, array in (("given.tif", stored), ("holed.tif", holed)):
        write_raster(tmp_path / name, array, gt, nodata=-32768)
        ds = gdal.Open(str(tmp_path / name), gdal.GA_Update)
        ds.GetRasterBand(1).SetScale(0.5)
        ds.GetRasterBand(1).SetOffset(1000.0)
        ds = None
    given, *_ = _run(tmp_path, tmp_path / "given.tif", name="a.tif", reference_nodata=-9999)
    holed, *_ = _run(tmp_path, tmp_path / "holed.tif", name="b.tif")
    np.testing.assert_allclose(given, holed, atol=1e-4)
    assert abs(given.mean() - _plane(*_pixel_centres(GT, SIZE, SIZE)).mean()) < 5
    assert not [f for f in gdal.ReadDirRecursive("/vsimem/") or [] if "marsdtm" in f]


def test_a_reference_is_averaged_from_its_pixels_not_its_overviews(tmp_path):
    # Rough heights at 0.5 m under the 2 m image; overviews that sample, as gdaladdo's do.
    rough = (3000 + np.random.default_rng(0).normal(0, 5, (1300, 1300))).astype(np.float32)
    gt = (900.0, 0.5, 0.0, 5100.0, 0.0, -0.5)
    plain = write_raster(tmp_path / "plain.tif", rough, gt)
    sampled = write_raster(tmp_path / "sampled.tif", rough, gt)
    ds = gdal.Open(str(sampled), gdal.GA_Update)
    ds.BuildOverviews("NEAREST", [2, 4, 8])
    ds = None
    expected, *_ = _run(tmp_path, plain, name="plain_dtm.tif")
    for value in (None, -1e6):  # a value given that matches none changes nothing
        dtm, *_ = _run(tmp_path, sampled, name="dtm.tif", reference_nodata=value)
        np.testing.assert_allclose(dtm, expected, atol=1e-4)


def test_a_reference_with_a_band_beside_its_heights_is_read_from_band_1(tmp_path):
    heights = np.stack([np.full((20, 20), 1234.0, np.float32),  # and an error band
                        np.full((20, 20), 3.0, np.float32)])
    reference = write_raster(tmp_path / "two.tif", heights, (600.0, 64.0, 0.0, 5400.0, 0.0,
                                                              -64.0))
    dtm, *_ = _run(tmp_path, reference)
    assert abs(dtm.mean() - 1234.0) < 0.05


def test_a_value_given_for_a_reference_with_an_alpha_band_is_refused(tmp_path):
    heights = np.stack([np.full((20, 20), 1234.0, np.float32), np.full((20, 20), 255.0,
                                                                       np.float32)])
    reference = write_raster(tmp_path / "alpha.tif", heights,
                             (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0),
                             colour=[gdal.GCI_GrayIndex, gdal.GCI_AlphaBand])
    with pytest.raises(DtmError, match=r"^The reference DTM alpha.tif has a mask or alpha "
                                       r"band, which the run cannot keep while it reads band "
                                       r"1 alone or applies a nodata value given for it; "):
        _run(tmp_path, reference, reference_nodata=-9999.0)
    assert not (tmp_path / "dtm.tif").exists()


def test_a_value_given_for_an_isis3_cube_holes_it_beside_its_own_nodata(tmp_path):
    # ISIS3 gives its band a mask of its own, from its special pixel values.
    heights = np.full((20, 20), 1234.0, np.float32)
    heights[7:10, 7:10], heights[12, 12] = -9999.0, -3.4028226550889045e38
    gt = (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0)
    tif = write_raster(tmp_path / "dtm_source.tif", heights, gt)
    cube = tmp_path / "reference.cub"
    gdal.Translate(str(cube), str(tif), format="ISIS3")
    dtm, *_ = _run(tmp_path, cube, reference_nodata=-9999.0)
    assert abs(dtm.mean() - 1234.0) < 0.05


def test_a_cancel_stops_the_reference_s_warp(tmp_path):
    source = write_raster(tmp_path / "image.tif", _image(), GT)
    raster = InputRaster(str(source))
    with pytest.raises(DtmCancelled):
        open_reference(str(_plane_reference(tmp_path)), raster.georef, SIZE, SIZE,
                       is_cancelled=lambda: True)
    assert not [f for f in gdal.ReadDirRecursive("/vsimem/") or [] if "marsdtm" in f]


def test_a_reference_s_file_nodata_value_switched_off_is_read_as_a_height(tmp_path):
    marked = _reference_with_patch(tmp_path, 0.0, "marked.tif", nodata=0.0)
    unmarked = _reference_with_patch(tmp_path, 0.0, "unmarked.tif")
    switched_off, *_ = _run(tmp_path, marked, name="off.tif", reference_file_nodata=False)
    as_values, *_ = _run(tmp_path, unmarked, name="values.tif")
    hole, *_ = _run(tmp_path, marked, name="hole.tif")
    np.testing.assert_allclose(switched_off, as_values, atol=1e-4)
    assert np.abs(hole - as_values).max() > 100


def test_a_value_given_where_the_file_s_own_is_switched_off_is_the_only_one(tmp_path):
    gt = (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0)
    heights = _plane(*_pixel_centres(gt, 20, 20)).astype(np.float32)
    heights[7:10, 7:10], heights[12:14, 12:14] = 0.0, -9999.0
    marked = write_raster(tmp_path / "marked.tif", heights, gt, nodata=0.0)
    other = write_raster(tmp_path / "other.tif", heights, gt, nodata=-9999.0)
    given, *_ = _run(tmp_path, marked, name="given.tif", reference_nodata=-9999.0,
                     reference_file_nodata=False)
    as_file, *_ = _run(tmp_path, other, name="as_file.tif")
    np.testing.assert_allclose(given, as_file, atol=1e-4)


def _rotated(degrees: float) -> tuple[float, ...]:
    """2 m pixels whose rows run ``degrees`` anticlockwise from east."""
    c, s = 2 * np.cos(np.radians(degrees)), 2 * np.sin(np.radians(degrees))
    return (1000.0, c, s, 5000.0, s, -c)


def test_a_rotated_oblong_image_takes_the_reference_s_plane_at_its_own_pixels(tmp_path):
    # 256 x 192 px turned by 20 degrees: the reference, north-up, is placed by the image's
    # full geotransform, its rotation terms included, and widened on every side alike.
    image, gt = _image(192, SIZE), _rotated(20)
    reference = _plane_reference(tmp_path, gt=(400.0, 64.0, 0.0, 5600.0, 0.0, -64.0), size=24)
    heights, ds, _ = _run(tmp_path, reference, image=image, gt=gt)
    without, *_ = _run(tmp_path, None, name="relative.tif", image=image, gt=gt)
    assert ds.GetGeoTransform() == pytest.approx(gt)
    plane = _plane(*_pixel_centres(gt, 192, SIZE))
    np.testing.assert_allclose(heights, plane + without, atol=0.006 * 6.4)


def test_the_caution_counts_the_reference_s_pixels_across_the_shorter_side(tmp_path):
    from mars_dtm_plugin.core.reference import open_reference

    # The shorter side is 192 px of 2 m, 384 m: 3.84 pixels of 100 m (a caution) and 4.27
    # of 90 m (none); the longer side would hold 5.1 and 5.7.
    georef = InputRaster(str(write_raster(tmp_path / "image.tif", _image(192, SIZE),
                                          _rotated(20)))).georef
    coarse = _plane_reference(tmp_path, gt=(0.0, 100.0, 0.0, 6000.0, 0.0, -100.0))
    caution = open_reference(str(coarse), georef, SIZE, 192).caution()
    assert caution and "has only 3.8 pixels across the image" in caution
    finer = _plane_reference(tmp_path, gt=(0.0, 90.0, 0.0, 6000.0, 0.0, -90.0), size=24)
    assert open_reference(str(finer), georef, SIZE, 192).caution() is None


def test_with_a_coarse_pass_the_reference_still_sets_the_long_wavelengths(tmp_path):
    # A model whose heights rise 1 m per pixel of its input, on the image and on the coarse
    # pass's half-size image alike, so the coarse pass halves the DTM's slope. The reference
    # must replace the slope so corrected, not the model's alone, leaving its plane to within
    # 1 % of the model's rise. Within 3 sigma (48 px) of the edges the DTM's own blur, within
    # its data, bends a slope.
    model = write_test_model(tmp_path / "coarse.onnx", "ramp", height_units="metres",
                             coarse_pass={"factor": 2, "sigma_px": 16.0})
    heights, *_ = _run(tmp_path, _plane_reference(tmp_path), model=model)
    without, *_ = _run(tmp_path, None, name="relative.tif", model=model)
    inner = slice(48, -48)
    rise = np.ptp(without[inner, inner])
    assert rise > 50  # the model's own slope, which gives way
    plane = _plane(*_pixel_centres(GT, SIZE, SIZE))
    np.testing.assert_allclose(heights[inner, inner], plane[inner, inner], atol=0.01 * rise)


@pytest.mark.parametrize(("resolution_m", "sigma"), [(None, 16), (128.0, 32)])
def test_the_model_s_relief_beyond_the_blur_gives_way_to_the_reference_s(tmp_path,
                                                                         resolution_m, sigma):
    # A wave 128 px long in the image, which the identity model passes on: beyond sigma (16
    # px, half a 64 m pixel of 2 m ones; 32 px for a reference that resolves 128 m) the
    # reference's level ground replaces it, so what is left of it is the part a Gaussian of
    # sigma does not keep: exp(-2 pi^2 sigma^2 / 128^2), 0.73 or 0.29 of it kept.
    xx = np.mgrid[0:SIZE, 0:SIZE][1]
    long_wave = np.sin(2 * np.pi * xx / 128)
    image = (_image() + 20 * long_wave).astype(np.float32)
    level_ground = write_raster(tmp_path / "reference.tif", np.full((20, 20), 3000, np.float32),
                                (600.0, 64.0, 0.0, 5400.0, 0.0, -64.0))
    heights, _, report = _run(tmp_path, level_ground, image=image,
                              reference_resolution_m=resolution_m)
    assert any(f"beyond {sigma} px" in line for line in report.messages)
    without, *_ = _run(tmp_path, None, name="relative.tif", image=image)
    # The model's heights as level, short wave and long wave (the engine scales its input).
    terms = np.stack([np.ones_like(long_wave), _image() - 100, long_wave], axis=-1)
    level, _, long_amplitude = np.linalg.lstsq(terms.reshape(-1, 3), without.ravel(),
                                               rcond=None)[0]
    assert long_amplitude > 0.2  # the model did pass the long wave on
    kept = np.exp(-2 * np.pi**2 * sigma**2 / 128**2)
    expected = (3000 + without - level
                - kept * long_amplitude * long_wave)
    inner = slice(3 * sigma, -3 * sigma)  # where the blur sees data on all sides
    np.testing.assert_allclose(heights[inner, inner], expected[inner, inner],
                               atol=0.05 * long_amplitude)


def test_a_reference_finer_than_the_image_is_averaged_onto_its_pixels(tmp_path):
    # Half-metre pixels under 2 m ones, corrugated +-5 m column by column: four of them
    # average to the plane beneath, where picking one would shift the output by 5 m.
    gt = (900.0, 0.5, 0.0, 5100.0, 0.0, -0.5)
    size = 1400
    plane = _plane(*_pixel_centres(gt, size, size))
    corrugated = plane + 5 * np.where(np.arange(size) % 2, 1.0, -1.0)
    reference = write_raster(tmp_path / "reference.tif", corrugated.astype(np.float32), gt)
    heights, *_ = _run(tmp_path, reference)
    without, *_ = _run(tmp_path, None, name="relative.tif")
    # Sigma is 2 px here: the reference replaces the part of the model's 8 px wave that a
    # Gaussian of 2 px keeps, exp(-2 pi^2 2^2 / 8^2) = 0.29 of it.
    terms = np.stack([np.ones((SIZE, SIZE)), _image() - 100], axis=-1).reshape(-1, 2)
    level, wave = np.linalg.lstsq(terms, without.ravel(), rcond=None)[0]
    kept = np.exp(-2 * np.pi**2 * 2**2 / 8**2)
    expected = (_plane(*_pixel_centres(GT, SIZE, SIZE)) + without - level
                - kept * wave * (_image() - 100))
    inner = slice(6, -6)  # 3 sigma from the edges, where the blur sees data on all sides
    np.testing.assert_allclose(heights[inner, inner], expected[inner, inner], atol=0.01)


def test_a_real_hirise_dtm_coarsened_into_another_crs_gives_the_dtm_its_heights(tmp_path):
    # Gale crater: the HiRISE DTM (5 m, Mercator on the Mars sphere), averaged to 20 m pixels
    # in equirectangular as a CTX DTM might come, is the reference of the bundled model's run
    # on the HiRISE image it was made with, under the sun the evaluation gives that image.
    gale = SHARED_DATA / "gale_hirise"
    if not gale.is_dir():
        pytest.skip(f"the shared Gale pair is absent ({gale})")
    reference = tmp_path / "coarse_dtm.tif"
    gdal.Warp(str(reference), str(gale / "dem_5m.tif"), dstSRS=mars_eqc_wkt(), xRes=20,
              yRes=20, resampleAlg="average")
    out = tmp_path / "dtm.tif"
    predict_dtm(str(gale / "image_hirise_color_0p63m.tif"), str(out), PredictOptions(
        reference_dtm=str(reference), sun_azimuth=330.0, sun_elevation=15.0))
    heights, ds = read_raster(out)
    heights = np.where(heights == ds.GetRasterBand(1).GetNoDataValue(), np.nan, heights)
    truth = read_raster(gale / "dem_5m.tif")[0].astype(np.float64)
    # On the DTM's own 5 m cells (8 x 8 image pixels): its datum to within 0.1 m, and its
    # relief (9.1 m about its mean) to within 1.5 m RMSE, where the model alone is off by
    # some 8 m. What is left is the relief between 5 and 20 m that the model has to give.
    error = np.nanmean(heights.reshape(64, 8, 64, 8), axis=(1, 3)) - truth
    assert abs(np.nanmean(error)) < 0.1
    assert np.sqrt(np.nanmean(error**2)) < 1.5
