"""Georeferencing, pixel sizes and sun geometry read from real files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from osgeo import gdal, osr

from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.raster import Georeferencing, InputRaster, sun_from_product
from tests.conftest import SHARED_DATA
from tests.rasters import ramp, write_raster

MARS_GEOGRAPHIC = ('GEOGCS["Mars 2000",DATUM["D_Mars_2000",SPHEROID["Mars_2000_IAU_IAG",'
                   '3396190.0,0.0]],PRIMEM["Reference_Meridian",0.0],'
                   'UNIT["Degree",0.0174532925199433]]')


def test_pixel_size_in_a_geographic_mars_crs(tmp_path):
    degrees = 1e-4
    gt = (137.0, degrees, 0.0, 0.5 * 60 * degrees, 0.0, -degrees)  # centred on the equator
    path = write_raster(tmp_path / "geo.tif", ramp(60, 60), gt, wkt=MARS_GEOGRAPHIC)
    raster = InputRaster(str(path))
    expected = 3396190.0 * math.radians(degrees)  # about 5.93 m
    assert raster.georef.pixel_size_m == pytest.approx(expected, rel=1e-6)


def test_pixel_size_at_latitude_shrinks_across(tmp_path):
    degrees = 1e-4
    gt = (0.0, degrees, 0.0, 60.0, 0.0, -degrees)
    path = write_raster(tmp_path / "geo.tif", ramp(2, 2), gt, wkt=MARS_GEOGRAPHIC)
    metres = 3396190.0 * math.radians(degrees)
    expected = math.sqrt(metres * metres * math.cos(math.radians(60.0 - degrees)))
    assert InputRaster(str(path)).georef.pixel_size_m == pytest.approx(expected, rel=1e-6)


def test_projected_pixel_size_and_rotated_grid(tmp_path):
    # A grid turned 90 degrees: image up points west, so north is to the right.
    path = write_raster(tmp_path / "rot.tif", ramp(10, 10), (0.0, 0.0, 0.5, 0.0, 0.5, 0.0))
    georef = InputRaster(str(path)).georef
    assert georef.pixel_size_m == pytest.approx(0.5)
    assert georef.north_deg == pytest.approx(90.0)
    north_up = write_raster(tmp_path / "up.tif", ramp(10, 10), (0, 2.0, 0, 0, 0, -2.0))
    assert InputRaster(str(north_up)).georef.north_deg == pytest.approx(0.0)


@pytest.mark.parametrize("bound", ["", " +towgs84=0,0,0"])  # as many GIS exports write it
@pytest.mark.parametrize("lon, expected", [(0.0, 0.0), (90.0, 270.0), (180.0, 180.0),
                                           (-90.0, 90.0)])
@pytest.mark.parametrize("r", [200_000.0, 3.0])  # 86.6 N; 3 m from the pole, which the scene holds
def test_true_north_in_a_polar_stereographic_grid(tmp_path, lon, expected, bound, r):
    # North polar stereographic on the Mars sphere: north points at the pole, not up.
    srs = osr.SpatialReference()
    srs.ImportFromProj4("+proj=stere +lat_0=90 +lon_0=0 +k=1 +R=3396190 +units=m" + bound)
    cx, cy = r * math.sin(math.radians(lon)), -r * math.cos(math.radians(lon))
    gt = (cx - 50.0, 1.0, 0.0, cy + 50.0, 0.0, -1.0)
    path = write_raster(tmp_path / "polar.tif", ramp(100, 100), gt, wkt=srs.ExportToWkt())
    raster = InputRaster(str(path))
    assert raster.dataset.GetSpatialRef().HasTOWGS84() == bool(bound)
    assert raster.georef.north_deg == pytest.approx(expected, abs=0.1)
    # On the ground: a map metre at 200 km from the pole is 0.9991 m (the projection's scale).
    assert raster.georef.pixel_size_m == pytest.approx(1 / (1 + (r / 2 / 3396190) ** 2), rel=1e-4)


@pytest.mark.parametrize(("metadata", "imd", "key"), [
    ({"SUN_AZIMUTH": "west"}, None, "SUN_AZIMUTH"),
    (None, 'BEGIN_GROUP = IMAGE_1\n\tsunAz = "west";\nEND_GROUP = IMAGE_1\nEND;\n',
     "IMAGE_1.sunAz"),
])
def test_bad_sun_metadata_is_one_sentence(tmp_path, metadata, imd, key):
    path = write_raster(tmp_path / "m.tif", ramp(4, 4), (0, 1.0, 0, 0, 0, -1.0),
                        metadata=metadata)
    if imd:  # Maxar's metadata file, which GDAL reads beside the image
        (tmp_path / "m.IMD").write_text(imd)
    raster = InputRaster(str(path))
    with pytest.raises(DtmError, match=f"{key} is not a number"):
        sun_from_product(str(path), raster.dataset)


def test_missing_crs_is_refused_unless_a_pixel_size_is_given(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", ramp(10, 10), (0, 2.0, 0, 0, 0, -2.0), wkt="")
    with pytest.raises(DtmError, match="has a grid but no CRS"):
        InputRaster(str(path))
    georef = InputRaster(str(path), pixel_size=0.5).georef
    assert georef.pixel_size_m == 0.5
    # A world file without a CRS still places the output on the input's grid.
    assert georef.geotransform == (0, 2.0, 0, 0, 0, -2.0) and georef.crs_wkt == ""


def test_an_image_without_a_grid_is_told_so(tmp_path):
    path = write_raster(tmp_path / "plain.tif", ramp(10, 10), geotransform=None, wkt="")
    with pytest.raises(DtmError, match="no georeferencing"):
        InputRaster(str(path))


def test_north_is_nan_where_the_crs_cannot_say(tmp_path):
    ortho = osr.SpatialReference()
    ortho.ImportFromProj4("+proj=ortho +lat_0=0 +lon_0=0 +R=3396190 +units=m")
    off_the_globe = (1e7, 1.0, 0, 1e7, 0, -1.0)
    path = write_raster(tmp_path / "o.tif", ramp(10, 10), off_the_globe, ortho.ExportToWkt())
    assert math.isnan(InputRaster(str(path)).georef.north_deg)


def test_sun_from_an_attached_pds_label(tmp_path):
    label = ("PDS_VERSION_ID = PDS3\r\nRECORD_TYPE = FIXED_LENGTH\r\n"
             "GROUP = VIEWING_PARAMETERS\r\n  INCIDENCE_ANGLE = 41.5 <DEG>\r\n"
             "  SUB_SOLAR_AZIMUTH = 200.0 <DEG>\r\n  NORTH_AZIMUTH = 270.0\r\n"
             "END_GROUP = VIEWING_PARAMETERS\r\nEND\r\n")
    path = tmp_path / "product.IMG"
    path.write_bytes(label.encode() + np.zeros(64, np.float32).tobytes())
    azimuth, elevation, *_ = sun_from_product(str(path))
    assert azimuth == pytest.approx(290.0)
    assert elevation == pytest.approx(48.5)


def test_metadata_and_label_each_give_what_the_other_lacks(tmp_path):
    path = write_raster(tmp_path / "product.tif", ramp(4, 4), (0, 1.0, 0, 0, 0, -1.0),
                        metadata={"SUN_ELEVATION": "25"})
    (tmp_path / "product.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = 60.0 <DEG>\nSUB_SOLAR_AZIMUTH = 200.0\n"
        "NORTH_AZIMUTH = 270.0\nEND\n")
    raster = InputRaster(str(path))
    # The metadata's elevation (25), the label's azimuth (200 - 270 = 290).
    assert sun_from_product(str(path), raster.dataset) == (pytest.approx(290.0), 25.0,
                                                           "label", "metadata", 0.0)


def test_a_label_without_north_azimuth_has_north_up(tmp_path):
    path = write_raster(tmp_path / "product.tif", ramp(4, 4), (0, 1.0, 0, 0, 0, -1.0))
    (tmp_path / "product.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = 60.0 <DEG>\nSUB_SOLAR_AZIMUTH = 200.0\nEND\n")
    # Clockwise from the right edge, image up is 270: the sun lies 200 - 270 = 290 from north.
    assert sun_from_product(str(path), InputRaster(str(path)).dataset)[:2] == \
        (pytest.approx(290.0), pytest.approx(30.0))


def test_elevation_alone_is_read_from_label_or_metadata(tmp_path):
    (tmp_path / "product.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = 60.0 <DEG>\nEND\n")
    assert sun_from_product(str(tmp_path / "product.IMG"))[:2] == (None, pytest.approx(30.0))
    path = write_raster(tmp_path / "tagged.tif", ramp(4, 4), (0, 1.0, 0, 0, 0, -1.0),
                        metadata={"SUN_ELEVATION": "25"})
    raster = InputRaster(str(path))
    assert sun_from_product(str(path), raster.dataset)[:2] == (None, 25.0)


def test_label_values_that_are_no_numbers_count_as_absent(tmp_path):
    (tmp_path / "product.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = -\nSUB_SOLAR_AZIMUTH = N/A\n"
        "NORTH_AZIMUTH = .5E1\nEND\n")
    assert sun_from_product(str(tmp_path / "product.IMG"))[:2] == (None, None)
    (tmp_path / "other.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = +6.0e1\nSUB_SOLAR_AZIMUTH = 200.\n"
        "NORTH_AZIMUTH = .5E1\nEND\n")
    assert sun_from_product(str(tmp_path / "other.IMG"))[:2] == (pytest.approx(195.0),
                                                                  pytest.approx(30.0))


def test_label_values_marked_not_applicable_count_as_absent(tmp_path):
    (tmp_path / "product.LBL").write_text(
        "PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = -9998.0\nSUB_SOLAR_AZIMUTH = -9998.0\n"
        "NORTH_AZIMUTH = 270.0\nEND\n")
    assert sun_from_product(str(tmp_path / "product.IMG"))[:2] == (None, None)


HIRISE_IMAGE_OBJECT = ("OBJECT = IMAGE\n  LINES = 40\n  SAMPLE_BITS = 16\n"
                       "  SCALING_FACTOR = 2.379E-04\n  OFFSET = 0.038\nEND_OBJECT = IMAGE\n")


def _labelled_dn_image(path, label_extra: str = "") -> np.ndarray:
    dn = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) % 700 + 100)
    write_raster(path, dn, (0, 1.0, 0, 0, 0, -1.0))
    path.with_suffix(".LBL").write_text(
        "PDS_VERSION_ID = PDS3\nOBJECT = COMPRESSED_FILE\n  FILE_NAME = x\n"
        "END_OBJECT = COMPRESSED_FILE\nOBJECT = UNCOMPRESSED_FILE\n"
        + HIRISE_IMAGE_OBJECT + label_extra + "END_OBJECT = UNCOMPRESSED_FILE\nEND\n")
    return dn


def test_a_labels_dn_scaling_is_applied_where_gdal_gives_none(tmp_path):
    dn = _labelled_dn_image(tmp_path / "ESP_RED.tif")
    values, valid = InputRaster(str(tmp_path / "ESP_RED.tif")).read(0, 0, 30, 40)
    assert valid.all()
    np.testing.assert_allclose(values, dn * 2.379e-4 + 0.038, rtol=1e-6)
    # GDAL's own scale and offset win: never both.
    gdal.Translate(str(tmp_path / "scaled.tif"), str(tmp_path / "ESP_RED.tif"),
                   scaleParams=None, options="-a_scale 2 -a_offset 1")
    (tmp_path / "scaled.LBL").write_bytes((tmp_path / "ESP_RED.LBL").read_bytes())
    values, _ = InputRaster(str(tmp_path / "scaled.tif")).read(0, 0, 30, 40)
    np.testing.assert_allclose(values, dn * 2.0 + 1.0)


def test_a_mosaic_of_labelled_products_takes_their_mean_sun_and_spread(tmp_path):
    for name, azimuth in (("a", 120.0), ("b", 140.0)):
        write_raster(tmp_path / f"{name}.tif", ramp(8, 8), (0, 1.0, 0, 0, 0, -1.0))
        (tmp_path / f"{name}.LBL").write_text(
            f"PDS_VERSION_ID = PDS3\nINCIDENCE_ANGLE = 60.0\nSUB_SOLAR_AZIMUTH = {azimuth}\n"
            "NORTH_AZIMUTH = 270.0\nEND\n")
    gdal.BuildVRT(str(tmp_path / "mosaic.vrt"), [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")])
    raster = InputRaster(str(tmp_path / "mosaic.vrt"))
    sun = sun_from_product(str(tmp_path / "mosaic.vrt"), raster.dataset)
    assert sun.azimuth == pytest.approx((130.0 - 270.0) % 360)
    assert (sun.azimuth_from, sun.azimuth_spread) == ("labels", pytest.approx(10.0))


def test_a_label_beside_the_image_in_a_zip_is_read(tmp_path):
    import zipfile

    _labelled_dn_image(tmp_path / "ESP_RED.tif", "SUB_SOLAR_AZIMUTH = 200.0\n"
                       "INCIDENCE_ANGLE = 50.0\nNORTH_AZIMUTH = 270.0\n")
    with zipfile.ZipFile(tmp_path / "product.zip", "w") as archive:
        for name in ("ESP_RED.tif", "ESP_RED.LBL"):
            archive.write(tmp_path / name, name)
    inside = f"/vsizip/{tmp_path / 'product.zip'}/ESP_RED.tif"
    raster = InputRaster(inside)
    assert sun_from_product(inside, raster.dataset)[:3] == (pytest.approx(290.0),
                                                            pytest.approx(40.0), "label")
    assert raster.label_scaling == (pytest.approx(2.379e-4), pytest.approx(0.038))


def test_no_label_no_sun(tmp_path):
    path = write_raster(tmp_path / "plain.tif", ramp(4, 4), (0, 1.0, 0, 0, 0, -1.0))
    assert sun_from_product(str(path))[:2] == (None, None)


def test_real_gale_hirise_colour_is_read_as_luminance():
    image = SHARED_DATA / "gale_hirise" / "image_hirise_color_0p63m.tif"
    if not image.exists():
        pytest.skip("the shared real data folder is absent")
    raster = InputRaster(str(image))
    assert len(raster.bands) == 3 and raster.weights == (0.299, 0.587, 0.114)  # RGB + alpha
    assert raster.georef.pixel_size_m == pytest.approx(0.636, rel=0.02)
    assert "3396190" in raster.georef.crs_wkt
    values, valid = raster.read(-10, -10, 100, 100)
    assert values.shape == (100, 100) and not valid[:10].any() and valid[10:, 10:].all()


def test_band_scale_and_offset_turn_numbers_into_radiance(tmp_path):
    path = write_raster(tmp_path / "dn.tif", (ramp(8, 8) * 100).astype(np.uint16))
    ds = gdal.Open(str(path), gdal.GA_Update)
    ds.GetRasterBand(1).SetScale(1e-4)
    ds.GetRasterBand(1).SetOffset(0.2)
    ds = None
    values, _ = InputRaster(str(path)).read(0, 0, 8, 8)
    np.testing.assert_allclose(values, ramp(8, 8) * 100 * 1e-4 + 0.2, rtol=1e-6)


def test_pixel_size_is_measured_on_the_ground_not_in_map_units(tmp_path):
    # Web Mercator stretches a pixel by 1 / cos(latitude): 10 map units at 60 N are 5 m.
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    to_map = osr.CoordinateTransformation(_wgs84(), srs)
    x, y, _ = to_map.TransformPoint(10.0, 60.0)
    path = write_raster(tmp_path / "merc.tif", ramp(10, 10), (x - 50, 10.0, 0, y + 50, 0, -10.0),
                        wkt=srs.ExportToWkt())
    assert InputRaster(str(path)).georef.pixel_size_m == pytest.approx(5.0, rel=0.01)


def _wgs84() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def test_north_of_an_image_without_a_grid_comes_from_its_label(tmp_path):
    # NORTH_AZIMUTH is clockwise from the image's right edge: 0 puts north on the right.
    path = write_raster(tmp_path / "product.tif", ramp(4, 4), None, wkt="")
    (tmp_path / "product.LBL").write_text("PDS_VERSION_ID = PDS3\nNORTH_AZIMUTH = 0.0\nEND\n")
    assert InputRaster(str(path), pixel_size=1.0).georef.north_deg == pytest.approx(90.0)
    (tmp_path / "product.LBL").unlink()
    assert InputRaster(str(path), pixel_size=1.0).georef.north_deg == 0.0


UTM_35S = 32735


@pytest.mark.parametrize("col, row, north, mirrored", [
    ((1, 0), (0, -1), 0.0, False),     # north up
    ((-1, 0), (0, 1), 180.0, False),   # turned round, as some raw products are
    ((0, -1), (1, 0), 270.0, True),    # transposed: east down, north left
    ((-1, 0), (0, -1), 0.0, True)])    # east to the left
def test_an_image_placed_by_gcps_alone_is_framed_by_them(tmp_path, col, row, north, mirrored):
    """Each image pixel (i, j) lies at (500000, 6000000) + i * col + j * row, in metres."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(UTM_35S)
    path = write_raster(tmp_path / "gcps.tif", ramp(40, 40), None, wkt="")
    dataset = gdal.Open(str(path), gdal.GA_Update)
    dataset.SetGCPs([gdal.GCP(500000.0 + 8 * (i * col[0] + j * row[0]),
                              6000000.0 + 8 * (i * col[1] + j * row[1]), 0, i, j)
                     for i, j in ((0, 0), (40, 0), (0, 40), (40, 40))], srs.ExportToWkt())
    dataset = None
    georef = InputRaster(str(path), pixel_size=8.0).georef
    # UTM's grid north is within a degree of true north near its central meridian.
    assert georef.north_deg == pytest.approx(north, abs=1.0) or \
        georef.north_deg == pytest.approx(north + 360.0, abs=1.0)
    assert georef.mirrored is mirrored


