"""The algorithm in real QGIS Processing: registration, a real run, bad input, cancel."""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np
import processing
import pytest
from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProject,
    QgsRasterLayer,
    QgsRasterRange,
    QgsVectorLayer,
)

import mars_dtm_plugin
from tests.conftest import BUILT

from .conftest import (
    ALGORITHM_ID,
    GEOTRANSFORM,
    GROUND_PIXEL_M,
    MARS_EQC_WKT,
    expected_identity_heights,
    read_raster,
    same_crs,
    terrain_image,
    write_geotiff,
)


def run(parameters: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    return processing.run(ALGORITHM_ID, parameters, feedback=feedback)


def test_provider_comes_from_the_assembled_plugin(provider):
    assert Path(mars_dtm_plugin.__file__).resolve().parent == (BUILT / "mars_dtm_plugin").resolve()
    assert provider.id() == "marsdtm"
    assert not provider.icon().isNull()
    alg = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    assert alg is not None
    assert (alg.displayName(), alg.group(), alg.groupId()) == (
        "Predict DTM from image", "Raster terrain analysis", "rasterterrainanalysis")
    assert not alg.icon().isNull()
    assert "metres" in alg.shortHelpString()


def test_parameters(provider):
    alg = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["INPUT", "BAND", "MODEL", "SUN_AZIMUTH", "SUN_ELEVATION", "REFERENCE_DTM",
                     "OVERLAP", "PIXEL_SIZE", "REFERENCE_RESOLUTION", "PROVIDER", "OUTPUT"]
    assert alg.parameterDefinition("REFERENCE_DTM").flags() & \
        QgsProcessingParameterDefinition.FlagOptional
    band = alg.parameterDefinition("BAND")
    assert isinstance(band, QgsProcessingParameterBand)
    assert band.parentLayerParameterName() == "INPUT"
    assert band.flags() & QgsProcessingParameterDefinition.FlagOptional
    # No path as default: saved models and batches must not carry this profile's folder.
    assert alg.parameterDefinition("MODEL").defaultValue() is None
    assert alg.parameterDefinition("MODEL").flags() & QgsProcessingParameterDefinition.FlagOptional
    for name in ("OVERLAP", "PIXEL_SIZE", "REFERENCE_RESOLUTION", "PROVIDER"):
        assert alg.parameterDefinition(name).flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert alg.parameterDefinition("PROVIDER").options() == [
        "Auto (GPU when available)", "CPU", "CUDA (NVIDIA GPU)"]
    assert "Required" in alg.parameterDefinition("SUN_AZIMUTH").help()
    # Every number field has a name for the sentence that refuses text typed into it.
    from mars_dtm_plugin.processing.predict_algorithm import NUMBER_NAMES

    assert set(NUMBER_NAMES) == {"BAND", "PROVIDER"} | {
        p.name() for p in alg.parameterDefinitions()
        if isinstance(p, QgsProcessingParameterNumber)}
    assert isinstance(alg.parameterDefinition("OUTPUT"), QgsProcessingParameterRasterDestination)
    assert alg.canExecute() == (True, "")


def test_run_gives_a_dtm_on_the_input_grid(provider, identity_model, image_factory, tmp_path):
    image = image_factory(width=150, height=110)
    output = tmp_path / "dtm.tif"
    messages: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: messages.append(f"progress {value}"))
    feedback.pushInfo = lambda text: messages.append(text)  # keep the log to check it
    warnings: list[str] = []
    feedback.pushWarning = lambda text: warnings.append(text)

    result = run({"INPUT": str(image), "MODEL": str(identity_model), "OUTPUT": str(output)},
                 feedback)

    assert result["OUTPUT"] == str(output)
    heights, geotransform, wkt, _ = read_raster(output)
    source, source_gt, source_wkt, _ = read_raster(image)
    assert heights.shape == source.shape
    assert geotransform == pytest.approx(source_gt) and geotransform == pytest.approx(GEOTRANSFORM)
    assert same_crs(wkt, source_wkt) and same_crs(wkt, MARS_EQC_WKT)
    # Identity model, heights in units of the 2 m pixel: the stretched image, up to a constant.
    expected = expected_identity_heights(source, GROUND_PIXEL_M)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)
    log = "\n".join(messages)
    assert "CPUExecutionProvider" in log and "Tiles:" in log and str(output) in log
    assert not warnings  # Auto without a GPU is no cause for a warning
    assert "Finished in" in log and "progress 100" in log


