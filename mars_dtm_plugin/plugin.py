"""The QGIS plugin: Processing provider, toolbar button and Raster menu entry."""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.gui import QgisInterface
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from .core.model import release_sessions
from .processing.icons import icon_path
from .processing.onnxruntime_help import onnxruntime_missing_in_qgis
from .processing.predict_algorithm import input_layer_problem
from .processing.provider import MarsDtmProvider

ALGORITHM_ID = "marsdtm:predictdtm"


def tr(text: str) -> str:
    return QCoreApplication.translate("MarsDtmPlugin", text)


class MarsDtmPlugin:
    """Registers the provider; in the desktop, adds a button that runs it on the active layer."""

    def __init__(self, iface: QgisInterface) -> None:
        self.iface = iface
        self.provider: MarsDtmProvider | None = None
        self.actions: list[QAction] = []
        self.toolbar: QToolBar | None = None
        self.menu = tr("&Mars DTM")

    def initProcessing(self) -> None:  # qgis_process calls this alone, without initGui
        if self.provider is None:
            self.provider = MarsDtmProvider()
            # Refused (and deleted by QGIS) where another copy of the plugin registered first.
            if not QgsApplication.processingRegistry().addProvider(self.provider):
                self.provider = None

    def initGui(self) -> None:
        if self.actions:  # started already: one button, one menu entry
            return
        self.initProcessing()
        action = QAction(QIcon(icon_path("predict_dtm.svg")), tr("Predict DTM from Image…"),
                         self.iface.mainWindow())
        action.setObjectName("mActionMarsDtmPredict")
        action.setToolTip(tr("Predict a DTM from the active raster layer"))
        action.triggered.connect(self.run)
        self.toolbar = self.iface.addToolBar(tr("Mars DTM"))
        self.toolbar.setObjectName("MarsDtmToolbar")
        self.toolbar.addAction(action)
        self.iface.addPluginToRasterMenu(self.menu, action)
        self.actions.append(action)

    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(self.menu, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions = []
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        release_sessions()

    def run(self) -> None:
        """Open the algorithm's dialog on the active layer, or say why it cannot."""
        layer = self.iface.activeLayer()
        problem = (tr("Select a raster layer (an orbital image) in the Layers panel first.")
                   if layer is None else input_layer_problem(layer))
        if problem:
            self.iface.messageBar().pushWarning(tr("Mars DTM"), problem)
            return
        missing = onnxruntime_missing_in_qgis()
        if missing:  # the dialog would say so only after the form is filled in and run
            # One sentence in the bar; how to install it, for each system, behind "More".
            self.iface.messageBar().pushMessage(
                tr("Mars DTM"), tr("The plugin needs onnxruntime, which does not load in "
                                   "QGIS's Python: click More for what to do."),
                missing, Qgis.Critical, 0)
            return
        try:
            import processing  # QGIS's Processing plugin, loaded by the time a button is clicked
        except ImportError:  # disabled in the Plugin Manager
            self.iface.messageBar().pushWarning(
                tr("Mars DTM"), tr("The DTM tool runs in QGIS's Processing plugin, which is "
                                   "disabled: enable Processing under Plugins > Manage and "
                                   "Install Plugins > Installed."))
            return
        processing.execAlgorithmDialog(ALGORITHM_ID, {"INPUT": layer})
