"""The same scene through the formats planetary products come in gives the same DTM."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.errors import Caution, DtmError
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
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    _, report = run(jp2, tmp_path, "dtm.tif", model)
    assert report.sun_source == "label"
    assert report.sun_azimuth == pytest.approx(290.0)


def _run_a_crop(source, tmp_path):
    """The report of a sun-rotating model's run on a VRT crop of ``source``, kept elsewhere
    under another name."""
    crop = tmp_path / "crops" / "crop.vrt"
    crop.parent.mkdir()
    gdal.Translate(str(crop), str(source), format="VRT", srcWin=[10, 20, 80, 70])
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    return run(crop, tmp_path, "dtm.tif", model)[1]


def test_a_crop_to_a_vrt_keeps_the_products_label(tmp_path):
    jp2 = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    write_ortho(jp2, ramp(120, 120).astype(np.uint8), GT, mars_eqc_wkt(), incidence=40.0,
                sub_solar=200.0, north=270.0)
    report = _run_a_crop(jp2, tmp_path)
    assert (report.sun_source, report.sun_azimuth) == ("label", pytest.approx(290.0))
    assert report.sun_elevation == pytest.approx(50.0)


def _maxar_imd(*images: tuple[float, float], metadata_key: str = "sunAz") -> str:
    """A Maxar (DigitalGlobe) .IMD with one IMAGE group per (azimuth, elevation)."""
    groups = "".join(f"BEGIN_GROUP = IMAGE_{i}\n\tsatId = \"QB02\";\n"
                     f"\tfirstLineTime = 2005-11-25T08:54:32.000000Z;\n"
                     f"\t{metadata_key} = {az};\n\tsunEl = {el};\nEND_GROUP = IMAGE_{i}\n"
                     for i, (az, el) in enumerate(images, 1))
    return f'version = "AA";\nproductOrderId = "000000000000_01_P001";\n{groups}END;\n'


def _dimap(*points: tuple[float, float]) -> str:
    """A Pleiades DIMAP v2 document giving the sun at several points of the scene."""
    located = "".join(
        "<Located_Geometric_Values><Acquisition_Angles><AZIMUTH_ANGLE unit=\"deg\">180.1"
        "</AZIMUTH_ANGLE></Acquisition_Angles><Solar_Incidences>"
        f"<SUN_AZIMUTH unit=\"deg\">{az}</SUN_AZIMUTH><SUN_ELEVATION unit=\"deg\">{el}"
        "</SUN_ELEVATION></Solar_Incidences></Located_Geometric_Values>" for az, el in points)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Dimap_Document><Metadata_Identification>'
            '<METADATA_FORMAT version="2.0">DIMAP</METADATA_FORMAT></Metadata_Identification>'
            f"<Geometric_Data><Use_Area>{located}</Use_Area></Geometric_Data></Dimap_Document>\n")


LANDSAT_C2_MTL = """GROUP = LANDSAT_METADATA_FILE
  GROUP = IMAGE_ATTRIBUTES
    SPACECRAFT_ID = "LANDSAT_8"
    SUN_AZIMUTH = 78.1
    SUN_ELEVATION = 58.8
  END_GROUP = IMAGE_ATTRIBUTES
END_GROUP = LANDSAT_METADATA_FILE
END
"""


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


GEOEYE_METADATA = """Version Number: 2.0
======================================================================
Source Image Metadata
   Number of Source Images: 1
   Sensor: IKONOS-2
   Nominal Collection Azimuth: 237.3442 degrees
   Nominal Collection Elevation: 79.04207 degrees
   Sun Angle Azimuth: 148.4268 degrees
   Sun Angle Elevation: 38.90106 degrees
   Acquisition Date/Time: 2006-03-01 11:08 GMT
"""


RAPIDEYE_METADATA = """<?xml version="1.0" encoding="UTF-8"?>
<re:EarthObservation xmlns:re="http://schemas.rapideye.de/products/productMetadataSensor"
 xmlns:eop="http://earth.esa.int/eop" xmlns:opt="http://earth.esa.int/opt"
 xmlns:gml="http://www.opengis.net/gml"><gml:using><eop:EarthObservationEquipment>
 <eop:acquisitionParameters><re:Acquisition>
 <opt:illuminationAzimuthAngle uom="deg">163.97</opt:illuminationAzimuthAngle>
 <opt:illuminationElevationAngle uom="deg">56.47</opt:illuminationElevationAngle>
 <re:azimuthAngle uom="deg">281.2</re:azimuthAngle>
 </re:Acquisition></eop:acquisitionParameters></eop:EarthObservationEquipment></gml:using>