def test_a_reference_dtm_layer_gives_the_dtm_its_datum(provider, identity_model, image_factory,
                                                       tmp_path):
    # A DTM of 40 m pixels, 1 234 m up, around the image: a layer of the project.
    image = image_factory(width=150, height=110)
    wider = (GEOTRANSFORM[0] - 400, 40.0, 0.0, GEOTRANSFORM[3] + 400, 0.0, -40.0)
    reference = write_geotiff(tmp_path / "mola.tif", np.full((30, 30), 1234.0, np.float32),
                              geotransform=wider)
    layer = QgsRasterLayer(str(reference), "MOLA")
    QgsProject.instance().addMapLayer(layer)
    try:
        output = tmp_path / "dtm.tif"
        run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer.id(),
             "OUTPUT": str(output)})
        heights, *_ = read_raster(output)
        relative = tmp_path / "relative.tif"
        run({"INPUT": str(image), "MODEL": str(identity_model), "OUTPUT": str(relative)})
        # The detail is the model's; beyond it, the reference's flat ground 1 234 m up.
        assert heights.mean() == pytest.approx(1234.0, abs=0.05)
        assert abs(read_raster(relative)[0].mean()) < 0.01
        assert "mola.tif" in gdal.Open(str(output)).GetMetadataItem("MARSDTM_REFERENCE")
        # Trusted down to 160 m, four of its pixels: the model's relief is kept up to there.
        smoother = tmp_path / "smoother.tif"
        run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer.id(),
             "REFERENCE_RESOLUTION": 160.0, "OUTPUT": str(smoother)})
        sigma = [float(re.search(r"beyond ([0-9.]+) px", gdal.Open(str(path)).GetMetadataItem(
            "MARSDTM_REFERENCE"))[1]) for path in (output, smoother)]
        assert sigma[1] / sigma[0] == pytest.approx(4.0, rel=0.01)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_a_reference_dtm_layer_is_read_with_its_open_options(provider, identity_model,
                                                             image_factory, tmp_path):
    # The file's own georeferencing puts it far from the image; its world file, which the
    # layer is opened to prefer, puts it around the image.
    image = image_factory(width=150, height=110)
    far = (GEOTRANSFORM[0] + 1e6, 40.0, 0.0, GEOTRANSFORM[3], 0.0, -40.0)
    reference = write_geotiff(tmp_path / "mola.tif", np.full((30, 30), 1234.0, np.float32),
                              geotransform=far)
    left, top = GEOTRANSFORM[0] - 400, GEOTRANSFORM[3] + 400
    (tmp_path / "mola.tfw").write_text(f"40\n0\n0\n-40\n{left + 20}\n{top - 20}\n")
    layer = QgsRasterLayer(f"{reference}|option:GEOREF_SOURCES=WORLDFILE,INTERNAL", "MOLA")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        output = tmp_path / "dtm.tif"
        run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer.id(),
             "OUTPUT": str(output)})
        assert read_raster(output)[0].mean() == pytest.approx(1234.0, abs=0.05)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def _reference_layer(tmp_path: Path, wkt: str | None = MARS_EQC_WKT, patch: float | None = None,
                     **kw) -> QgsRasterLayer:
    """A DTM of 40 m pixels, 1 234 m up, around the 150 x 110 image of ``image_factory``; with
    ``patch``, 3 x 3 of its pixels under the image hold that value."""
    wider = (GEOTRANSFORM[0] - 400, 40.0, 0.0, GEOTRANSFORM[3] + 400, 0.0, -40.0)
    heights = np.full((30, 30), 1234.0, np.float32)
    if patch is not None:
        heights[12:15, 12:15] = patch
    reference = write_geotiff(tmp_path / "mola.tif", heights, geotransform=wider, wkt=wkt, **kw)
    return QgsRasterLayer(str(reference), "MOLA")


def test_the_reference_dtm_layer_s_nodata_is_read_as_qgis_shows_it(provider, identity_model,
                                                                   image_factory, tmp_path):
    image = image_factory(width=150, height=110)
    for folder in ("given", "off"):
        (tmp_path / folder).mkdir()
    given = _reference_layer(tmp_path / "given", patch=-9999.0)  # a nodata value set in QGIS
    given.dataProvider().setUserNoDataValue(1, [QgsRasterRange(-9999, -9999)])
    switched_off = _reference_layer(tmp_path / "off", patch=0.0, nodata=0.0)  # 0 m is ground
    switched_off.dataProvider().setUseSourceNoDataValue(1, False)
    means = []
    for layer in (given, switched_off):
        output = tmp_path / f"{layer.source().split('/')[-2]}.tif"
        run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer,
             "OUTPUT": str(output)})
        means.append(read_raster(output)[0].mean())
    assert means[0] == pytest.approx(1234.0, abs=0.05)  # the hole bridged by flat ground
    assert means[1] < 1234.0 - 50  # the patch at 0 m pulls the datum down


def _scaled_layer(tmp_path: Path, stored: np.ndarray, **kw) -> QgsRasterLayer:
    """``stored`` as Int16 heights of (h - 1000) / 0.5 (the band's scale and offset)."""
    floats = write_geotiff(tmp_path / "float.tif", stored, **kw)
    gdal.Translate(str(tmp_path / "scaled.tif"), str(floats), outputType=gdal.GDT_Int16)
    ds = gdal.Open(str(tmp_path / "scaled.tif"), gdal.GA_Update)
    ds.GetRasterBand(1).SetScale(0.5)
    ds.GetRasterBand(1).SetOffset(1000.0)
    ds = None
    return QgsRasterLayer(str(tmp_path / "scaled.tif"), "MOLA")


