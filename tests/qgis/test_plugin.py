"""The plugin in a (stub) QGIS desktop: start-up, toolbar button, menu, dialog, unload."""

from __future__ import annotations

import subprocess
import sys

import pytest
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.gui import QgsProcessingAlgorithmDialogBase
from qgis.PyQt.QtCore import QEvent, QTimer
from qgis.PyQt.QtWidgets import QApplication, QToolBar

import mars_dtm_plugin
from mars_dtm_plugin.core import model
from mars_dtm_plugin.core.model import default_model_path
from tests.conftest import BUILT

from .conftest import read_raster


@pytest.fixture
def plugin(qgis_iface, qgis_processing, qgis_new_project, browser_model):
    """The plugin as QGIS starts it: classFactory, then initGui; unloaded afterwards."""
    registry = QgsApplication.processingRegistry()
    if registry.providerById("marsdtm") is not None:  # left by the Processing tests
        registry.removeProvider("marsdtm")
    plugin = mars_dtm_plugin.classFactory(qgis_iface)
    plugin.initGui()
    yield plugin
    plugin.unload()


def plugin_toolbars(qgis_iface) -> list[QToolBar]:
    return [bar for bar in qgis_iface.mainWindow().findChildren(QToolBar)
            if bar.objectName() == "MarsDtmToolbar"]


def test_class_factory_imports_no_qgis():
    # The package is also the engine's command line: importing it must not need QGIS.
    code = "import sys, mars_dtm_plugin; print(any(m.startswith('qgis') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=BUILT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_init_gui_adds_button_menu_and_provider(plugin, qgis_iface):
    assert QgsApplication.processingRegistry().providerById("marsdtm") is plugin.provider
    (toolbar,) = plugin_toolbars(qgis_iface)
    (action,) = plugin.actions
    assert toolbar.actions() == [action]
    assert not action.icon().isNull()
    qgis_iface.addPluginToRasterMenu.assert_called_once_with(plugin.menu, action)


