"""Batch processing through the real batch dialog, and a graphical model chaining the algorithm."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import processing
import pytest
from osgeo import gdal
from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
from processing.tools import dataobjects
from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsSingleBandPseudoColorRenderer,
)

from .conftest import ALGORITHM_ID, GROUND_PIXEL_M, expected_identity_heights, read_raster, same_crs

MODEL3 = Path(__file__).parent / "data" / "predict_dtm_hillshade.model3"


def fill_batch_row(dialog: BatchAlgorithmDialog, row: int, values: dict, output: Path) -> None:
    """What a user types into one row of the batch table."""
    panel, context = dialog.mainWidget(), dataobjects.createContext()
    for name, value in values.items():
        panel.wrappers[row][panel.parameter_to_column[name]].setParameterValue(value, context)
    output_cell = panel.tblParameters.cellWidget(row + 1, panel.parameter_to_column["OUTPUT"])
    output_cell.setValue(str(output))


def test_batch_dialog_runs_two_images(provider, browser_model, qgis_iface, qgis_new_project,
                                      identity_model, image_factory, tmp_path):
    images = [image_factory(f"scene{i}.tif", width=90 + 20 * i, height=70, seed=i)
              for i in range(2)]
    outputs = [tmp_path / f"dtm{i}.tif" for i in range(2)]
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    dialog = BatchAlgorithmDialog(alg, parent=qgis_iface.mainWindow())
    dialog.mainWidget().addRow()  # the table starts with one row
    dialog.mainWidget().checkLoadLayersOnCompletion.setChecked(True)
    for row, (image, output) in enumerate(zip(images, outputs)):
        fill_batch_row(dialog, row, {"INPUT": str(image), "MODEL": str(identity_model)}, output)

    dialog.runAlgorithm()  # the dialog's own loop: one context per row, results loaded per row
    dialog.close()

    loaded = {layer.source(): layer for layer in QgsProject.instance().mapLayers().values()}
    for image, output in zip(images, outputs):
        heights, geotransform, wkt, _ = read_raster(output)
        source, source_gt, source_wkt, _ = read_raster(image)
        assert geotransform == pytest.approx(source_gt) and same_crs(wkt, source_wkt)
        expected = expected_identity_heights(source, GROUND_PIXEL_M)
        np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(),
                                   atol=1e-3)
        renderer = loaded[str(output)].renderer()  # each row's layer has its own styling
        assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
        assert renderer.classificationMax() == pytest.approx(heights.max(), abs=1e-4)


def test_model3_chains_prediction_and_hillshade(provider, identity_model, image_factory,
                                                tmp_path):
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3))
    assert [model.childAlgorithm(c).algorithmId() for c in ("predict", "hillshade")] == [
        ALGORITHM_ID, "gdal:hillshade"]
    image = image_factory(width=120, height=100)
    dtm, shade = tmp_path / "dtm.tif", tmp_path / "hillshade.tif"

    results = processing.run(model, {"image": str(image), "onnx_model": str(identity_model),
                                     "predict:DTM": str(dtm), "hillshade:Hillshade": str(shade)})

    assert Path(results["predict:DTM"]) == dtm and Path(results["hillshade:Hillshade"]) == shade
    source_gt = read_raster(image)[1]
    heights, dtm_gt = read_raster(dtm)[:2]
    shading, shade_gt = read_raster(shade)[:2]
    assert dtm_gt == pytest.approx(source_gt) and shade_gt == pytest.approx(source_gt)
    # gdal:hillshade ran on the predicted DTM with the model's settings.
    reference = gdal.DEMProcessing(str(tmp_path / "reference.tif"), str(dtm), "hillshade",
                                   azimuth=315, altitude=45, zFactor=1, computeEdges=True)
    np.testing.assert_array_equal(shading, reference.GetRasterBand(1).ReadAsArray())
    assert heights.shape == shading.shape and shading.std() > 0


def test_a_styler_outlives_any_number_of_later_runs(qgis_new_project):
    """A context may load its DTM after many more runs (one context shared by a script's
    loop): its post-processor must still be the styler, not freed."""
    from qgis.core import QgsProcessingContext
    from qgis.PyQt import sip

    from mars_dtm_plugin.processing.styling import DtmStyler

    context = QgsProcessingContext()
    context.addLayerToLoadOnCompletion(
        "first.tif", QgsProcessingContext.LayerDetails("dtm", QgsProject.instance()))
    # As the algorithm does: the context keeps only C++'s pointer.
    context.layerToLoadOnCompletionDetails("first.tif").setPostProcessor(
        DtmStyler.create(-5.0, 7.0))
    for _ in range(100):
        DtmStyler.create()
    gc.collect()

    styler = context.layerToLoadOnCompletionDetails("first.tif").postProcessor()
    assert isinstance(styler, DtmStyler) and (styler.low, styler.high) == (-5.0, 7.0)
    del context, styler  # the context deletes its post-processor: it need be kept no longer
    gc.collect()
    DtmStyler.create()
    assert not any(sip.isdeleted(kept) for kept in DtmStyler._alive)


@pytest.mark.parametrize("fill, expected", [(12.5, (12.0, 13.0)), (-9999.0, (0.0, 1.0))])
def test_a_flat_or_empty_dtm_gets_a_valid_ramp(qgis_new_project, tmp_path, fill, expected):
    from qgis.core import QgsRasterLayer

    from mars_dtm_plugin.processing.styling import style_as_dtm

    from .conftest import write_geotiff

    path = write_geotiff(tmp_path / "dtm.tif", np.full((32, 32), fill, np.float32),
                         nodata=-9999.0)  # all nodata where fill is -9999
    layer = QgsRasterLayer(str(path), "dtm")
    style_as_dtm(layer)
    renderer = layer.renderer()
    assert (renderer.classificationMin(), renderer.classificationMax()) == expected