def test_nodata_set_in_qgis_is_taken_as_shown_after_the_band_s_scale(tmp_path):
    # QGIS shows the stored -32768 as -15384 m, and the value set in Transparency is one it
    # shows; the engine compares stored values.
    from mars_dtm_plugin.processing.predict_algorithm import layer_nodata

    layer = _scaled_layer(tmp_path, np.zeros((30, 30), np.float32))
    layer.dataProvider().setUserNoDataValue(1, [QgsRasterRange(-15384, -15384),
                                                QgsRasterRange(1000, 1010)])
    assert layer_nodata(layer) == ((-32768.0, -32768.0), (0.0, 20.0))


def test_a_scaled_reference_layer_s_nodata_set_in_qgis_holes_it_end_to_end(
        provider, identity_model, image_factory, tmp_path):
    # The patch's stored -9999 shows in QGIS as -3999.5 m.
    image = image_factory(width=150, height=110)
    wider = (GEOTRANSFORM[0] - 400, 40.0, 0.0, GEOTRANSFORM[3] + 400, 0.0, -40.0)
    stored = np.full((30, 30), (1234.0 - 1000) / 0.5, np.float32)
    stored[12:15, 12:15] = -9999
    layer = _scaled_layer(tmp_path, stored, geotransform=wider)
    layer.dataProvider().setUserNoDataValue(1, [QgsRasterRange(-3999.5, -3999.5)])
    output = tmp_path / "dtm.tif"
    run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer,
         "OUTPUT": str(output)})
    assert read_raster(output)[0].mean() == pytest.approx(1234.0, abs=0.05)


def test_a_crs_set_on_the_reference_dtm_layer_places_it(provider, identity_model,
                                                        image_factory, tmp_path):
    image = image_factory(width=150, height=110)
    layer = _reference_layer(tmp_path, wkt=None)
    assert not layer.crs().isValid()
    layer.setCrs(QgsCoordinateReferenceSystem.fromWkt(MARS_EQC_WKT))
    output = tmp_path / "dtm.tif"
    messages: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = messages.append
    run({"INPUT": str(image), "MODEL": str(identity_model), "REFERENCE_DTM": layer,
         "OUTPUT": str(output)}, feedback)
    assert read_raster(output)[0].mean() == pytest.approx(1234.0, abs=0.05)
    assert any(line.startswith("Reference DTM's CRS: the layer's") for line in messages)


def test_a_reference_dtm_layer_the_run_cannot_read_as_qgis_does_is_refused_by_name(
        provider, identity_model, image_factory, tmp_path):
    image = image_factory(width=150, height=110)
    several = _reference_layer(tmp_path)
    several.dataProvider().setUserNoDataValue(1, [QgsRasterRange(-9999, -9999),
                                                  QgsRasterRange(0, 10)])
    tiles = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png", "tiles", "wms")
    text = tmp_path / "notes.txt"
    text.write_text("not a DTM")
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    for reference, says in [
            (several, "The reference DTM layer 'MOLA' has several nodata values, or a range "
                      "of them, set in QGIS; the run applies one: keep one"),
            (tiles, "The reference DTM layer 'tiles' is not a raster file; save it as a "
                    "GeoTIFF first."),
            (str(text), f"GDAL cannot read '{text}' as a raster.")]:
        parameters = {"INPUT": str(image), "MODEL": str(identity_model),
                      "REFERENCE_DTM": reference, "OUTPUT": str(tmp_path / "dtm.tif")}
        ok, message = alg.checkParameterValues(parameters, QgsProcessingContext())
        assert not ok and message.startswith(says)
        with pytest.raises(QgsProcessingException, match=re.escape(says)):
            run(parameters)  # batches and models skip the check: the run says the same
        assert not (tmp_path / "dtm.tif").exists()


@pytest.mark.parametrize("file_crs", [None, "EPSG:4087"])  # none, or Earth's in place of Mars's
def test_a_crs_set_on_the_layer_is_the_dtms(provider, identity_model, image_factory, tmp_path,
                                            file_crs):
    # A grid far enough south that a Mars and an Earth pixel differ by 7 % on the ground.
    top = -2_000_000.0
    wkt = QgsCoordinateReferenceSystem(file_crs).toWkt() if file_crs else None
    image = image_factory("scene.tif", wkt=wkt, geotransform=(1_250_000.0, 2.0, 0.0, top, 0.0,
                                                              -2.0))
    before = image.read_bytes()
    layer = QgsRasterLayer(str(image), "scene")
    assert layer.isValid() and layer.crs().isValid() == bool(file_crs)
    layer.setCrs(QgsCoordinateReferenceSystem.fromWkt(MARS_EQC_WKT))
    output = tmp_path / "dtm.tif"
    messages: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = lambda text: messages.append(text)

    run({"INPUT": layer, "MODEL": str(identity_model), "OUTPUT": str(output)}, feedback)

    heights, geotransform, out_wkt, _ = read_raster(output)
    source, *_ = read_raster(image)
    assert same_crs(out_wkt, MARS_EQC_WKT) and geotransform[3] == top
    assert image.read_bytes() == before  # the input file is left as it was
    assert any(line.startswith("CRS: the layer's") for line in messages)
    # Heights in ground pixels of Mars at the scene's centre (row 55 of 110).
    ground_pixel = 2.0 * math.sqrt(math.cos((top - 110.0) / 3_396_190.0))
    expected = expected_identity_heights(source, ground_pixel)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)