def test_an_image_placed_by_rpcs_alone_is_framed_by_them(tmp_path):
    from tests.rasters import write_rpc_only  # north up, east right

    georef = InputRaster(str(write_rpc_only(tmp_path / "rpc.tif")), pixel_size=1.0).georef
    assert georef.north_deg == pytest.approx(0.0, abs=0.01) and georef.mirrored is False

@pytest.mark.parametrize("step, mirrored", [(-1.0, False), (1.0, True)])
def test_a_crs_counting_longitude_west(tmp_path, step, mirrored):
    # Mars planetographic (IAU 49911): map x is westing, so an image with east on the right
    # has a negative x step; it is not mirrored, and north is up either way.
    source = write_raster(tmp_path / "image.tif", ramp(16, 16))
    path = tmp_path / "westing.vrt"
    ds = gdal.GetDriverByName("VRT").CreateCopy(str(path), gdal.Open(str(source)))
    srs = osr.SpatialReference()
    srs.SetFromUserInput("IAU_2015:49911")
    ds.SetSpatialRef(srs)
    ds.SetGeoTransform((-100_000.0, step, 0.0, 4_150_000.0, 0.0, -1.0))
    ds = None
    georef = InputRaster(str(path)).georef
    assert georef.mirrored is mirrored
    assert georef.north_deg == pytest.approx(0.0, abs=1e-6) or \
        georef.north_deg == pytest.approx(360.0, abs=1e-6)
    # At 70 N of an equirectangular grid true at the equator, pixels are cos 70 as wide.
    lat = math.radians(4_150_000.0 / 3_396_190.0 * 180 / math.pi)
    assert georef.aspect == pytest.approx(math.cos(lat), rel=1e-3)