</re:EarthObservation>
"""


@pytest.mark.parametrize(("name", "sidecar", "text", "sun"), [
    ("image.tif", "image.IMD", _maxar_imd((67.5, 62.1)), (67.5, 62.1)),
    ("po_58204_pan_0000000.tif", "po_58204_metadata.txt", GEOEYE_METADATA, (148.4268, 38.90106)),
    ("2010-07-10T100503_RE3_1B-NAC_123.tif", "2010-07-10T100503_RE3_1B-NAC_123_metadata.xml",
     RAPIDEYE_METADATA, (163.97, 56.47)),
    ("image.tif", "image.IMD", _maxar_imd((64.0, 61.0), metadata_key="meanSunAz"),
     (64.0, 61.0)),
    ("image.tif", "image.IMD", _maxar_imd((350.0, 40.0), (20.0, 50.0)), (5.0, 45.0)),
    ("image.tif", "image.IMD", _maxar_imd((350.0, 40.0), (10.0, 60.0)), (0.0, 50.0)),
    ("LC08_L1TP_172083_20200115_20200127_01_T1_B8.TIF",
     "LC08_L1TP_172083_20200115_20200127_01_T1_MTL.txt", LANDSAT_MTL, (86.5, 58.2)),
    ("LC08_L1TP_172083_20191103_20200825_02_T1_B8.TIF",
     "LC08_L1TP_172083_20191103_20200825_02_T1_MTL.txt", LANDSAT_C2_MTL, (78.1, 58.8)),
    ("IMG_PHR1A_P_201911030830150_ORT_1234567101-001_R1C1.TIF",
     "DIM_PHR1A_P_201911030830150_ORT_1234567101-001.XML",
     _dimap((50.1, 62.0), (50.3, 62.1), (50.5, 62.2)), (50.3, 62.1)),
])
def test_earth_products_give_the_sun_from_their_metadata_files(tmp_path, name, sidecar, text,
                                                               sun):
    """GDAL reads Maxar's .IMD and Landsat's _MTL.txt into its IMD domain; several images in
    one product give the mean sun (around north: 350 and 20 make 5, not 185; 350 and 10 make
    0, not 360)."""
    source = write_raster(tmp_path / name, ramp(80, 80).astype(np.uint8), GT)
    (tmp_path / sidecar).write_text(text)
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    _, report = run(source, tmp_path, "dtm.tif", model)
    assert report.sun_source == sidecar  # the run names the file it read the sun from
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx(sun)


def test_a_crop_to_a_vrt_keeps_the_products_metadata_file(tmp_path):
    """GDAL reads a Maxar .IMD beside the image it belongs to, not beside a crop of it."""
    source = write_raster(tmp_path / "05JAN01_P001.TIF", ramp(120, 120).astype(np.uint8), GT)
    (tmp_path / "05JAN01_P001.IMD").write_text(_maxar_imd((67.5, 62.1)))
    report = _run_a_crop(source, tmp_path)
    assert report.sun_source == "05JAN01_P001.IMD"
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx((67.5, 62.1))


def test_a_mosaic_of_two_products_takes_their_mean_sun_and_says_they_differ(tmp_path):
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    parts = []
    for name, sun, x0 in (("05JAN01_P001", (67.5, 62.1), 10000.0), ("05JAN02_P001", (100.0, 50.0),
                                                                    10120.0)):
        parts.append(str(write_raster(tmp_path / f"{name}.TIF", ramp(120, 120).astype(np.uint8),
                                      (x0, *GT[1:]))))
        (tmp_path / f"{name}.IMD").write_text(_maxar_imd(sun))
    mosaic = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(mosaic), parts)
    _, report = run(mosaic, tmp_path, "dtm.tif", model)
    assert report.sun_source == "05JAN01_P001.IMD, 05JAN02_P001.IMD"
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx((83.75, 56.05))
    assert any("up to 16 degrees of azimuth from their mean" in m for m in report.messages)


@pytest.mark.parametrize(("suns", "cautioned"), [
    ([(350.0, 40.0), (20.0, 50.0)], True),  # 15 degrees each side of their mean
    ([(148.0, 40.0), (151.0, 41.0)], False)])
def test_a_product_whose_images_have_other_suns_says_so(tmp_path, suns, cautioned):
    source = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT)
    (tmp_path / "image.IMD").write_text(_maxar_imd(*suns))
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    _, report = run(source, tmp_path, "dtm.tif", model)
    said = [m for m in report.messages if "images in the product" in m]
    assert said == ([Caution("The suns of the images in the product (image.IMD) lie up to 15 "
                             "degrees of azimuth from their mean, which is used; give the sun "
                             "of the image run here")] if cautioned else [])


@pytest.mark.parametrize(("metadata", "sidecar", "source"), [
    ({"SUN_AZIMUTH": "80", "SUN_ELEVATION": "-3.2"}, None, "metadata"),
    (None, _maxar_imd((80.0, -3.2)), "image.IMD"),
])
def test_a_product_sun_below_the_horizon_names_its_source(tmp_path, metadata, sidecar, source):
    path = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT,
                        metadata=metadata)
    if sidecar:
        (tmp_path / "image.IMD").write_text(sidecar)
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    with pytest.raises(DtmError, match=rf"sun elevation in the product's {source} must be "
                                       r"above 0 and below 90 degrees, not -3.2; give it"):
        run(path, tmp_path, "dtm.tif", model)


def test_the_satellite_angles_are_not_taken_for_the_sun(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT)
    (tmp_path / "image.IMD").write_text(
        'BEGIN_GROUP = IMAGE_1\n\tsatAz = 120.0;\n\tsatEl = 70.0;\n\tmeanSatAz = 121.0;\n'
        "\tmeanSatEl = 71.0;\n\tmeanOffNadirViewAngle = 19.0;\nEND_GROUP = IMAGE_1\nEND;\n")
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    with pytest.raises(DtmError, match=r"needs the sun azimuth.*\(--sun-azimuth; Sun azimuth "
                                       r"in QGIS, SUN_AZIMUTH in qgis_process\)\.$"):
        run(source, tmp_path, "dtm.tif", model)


def _nitf_use00a(sun_elevation: str, sun_azimuth: str) -> str:
    """NITF's USE00A extension (107 characters): the sun's angles are its last two fields."""
    tre = ("000" "000.6" " " "02047" "   " " " "   " "16.40" "-002.1" + " " * 37
           + "00" "34567" "001" "025000" + " " * 12 + sun_elevation + sun_azimuth)
    assert len(tre) == 107
    return tre


@pytest.mark.parametrize(("angles", "sun"), [(("+61.3", "045.4"), (45.4, 61.3)),
                                             (("+61.3", "999.9"), None)])
def test_nitf_gives_the_sun_from_its_use00a_extension(tmp_path, angles, sun):
    """Maxar's NITF products carry the sun in USE00A; 999.9 is its 'unknown'."""
    tif = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT,
                       wkt=_utm_wkt())
    nitf = tmp_path / "image.ntf"
    gdal.Translate(str(nitf), str(tif), format="NITF",
                   creationOptions=[f"TRE=USE00A={_nitf_use00a(*angles)}"])
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
    if sun is None:
        with pytest.raises(DtmError, match="needs the sun azimuth"):
            run(nitf, tmp_path, "dtm.tif", model)
        return
    _, report = run(nitf, tmp_path, "dtm.tif", model)
    assert report.sun_source == "metadata"
    assert (report.sun_azimuth, report.sun_elevation) == pytest.approx(sun)