def test_what_to_check_in_the_input_is_a_warning(provider, identity_model, tmp_path):
    from .conftest import write_geotiff

    collared = np.pad(terrain_image(80, 70, 3)[8:-8, 8:-8], 8)  # zeros all round, no nodata
    messages, warnings = [], []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = messages.append
    feedback.pushWarning = warnings.append
    run({"INPUT": str(write_geotiff(tmp_path / "collared.tif", collared)),
         "MODEL": str(identity_model), "OUTPUT": str(tmp_path / "dtm.tif")}, feedback)
    assert [w for w in warnings if "black collar" in w] and \
        not [m for m in messages if "black collar" in m]


@pytest.mark.parametrize("name", ["dtm", "dtm.png", "dtm.v2"])
def test_an_output_that_is_not_a_geotiff_is_refused_before_the_run(provider, image_factory,
                                                                   tmp_path, name):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    ok, message = alg.checkParameterValues(
        {"INPUT": str(image_factory()), "OUTPUT": str(tmp_path / name)}, QgsProcessingContext())
    assert not ok and "end its name with .tif" in message
    assert alg.checkParameterValues({"INPUT": str(image_factory()),
                                     "OUTPUT": str(tmp_path / "dtm.TIF")},
                                    QgsProcessingContext())[0]


@pytest.mark.parametrize("name", ["dtm.tif", "dtm.tiff", "DTM.TIFF"])
def test_the_dialog_takes_every_name_the_run_writes(provider, tmp_path, name):
    output = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) \
        .parameterDefinition("OUTPUT")  # the dialog asks it before it runs
    assert output.isSupportedOutputValue(str(tmp_path / name), QgsProcessingContext()) == \
        (True, "")


class ErrorsKept(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error: str, fatalError: bool = False) -> None:
        self.errors.append(error)


def test_an_unreadable_input_file_is_named_as_such(provider, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    parameters = {"INPUT": str(text), "OUTPUT": str(tmp_path / "dtm.tif")}
    ok, message = alg.checkParameterValues(parameters, QgsProcessingContext())
    assert not ok and message == f"GDAL cannot read '{text}' as a raster."
    # Batches and models run without that check: the run says the same.
    feedback = ErrorsKept()
    assert not alg.run(parameters, QgsProcessingContext(), feedback)[1]
    assert any(f"GDAL cannot read '{text}' as a raster." in error for error in feedback.errors)
    assert not (tmp_path / "dtm.tif").exists()


def test_nodata_set_on_the_layer_is_nodata(provider, identity_model, tmp_path):
    from qgis.core import QgsRasterRange

    from .conftest import write_geotiff

    pixels = np.pad(terrain_image(70, 60), 6)  # a black collar the file does not mark
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "collared.tif", pixels)), "collared")
    layer.dataProvider().setUserNoDataValue(1, [QgsRasterRange(0, 0)])  # Transparency tab
    QgsProject.instance().addMapLayer(layer)
    output = tmp_path / "dtm.tif"
    run({"INPUT": layer.id(), "MODEL": str(identity_model), "OUTPUT": str(output)})
    heights, _, _, nodata = read_raster(output)
    assert ((heights == nodata) == (pixels == 0)).all()
    expected = expected_identity_heights(pixels[6:-6, 6:-6], GROUND_PIXEL_M)
    inner = heights[6:-6, 6:-6]
    np.testing.assert_allclose(inner - inner.mean(), expected - expected.mean(), atol=1e-3)


def test_the_files_nodata_switched_off_on_the_layer_is_read_as_values(
        provider, identity_model, tmp_path):
    from .conftest import write_geotiff

    pixels = terrain_image(70, 60)
    pixels[10:20] = -5  # the file's nodata value, which the layer draws as values
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "marked.tif", pixels, nodata=-5)), "m")
    layer.dataProvider().setUseSourceNoDataValue(1, False)  # Transparency: "No data value" off
    QgsProject.instance().addMapLayer(layer)
    output = tmp_path / "dtm.tif"
    run({"INPUT": layer.id(), "MODEL": str(identity_model), "OUTPUT": str(output)})
    heights, _, _, nodata = read_raster(output)
    assert (heights != nodata).all()
    expected = expected_identity_heights(pixels, GROUND_PIXEL_M)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)


