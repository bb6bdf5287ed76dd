"""The ``marsdtm`` Processing provider."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .icons import icon_path
from .predict_algorithm import PredictDtmAlgorithm


class MarsDtmProvider(QgsProcessingProvider):
    """Holds the plugin's algorithms under the id ``marsdtm``."""

    def id(self) -> str:
        return "marsdtm"

    def name(self) -> str:
        return QCoreApplication.translate("MarsDtmProvider", "Mars DTM")

    def longName(self) -> str:
        return QCoreApplication.translate(
            "MarsDtmProvider", "Mars DTM: terrain models from a single image")

    def icon(self) -> QIcon:
        return QIcon(icon_path("mars_dtm.svg"))

    def svgIconPath(self) -> str:
        return icon_path("mars_dtm.svg")

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(PredictDtmAlgorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        # The engine writes tiled, compressed GeoTIFF only.
        return ["tif", "tiff"]  # the first is the default
