"""The same scene through the formats planetary products come in gives the same DTM."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.writer import NODATA
from tests.models import write_test_model
from tests.rasters import mars_eqc_wkt, ramp, read_raster, write_raster
from tests.training.fakesite import missing_value, write_ortho, write_pds_dtm

GT = (10000.0, 1.0, 0.0, -20000.0, 0.0, -1.0)


def run(source, tmp_path, name, model):
    out = tmp_path / name
    report = predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
    return read_raster(out)[0], report


@pytest.fixture
def model(tmp_path):
    return write_test_model(tmp_path / "m.onnx", "offsets")


def test_geotiff_vrt_and_jpeg2000_agree(tmp_path, model):
    image = (ramp(150, 170) % 200).astype(np.uint8)
    tif = write_raster(tmp_path / "scene.tif", image, GT)
    vrt = tmp_path / "scene.vrt"
    gdal.Translate(str(vrt), str(tif), format="VRT")
    jp2 = tmp_path / "scene.jp2"
    write_ortho(jp2, image, GT, mars_eqc_wkt())
    reference, _ = run(tif, tmp_path, "tif.tif", model)
    for source in (vrt, jp2):
        heights, _ = run(source, tmp_path, f"{source.suffix[1:]}_dtm.tif", model)
        np.testing.assert_allclose(heights, reference, atol=1e-3)
    # A GDAL connection string (as for NetCDF or HDF subdatasets) is an input like a file.
    heights, _ = run(f"GTIFF_DIR:1:{tif}", tmp_path, "dir_dtm.tif", model)
    np.testing.assert_allclose(heights, reference, atol=1e-3)


def test_jpeg2000_with_hirise_label_gives_the_sun(tmp_path):
    jp2 = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    write_ortho(jp2, ramp(80, 80).astype(np.uint8), GT, mars_eqc_wkt(), incidence=40.0,
                sub_solar=200.0, north=270.0)
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate")
    _, report = run(jp2, tmp_path, "dtm.tif", model)
    assert report.sun_source == "label"
    assert report.sun_azimuth == pytest.approx(290.0)


def _maxar_imd(*images: tuple[float, float], metadata_key: str = "sunAz") -> str:
    """A Maxar (DigitalGlobe) .IMD with one IMAGE group per (azimuth, elevation)."""
    groups = "".join(f"BEGIN_GROUP = IMAGE_{i}\n\tsatId = \"QB02\";\n"
                     f"\tfirstLineTime = 2005-11-25T08:54:32.000000Z;\n"
                     f"\t{metadata_key} = {az};\n\tsunEl = {el};\nEND_GROUP = IMAGE_{i}\n"
                     for i, (az, el) in enumerate(images, 1))
    return f'version = "AA";\nproductOrderId = "000000000000_01_P001";\n{groups}END;\n'


LANDSAT_MTL = """GROUP = L1_METADATA_FILE
  GROUP = PRODUCT_METADATA
    SPACECRAFT_ID = "LANDSAT_8"
    DATE_ACQUIRED = 2020-01-15
  END_GROUP = PRODUCT_METADATA
  GROUP = IMAGE_ATTRIBUTES
    SUN_AZIMUTH = 86.5
    SUN_ELEVATION = 58.2
  END_GROUP = IMAGE_ATTRIBUTES
END_GROUP = L1_METADATA_FILE
END
"""


@pytest.mark.parametrize(("name", "sidecar", "text", "sun"), [
    ("image.tif", "image.IMD", _maxar_imd((67.5, 62.1)), (67.5, 62.1)),
    ("image.tif", "image.IMD", _maxar_imd((64.0, 61.0), metadata_key="meanSunAz"),
     (64.0, 61.0)),
    ("image.tif", "image.IMD", _maxar_imd((350.0, 40.0), (20.0, 50.0)), (5.0, 45.0)),
    ("LC08_L1TP_172083_20200115_20200127_01_T1_B8.TIF",
     "LC08_L1TP_172083_20200115_20200127_01_T1_MTL.txt", LANDSAT_MTL, (86.5, 58.2)),
])
def test_earth_products_give_the_sun_from_their_metadata_files(tmp_path, name, sidecar, text,
                                                               sun):
    """GDAL reads Maxar's .IMD and Landsat's _MTL.txt into its IMD domain; several images in
    one product give the mean sun (around north: 350 and 20 make 5, not 185)."""
    source = write_raster(tmp_path / name, ramp(80, 80).astype(np.uint8), GT)
    (tmp_path / sidecar).write_text(text)
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate")
    _, report = run(source, tmp_path, "dtm.tif", model)
    assert report.sun_source == "label"
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx(sun)


def test_the_dataset_metadata_comes_before_the_product_files(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT,
                          metadata={"SUN_AZIMUTH": "123.5"})
    (tmp_path / "image.IMD").write_text(_maxar_imd((67.5, 62.1)))
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate")
    _, report = run(source, tmp_path, "dtm.tif", model)
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx((123.5, 62.1))


def test_pds3_float_with_missing_constant_is_nodata_there(tmp_path, model):
    values = ramp(60, 70) + 100
    values[10:20, 5:25] = missing_value()
    img = tmp_path / "DTEEC_000001_1000_000002_1000_A01.IMG"
    write_pds_dtm(img, values, ulx=1000.0, uly=2000.0, obs=("ESP_000001_1000",
                                                            "ESP_000002_1000"))
    heights, _ = run(img, tmp_path, "dtm.tif", model)
    assert np.all(heights[10:20, 5:25] == NODATA)
    assert np.all(heights[30:] != NODATA)
    dataset = gdal.Open(str(img))
    assert read_raster(tmp_path / "dtm.tif")[1].GetGeoTransform() == \
        dataset.GetGeoTransform()