def test_the_layers_open_options_and_a_bar_in_its_file_name_are_kept(
        provider, identity_model, tmp_path):
    """A layer opened with GEOREF_SOURCES=WORLDFILE lies where its world file puts it, not where
    its file's own geotransform would: the DTM must lie where QGIS shows the image."""
    from .conftest import write_geotiff

    image = write_geotiff(tmp_path / "scene|A.tif", terrain_image(70, 60))
    (tmp_path / "scene|A.tfw").write_text("2.0\n0.0\n0.0\n-2.0\n-50453.0\n30001.0\n")
    layer = QgsRasterLayer(f"{image}|option:GEOREF_SOURCES=WORLDFILE,INTERNAL", "placed")
    assert layer.isValid() and layer.extent().xMinimum() == -50454.0
    QgsProject.instance().addMapLayer(layer)
    output = tmp_path / "dtm.tif"
    run({"INPUT": layer.id(), "MODEL": str(identity_model), "OUTPUT": str(output)})
    _, transform, _, _ = read_raster(output)
    assert transform == (-50454.0, 2.0, 0.0, 30002.0, 0.0, -2.0)


def test_the_run_takes_what_it_needs_from_the_project_before_it_starts(
        provider, identity_model, tmp_path):
    """prepareAlgorithm (QGIS's main thread) reads the layer; processAlgorithm, which QGIS runs
    in a worker thread, must not look it up in the project again."""
    from .conftest import write_geotiff

    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif", terrain_image(70, 60))), "s")
    QgsProject.instance().addMapLayer(layer)
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    output = tmp_path / "dtm.tif"
    parameters = {"INPUT": layer.id(), "MODEL": str(identity_model), "OUTPUT": str(output)}
    assert alg.prepare(parameters, context, feedback)
    QgsProject.instance().removeMapLayer(layer.id())  # gone from the project after prepare
    assert alg.runPrepared(parameters, context, feedback) == {"OUTPUT": str(output)}
    assert output.exists()


def test_an_image_placed_by_rpcs_alone_runs_with_its_pixel_size_and_keeps_them(
        provider, identity_model, tmp_path):
    from tests.rasters import write_rpc_only

    source = write_rpc_only(tmp_path / "raw.tif")
    output = tmp_path / "dtm.tif"
    with pytest.raises(QgsProcessingException, match="RPCs"):
        run({"INPUT": str(source), "MODEL": str(identity_model), "OUTPUT": str(output)})
    run({"INPUT": str(source), "MODEL": str(identity_model), "PIXEL_SIZE": 0.5,
         "OUTPUT": str(output)})
    dtm = gdal.Open(str(output))
    assert dtm.GetGeoTransform(can_return_null=True) is None
    assert dtm.GetMetadata("RPC")["LINE_NUM_COEFF"].split()[2] == "-1"


def test_a_geopackage_with_a_table_beside_the_image_is_read_as_the_image(
        provider, identity_model, image_factory, tmp_path):
    from osgeo import ogr

    package = tmp_path / "mixed.gpkg"
    gdal.Translate(str(package), str(image_factory(width=70, height=60)), format="GPKG")
    source = ogr.Open(str(package), 1)
    source.CreateLayer("notes", geom_type=ogr.wkbPoint)
    source = None
    output = tmp_path / "dtm.tif"
    run({"INPUT": str(package), "MODEL": str(identity_model), "OUTPUT": str(output)})
    assert read_raster(output)[0].shape == (60, 70)


@pytest.mark.parametrize("placed", [False, True])
def test_a_pixel_size_runs_an_image_without_georeferencing(provider, identity_model,
                                                           image_factory, tmp_path, placed):
    image = image_factory("plain.tif", wkt=None, geotransform=None, width=90, height=70)
    if placed:  # a grid with a CRS: the pixel size given replaces the measured one
        image = image_factory("placed.tif", width=90, height=70)
    output = tmp_path / f"dtm_{placed}.tif"
    run({"INPUT": str(image), "MODEL": str(identity_model), "PIXEL_SIZE": 5.0,
         "OUTPUT": str(output)})
    heights, geotransform, wkt, _ = read_raster(output)
    source = read_raster(image)[0]
    expected = expected_identity_heights(source, 5.0)  # heights in units of 5 m pixels
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)
    if placed:
        assert geotransform == pytest.approx(GEOTRANSFORM) and same_crs(wkt, MARS_EQC_WKT)


def test_an_image_placed_by_ground_control_points_gives_a_dtm_placed_alike(
        provider, identity_model, tmp_path):
    image = write_gcp_only(tmp_path / "gcp.tif")
    output = tmp_path / "dtm.tif"
    run({"INPUT": str(image), "MODEL": str(identity_model), "PIXEL_SIZE": 2.0,
         "OUTPUT": str(output)})
    # QGIS places both layers by their points (through a warped VRT): the same extent.
    placed = [QgsRasterLayer(str(path), path.stem) for path in (image, output)]
    assert all(layer.isValid() for layer in placed)
    assert placed[1].crs() == placed[0].crs()
    assert placed[1].extent() == placed[0].extent()
    assert placed[1].extent().xMinimum() == pytest.approx(1000.0, abs=2.0)