def test_a_local_crs_keeps_its_linear_unit(tmp_path):
    local = ('LOCAL_CS["site grid",LOCAL_DATUM["d",0],UNIT["US survey foot",0.304800609601219],'
             'AXIS["X",EAST],AXIS["Y",NORTH]]')
    path = write_raster(tmp_path / "local.tif", ramp(8, 8), (0, 2.0, 0, 0, 0, -2.0), wkt=local)
    assert InputRaster(str(path)).georef.pixel_size_m == pytest.approx(2 * 0.3048006, rel=1e-6)


def test_a_local_grid_turned_anticlockwise_has_north_clockwise_of_image_up(tmp_path):
    # One row up steps (-1.5, +2.6) m in the site's x and y: toward 330 degrees, so north lies
    # 30 degrees clockwise of image up.
    local = ('LOCAL_CS["site grid",LOCAL_DATUM["d",0],UNIT["metre",1],'
             'AXIS["X",EAST],AXIS["Y",NORTH]]')
    turn = math.radians(30.0)
    gt = (0, 2 * math.cos(turn), 3 * math.sin(turn), 0, 2 * math.sin(turn), -3 * math.cos(turn))
    path = write_raster(tmp_path / "turned.tif", ramp(8, 8), gt, wkt=local)
    georef = InputRaster(str(path)).georef
    assert georef.north_deg == pytest.approx(30.0) and not georef.mirrored