def test_unload_removes_everything(qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    if registry.providerById("marsdtm") is not None:
        registry.removeProvider("marsdtm")
    plugin = mars_dtm_plugin.classFactory(qgis_iface)
    plugin.initGui()
    (action,) = plugin.actions
    model.shared_generator(default_model_path(), "cpu")  # as a run leaves it
    assert model._SESSIONS
    plugin.unload()
    QApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # run the deleteLater()s

    assert registry.providerById("marsdtm") is None
    assert registry.algorithmById("marsdtm:predictdtm") is None
    assert not model._SESSIONS  # the onnxruntime sessions and their memory go too
    assert plugin_toolbars(qgis_iface) == []
    assert plugin.actions == []
    qgis_iface.removePluginRasterMenu.assert_called_with(plugin.menu, action)


def test_a_second_start_adds_nothing_and_unload_removes_all(plugin, qgis_iface):
    plugin.initGui()  # a script's, or a reloader's
    assert len(plugin.actions) == 1 and len(plugin_toolbars(qgis_iface)) == 1
    plugin.unload()
    QApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert plugin_toolbars(qgis_iface) == []


def test_a_copy_whose_provider_qgis_refuses_unloads_cleanly(plugin, qgis_iface):
    registered = QgsApplication.processingRegistry().providerById("marsdtm")
    second = mars_dtm_plugin.classFactory(qgis_iface)  # another copy of the plugin
    second.initGui()
    assert second.provider is None  # QGIS kept the first and deleted this one's
    second.unload()
    assert QgsApplication.processingRegistry().providerById("marsdtm") is registered


def algorithm_dialog() -> QgsProcessingAlgorithmDialogBase | None:
    dialogs = [widget for widget in QApplication.topLevelWidgets()
               if isinstance(widget, QgsProcessingAlgorithmDialogBase) and widget.isVisible()]
    return dialogs[0] if dialogs else None


def warnings_of(qgis_iface) -> list[str]:
    return qgis_iface.messageBar().get_messages(Qgis.Warning)


def warnings_on(plugin, qgis_iface, layer) -> list[str]:
    """The button's warnings with ``layer`` active."""
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    plugin.actions[0].trigger()
    return warnings_of(qgis_iface)


def test_button_without_active_layer_warns(plugin, qgis_iface):
    qgis_iface._active_layer_id = None
    plugin.actions[0].trigger()
    assert any("Select a raster layer" in text for text in warnings_of(qgis_iface))


def test_button_without_onnxruntime_says_so_before_opening_the_dialog(
        plugin, qgis_iface, image_factory, monkeypatch):
    layer = QgsRasterLayer(str(image_factory(width=60, height=60)), "scene")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    bar = qgis_iface.messageBar()
    pushed = []
    push = bar.pushMessage
    monkeypatch.setattr(bar, "pushMessage", lambda *args: pushed.append(args) or push(*args))
    plugin.actions[0].trigger()
    assert algorithm_dialog() is None
    (message,) = bar.get_messages(Qgis.Critical)
    assert message == ("Mars DTM:The plugin needs onnxruntime, which does not load in QGIS's "
                       "Python: click More for what to do.")
    more = pushed[0][2]  # behind "More": what is wrong and how to install it
    assert "onnxruntime is not installed" in more and "pip install" in more


def test_button_without_the_processing_plugin_says_how_to_enable_it(
        plugin, qgis_iface, image_factory, monkeypatch):
    layer = QgsRasterLayer(str(image_factory(width=60, height=60)), "scene")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    monkeypatch.setitem(sys.modules, "processing", None)  # as if disabled in the Plugin Manager
    plugin.actions[0].trigger()
    assert algorithm_dialog() is None
    assert any("QGIS's Processing plugin, which is disabled: enable Processing" in text
               for text in warnings_of(qgis_iface))


def test_button_on_vector_layer_warns(plugin, qgis_iface):
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    warned = warnings_on(plugin, qgis_iface, points)
    assert any("'points' is not a raster layer" in text for text in warned)


def test_button_on_a_web_layer_warns(plugin, qgis_iface):
    tiles = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png", "tiles", "wms")
    warned = warnings_on(plugin, qgis_iface, tiles)
    assert algorithm_dialog() is None
    assert any("'tiles' is not a raster file; save it as a GeoTIFF first" in text
               for text in warned)


def test_button_on_a_layer_whose_file_is_gone_warns(plugin, qgis_iface, image_factory):
    image = image_factory(width=60, height=60)
    layer = QgsRasterLayer(str(image), "moved")
    image.unlink()
    layer.setDataSource(str(image), "moved", "gdal")  # as a project opened after a move
    warned = warnings_on(plugin, qgis_iface, layer)
    assert algorithm_dialog() is None
    assert any("The layer 'moved' is unavailable: QGIS cannot read its source" in text
               for text in warned)


def test_button_opens_prefilled_dialog_that_runs(plugin, qgis_iface, identity_model,
                                                 image_factory, tmp_path):
    """Toolbar button -> algorithm dialog on the active layer -> run in a task -> styled DTM."""
    layer = QgsRasterLayer(str(image_factory(width=100, height=90)), "scene")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    output = tmp_path / "dialog_dtm.tif"
    seen: dict = {}

    def fill_and_run() -> None:
        dialog = algorithm_dialog()
        if dialog is None:  # not shown yet
            QTimer.singleShot(50, fill_and_run)
            return
        try:
            seen["title"] = dialog.windowTitle()
            seen["input"] = dialog.createProcessingParameters()["INPUT"]
            dialog.setParameters({"INPUT": layer, "MODEL": str(identity_model),
                                  "OUTPUT": str(output)})
            dialog.algorithmFinished.connect(lambda ok, _: finished(dialog, ok))
            dialog.runAlgorithm()  # runs in a task; results are loaded, then algorithmFinished
        except Exception as exc:  # an exception escaping a Qt slot would abort the process
            seen["error"] = exc
            dialog.reject()

    def finished(dialog: QgsProcessingAlgorithmDialogBase, ok: bool) -> None:
        seen["ok"] = ok
        dialog.close()  # as the user does (Processing's "keep dialog open" may be set)

    def give_up() -> None:
        dialog = algorithm_dialog()
        if dialog is not None:
            seen["timed out"] = True
            dialog.reject()

    QTimer.singleShot(0, fill_and_run)
    QTimer.singleShot(60_000, give_up)
    plugin.actions[0].trigger()

    assert "error" not in seen and "timed out" not in seen, seen
    assert seen["ok"]
    assert seen["title"].startswith("Predict DTM from image")
    assert seen["input"] == layer.id()
    assert read_raster(output)[0].shape == (90, 100)
    (dtm,) = [lyr for lyr in QgsProject.instance().mapLayers().values()
              if lyr.source() == str(output)]
    renderer = dtm.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    # Smooth when zoomed in: the layer lets its provider resample, bilinearly.
    assert dtm.resamplingStage() == QgsRasterPipe.ResamplingStage.Provider
    assert dtm.dataProvider().zoomedInResamplingMethod() == \
        QgsRasterDataProvider.ResamplingMethod.Bilinear
    heights = read_raster(output)[0]
    assert renderer.classificationMin() == pytest.approx(heights.min(), abs=1e-4)
    assert renderer.classificationMax() == pytest.approx(heights.max(), abs=1e-4)