def test_rgb_band_choice(provider, identity_model, tmp_path):
    from .conftest import write_geotiff

    planes = np.stack([terrain_image(80, 70, seed) for seed in (1, 2, 3)])
    image = write_geotiff(tmp_path / "rgb.tif", planes)
    output = tmp_path / "band2.tif"
    run({"INPUT": str(image), "BAND": 2, "MODEL": str(identity_model), "OUTPUT": str(output)})
    heights = read_raster(output)[0]
    expected = expected_identity_heights(planes[1], GROUND_PIXEL_M)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)


@pytest.mark.parametrize("band", [1, None])  # None: band 1 of bands not tagged RGB
def test_nodata_set_in_qgis_on_another_band_leaves_the_band_read_whole(
        provider, identity_model, tmp_path, band):
    planes = np.stack([terrain_image(80, 70, seed) for seed in (1, 2, 3)])
    planes[0, 10:20], planes[2, 30:40] = -7.0, -7.0  # a value band 3 marks as nodata in QGIS
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "rgb.tif", planes)), "rgb")
    layer.dataProvider().setUserNoDataValue(3, [QgsRasterRange(-7.0, -7.0)])  # a script's
    QgsProject.instance().addMapLayer(layer)
    output = tmp_path / "band1.tif"
    run({"INPUT": layer.id(), "BAND": band, "MODEL": str(identity_model),
         "OUTPUT": str(output)})
    heights, _, _, nodata = read_raster(output)
    assert (heights != nodata).all()  # band 1's -7 is a value, as QGIS draws it


def test_a_crs_set_on_an_image_without_a_grid_is_not_said_to_place_its_dtm(
        provider, identity_model, image_factory, tmp_path):
    image = image_factory("plain.tif", wkt=None, geotransform=None, width=90, height=70)
    layer = QgsRasterLayer(str(image), "plain")
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    messages: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = messages.append
    output = tmp_path / "dtm.tif"
    run({"INPUT": layer, "MODEL": str(identity_model), "PIXEL_SIZE": 5.0,
         "OUTPUT": str(output)}, feedback)
    _, geotransform, wkt, _ = read_raster(output)
    assert wkt == "" and geotransform == (0, 1, 0, 0, 0, 1)  # GDAL's for none
    assert not any("CRS: the layer's" in message for message in messages)


def test_sun_azimuth_needed_and_given(provider, tmp_path, image_factory):
    from tests.models import write_test_model

    model = write_test_model(tmp_path / "rotate.onnx", "identity", sun_mode="rotate",
                             input_scaling="mean_ratio")
    image = image_factory(width=90, height=80)
    output = tmp_path / "dtm.tif"
    with pytest.raises(QgsProcessingException, match="sun azimuth"):
        run({"INPUT": str(image), "MODEL": str(model), "OUTPUT": str(output)})
    assert not output.exists()
    run({"INPUT": str(image), "MODEL": str(model), "SUN_AZIMUTH": 270.0,
         "SUN_ELEVATION": 30.0, "OVERLAP": 10, "OUTPUT": str(output)})
    # The identity model returns (I / mean - 1) x tan(elevation) in pixels: the elevation given
    # is the one used; the sun is the model's own, so nothing is rotated.
    pixels = terrain_image(90, 80).astype(np.float64)
    expected = GROUND_PIXEL_M * (pixels / pixels.mean() - 1) * math.tan(math.radians(30.0))
    heights = read_raster(output)[0]
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)
    assert gdal.Open(str(output)).GetMetadataItem("MARSDTM_TILES").endswith("overlap 10 px")


def test_checking_a_temporary_output_registers_no_layer_the_run_does_not_write(
        provider, identity_model, image_factory):
    # As the Toolbox's dialog and runAndLoadResults run it: the result is to be loaded.
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    output = QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance())
    parameters = {"INPUT": str(image_factory()), "MODEL": str(identity_model), "OUTPUT": output}
    assert alg.checkParameterValues(parameters, context)[0]
    assert context.layersToLoadOnCompletion() == {}
    result, ok = alg.run(parameters, context, QgsProcessingFeedback())
    assert ok and list(context.layersToLoadOnCompletion()) == [result["OUTPUT"]]
    assert Path(result["OUTPUT"]).is_file()


@pytest.mark.parametrize("name, value, said", [
    ("SUN_AZIMUTH", "250,5", "The sun azimuth must be a number (with a point for decimals), "
                             "not '250,5'."),
    ("SUN_ELEVATION", "abc", "The sun elevation must be a number, not 'abc'."),
    ("SUN_AZIMUTH", "1e400", "The sun azimuth must be a number, not '1e400'."),
    ("OVERLAP", "abc", "The tile overlap must be a number, not 'abc'."),
    ("PIXEL_SIZE", "0,5", "The pixel size must be a number (with a point for decimals), "
                          "not '0,5'."),
    ("REFERENCE_RESOLUTION", "fine", "The reference DTM's resolution must be a number, not "
                                     "'fine'."),
    ("OVERLAP", "2.7", "The tile overlap must be a whole number, not 2.7."),
    ("OVERLAP", 0, "The tile overlap must be at least 1, not 0."),
    ("SUN_ELEVATION", 95, "The sun elevation must be from 0 to 90, not 95."),
    ("PIXEL_SIZE", -2, "The pixel size must be at least 0, not -2."),
    ("BAND", "blue", "The band must be a number, not 'blue'."),
    ("BAND", "2.6", "The band must be a whole number, not 2.6."),
    ("PROVIDER", -1, "The choice of where to run must be from 0 to 2, not -1."),
    ("PROVIDER", 3, "The choice of where to run must be from 0 to 2, not 3.")])