@pytest.mark.parametrize("mirrored, in_image", [(False, 100.0), (True, 320.0)])
def test_an_azimuth_turns_into_the_image_and_back(mirrored, in_image):
    """North 30 degrees clockwise of image up; a sun at 70 from north lies 30 + 70 clockwise of
    image up, or, with east on the image's left, 30 - 70."""
    georef = Georeferencing(None, "", 1.0, north_deg=30.0, mirrored=mirrored)
    assert georef.image_azimuth(70.0) == pytest.approx(in_image)
    assert georef.north_azimuth(in_image) == pytest.approx(70.0)


def test_a_long_strips_sample_spans_its_short_side(tmp_path):
    """A 200 x 40 000 strip decimated alike on both sides would be sampled in 5 columns, here
    all off its bright tenth: the scene mean (the input's scaling) would be off by a quarter."""
    image = np.full((40_000, 200), 50, np.uint8)
    image[:, :20] = 200  # true mean 65
    path = write_raster(tmp_path / "strip.tif", image, (0, 1.0, 0, 0, 0, -1.0))
    sample = InputRaster(str(path)).sample()
    assert sample.size <= 1024 * 64 and sample.mean() == pytest.approx(65.0, rel=0.03)


def test_a_black_collar_is_counted_on_every_side(tmp_path):
    path = write_raster(tmp_path / "collar.tif", np.pad(ramp(40, 40) + 5, 1),
                        (0, 1.0, 0, 0, 0, -1.0))
    assert InputRaster(str(path)).zero_rim() == 1.0