def _utm_wkt() -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32735)  # NITF holds Earth CRSs only
    return srs.ExportToWkt()


def test_the_dataset_metadata_comes_before_the_product_files(tmp_path):
    source = write_raster(tmp_path / "image.tif", ramp(80, 80).astype(np.uint8), GT,
                          metadata={"SUN_AZIMUTH": "123.5"})
    (tmp_path / "image.IMD").write_text(_maxar_imd((67.5, 62.1)))
    model = write_test_model(tmp_path / "sun.onnx", "ramp", sun_mode="rotate",
                             input_scaling="mean_ratio")
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


def test_a_crs_that_geotiff_keys_cannot_hold_reaches_the_output(tmp_path, model):
    from osgeo import osr

    oblique = osr.SpatialReference()
    oblique.ImportFromProj4("+proj=ob_tran +o_proj=eqc +o_lat_p=45 +o_lon_p=0 +lon_0=0 "
                            "+R=3396190 +units=m")
    source = tmp_path / "in" / "oblique.cub"
    source.parent.mkdir()
    ds = gdal.GetDriverByName("ISIS3").Create(str(source), 70, 60, 1, gdal.GDT_Float32)
    ds.SetGeoTransform(GT)
    ds.SetSpatialRef(oblique)
    ds.GetRasterBand(1).WriteArray(ramp(60, 70) + 100)
    ds = None
    out = tmp_path / "out" / "dtm.tif"
    out.parent.mkdir()
    predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
    written, given = (gdal.Open(str(path)).GetSpatialRef() for path in (out, source))
    assert written is not None and written.ExportToWkt() == given.ExportToWkt()
    assert "+proj=ob_tran" in written.ExportToWkt()
    assert sorted(p.name for p in out.parent.iterdir()) == ["dtm.tif", "dtm.tif.aux.xml"]