@pytest.mark.parametrize("checked", [True, False])  # batches and models skip QGIS's checks
def test_a_number_out_of_place_is_refused_in_one_sentence(provider, tmp_path, image_factory,
                                                          name, value, said, checked):
    from tests.models import write_test_model

    model = write_test_model(tmp_path / "rotate.onnx", "identity", sun_mode="rotate")
    output = tmp_path / "dtm.tif"
    parameters = {"INPUT": str(image_factory()), "MODEL": str(model), "SUN_AZIMUTH": 270.0,
                  "OUTPUT": str(output), name: value}
    if checked:
        with pytest.raises(QgsProcessingException) as error:
            run(parameters)
        assert str(error.value).strip().splitlines()[-1] == said  # after "Unable to execute"
    else:
        feedback = ErrorsKept()
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        assert not algorithm.run(parameters, QgsProcessingContext(), feedback)[1]
        assert said in feedback.errors
    assert not output.exists()


@pytest.mark.parametrize("azimuth", [-90, 630])
def test_any_sun_azimuth_is_read_round_the_circle(provider, tmp_path, image_factory, azimuth):
    from tests.models import write_test_model

    model = write_test_model(tmp_path / "rotate.onnx", "identity", sun_mode="rotate")
    image = str(image_factory())
    heights = []
    for given in (azimuth, 270.0):
        output = tmp_path / f"dtm{given}.tif"
        run({"INPUT": image, "MODEL": str(model), "SUN_AZIMUTH": given, "OUTPUT": str(output)})
        heights.append(read_raster(output)[0])
    np.testing.assert_array_equal(*heights)


def test_a_model_named_in_capitals_is_taken(provider, identity_model, image_factory, tmp_path):
    model = tmp_path / "GENERATOR.ONNX"
    model.write_bytes(identity_model.read_bytes())
    output = tmp_path / "dtm.tif"
    run({"INPUT": str(image_factory()), "MODEL": str(model), "OUTPUT": str(output)})
    assert read_raster(output)[0].shape == (110, 150)


def test_a_number_given_as_text_or_an_empty_expression_is_read_as_such(provider, tmp_path,
                                                                       image_factory):
    from qgis.core import QgsProperty

    from tests.models import write_test_model

    model = write_test_model(tmp_path / "rotate.onnx", "identity", sun_mode="rotate")
    image = str(image_factory(width=90, height=80))
    empty = QgsProperty.fromExpression("NULL")
    with pytest.raises(QgsProcessingException, match="sun azimuth"):  # not read as 0
        run({"INPUT": image, "MODEL": str(model), "SUN_AZIMUTH": empty,
             "OUTPUT": str(tmp_path / "a.tif")})
    messages: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = messages.append
    run({"INPUT": image, "MODEL": str(model), "SUN_AZIMUTH": "250.5", "SUN_ELEVATION": 30,
         "OUTPUT": str(tmp_path / "b.tif")}, feedback)
    assert any("250.5" in m for m in messages)


def test_layers_inside_containers_are_read_as_qgis_shows_them(provider, identity_model,
                                                               tmp_path):
    from osgeo import gdal

    from .conftest import write_geotiff

    first, second = (terrain_image(90, 70, seed) for seed in (4, 5))
    package = tmp_path / "two.gpkg"
    for name, plane in (("first", first), ("second", second)):
        plain = write_geotiff(tmp_path / f"{name}.tif", plane)
        gdal.Translate(str(package), str(plain), format="GPKG", outputType=gdal.GDT_Float32,
                       creationOptions=[f"RASTER_TABLE={name}", "APPEND_SUBDATASET=YES"])
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(tmp_path / "first.tif", "inner.tif")
    for source, plane in ((f"GPKG:{package}:second", second),
                          (f"/vsizip/{archive}/inner.tif", first)):
        layer = QgsRasterLayer(source, "layer")
        assert layer.isValid()
        output = tmp_path / "dtm.tif"
        run({"INPUT": layer, "MODEL": str(identity_model), "OUTPUT": str(output)})
        heights = read_raster(output)[0]
        expected = expected_identity_heights(plane, GROUND_PIXEL_M)
        np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(),
                                   atol=1e-3)
        output.unlink()


def test_a_script_may_run_it_without_feedback(provider, identity_model, image_factory,
                                              tmp_path):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    context = QgsProcessingContext()
    output = tmp_path / "dtm.tif"
    result, ok = algorithm.run({"INPUT": str(image_factory()), "MODEL": str(identity_model),
                                "OUTPUT": str(output)}, context, None)
    assert ok and result["OUTPUT"] == str(output)
    assert read_raster(output)[0].shape == (110, 150)


def write_gcp_only(path: Path) -> Path:
    from osgeo import gdal, osr

    srs = osr.SpatialReference()
    srs.ImportFromWkt(MARS_EQC_WKT)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 70, 70, 1, gdal.GDT_Float32)
    ds.SetGCPs([gdal.GCP(1000.0 + 2 * x, 5000.0 - 2 * y, 0, x, y)
                for x, y in ((0, 0), (69, 0), (0, 69), (69, 69))], srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(terrain_image(70, 70, 0))
    ds = None
    return path


def bad_input_cases(tmp_path: Path, image_factory) -> dict:
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    good = image_factory("good.tif", width=70, height=70)
    broken_model = tmp_path / "broken.onnx"
    broken_model.write_bytes(b"this is not an onnx model")
    return {
        "not a raster": ({"INPUT": points}, "raster"),
        "missing band": ({"INPUT": str(good), "BAND": 3}, "Band 3 does not exist"),
        "no CRS": ({"INPUT": str(image_factory("nocrs.tif", wkt=None, geotransform=None))},
                   "no coordinate reference system"),
        "all nodata": ({"INPUT": str(image_factory("empty.tif", nodata=-5.0,
                                                   width=70, height=70))}, None),
        "unreadable model": ({"INPUT": str(good), "MODEL": str(broken_model)},
                             "not a valid ONNX model"),
        "missing model": ({"INPUT": str(good), "MODEL": str(tmp_path / "none.onnx")},
                          "does not exist"),
        "GCPs only": ({"INPUT": str(write_gcp_only(tmp_path / "gcp.tif"))},
                      "ground control points"),
        "missing reference": ({"INPUT": str(good), "REFERENCE_DTM": str(tmp_path / "no.tif")},
                              "REFERENCE_DTM"),
        "reference not a raster": ({"INPUT": str(good), "REFERENCE_DTM": points},
                                   "'points' is not a raster layer; choose a DTM."),
    }


@pytest.mark.parametrize("case", ["not a raster", "missing band", "no CRS", "all nodata",
                                  "unreadable model", "missing model", "GCPs only",
                                  "missing reference", "reference not a raster"])
def test_bad_input_is_one_clear_sentence(provider, identity_model, image_factory, tmp_path,
                                         case):
    parameters, match = bad_input_cases(tmp_path, image_factory)[case]
    if case == "all nodata":
        # Every pixel equals the nodata value.
        from .conftest import write_geotiff

        write_geotiff(Path(parameters["INPUT"]), np.full((70, 70), -5.0, np.float32),
                      nodata=-5.0)
        match = "all nodata"
    output = tmp_path / "out" / "dtm.tif"
    output.parent.mkdir()
    parameters = {"MODEL": str(identity_model), **parameters, "OUTPUT": str(output)}
    with pytest.raises(QgsProcessingException, match=match) as error:
        run(parameters)
    message = str(error.value).strip()
    assert message and "Traceback" not in message
    assert list(output.parent.iterdir()) == []  # nothing half-written, no temporary left


def test_cancel_leaves_no_output(provider, identity_model, image_factory, tmp_path):
    image = image_factory(width=200, height=200)
    output = tmp_path / "out" / "dtm.tif"
    output.parent.mkdir()
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: value > 0 and feedback.cancel())
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run({"INPUT": str(image), "MODEL": str(identity_model), "OUTPUT": str(output)},
            feedback)
    assert list(output.parent.iterdir()) == []


def test_a_run_into_a_loaded_output_shows_the_new_dtm(provider, identity_model, image_factory,
                                                      tmp_path):
    # As the dialog runs it: the result is loaded into the project, which already has it.
    output = str(tmp_path / "dtm.tif")
    first = image_factory("a.tif")
    second = image_factory("b.tif", seed=5, geotransform=(1_250_000.0, 4.0, 0.0, -280_000.0,
                                                          0.0, -4.0))
    for image in (first, second):
        processing.runAndLoadResults(ALGORITHM_ID, {"INPUT": str(image),
                                                    "MODEL": str(identity_model),
                                                    "OUTPUT": output})
    loaded = [layer for layer in QgsProject.instance().mapLayers().values()
              if Path(layer.source()) == Path(output)]
    try:
        (layer,) = loaded
        fresh = QgsRasterLayer(output, "fresh")
        assert layer.extent() == fresh.extent()
        stats = fresh.dataProvider().bandStatistics(1)
        renderer = layer.renderer()
        assert (renderer.classificationMin(), renderer.classificationMax()) == pytest.approx(
            (stats.minimumValue, stats.maximumValue), abs=1e-3)
        assert layer.dataProvider().bandStatistics(1).maximumValue == pytest.approx(
            stats.maximumValue, abs=1e-4)
    finally:
        QgsProject.instance().removeMapLayers([layer.id() for layer in loaded])
