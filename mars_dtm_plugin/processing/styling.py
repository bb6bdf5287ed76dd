"""Styles a predicted DTM once Processing has loaded it: a colour ramp over its real range."""

from __future__ import annotations

import math
import threading
from typing import ClassVar

from qgis.core import (
    QgsColorRampShader,
    QgsDataProvider,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterBandStats,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QColor

# Low to high: blue, green, yellow, orange, red, the usual reading of a colourised DTM.
RAMP_COLOURS = ("#2b83ba", "#abdda4", "#ffffbf", "#fdae61", "#d7191c")


def dtm_colour_ramp() -> QgsGradientColorRamp:
    """The ramp used for predicted DTMs (built here so it does not depend on the user's style)."""
    first, *middle, last = RAMP_COLOURS
    stops = [
        QgsGradientStop((i + 1) / (len(middle) + 1), QColor(colour))
        for i, colour in enumerate(middle)
    ]
    return QgsGradientColorRamp(QColor(first), QColor(last), False, stops)


def style_as_dtm(layer: QgsRasterLayer, low: float | None = None,
                 high: float | None = None) -> None:
    """Singleband pseudocolour over [low, high]; the band's real min/max when not given."""
    provider = layer.dataProvider()
    if not _finite(low, high) or high <= low:
        low, high = _band_range(provider)
    shader_function = QgsColorRampShader(low, high, dtm_colour_ramp(),
                                         QgsColorRampShader.Interpolated,
                                         QgsColorRampShader.Continuous)
    shader_function.classifyColorRamp()
    shader = QgsRasterShader(low, high)
    shader.setRasterShaderFunction(shader_function)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    # Heights are continuous: interpolate when zoomed in rather than showing square pixels
    # (the provider's resampling applies only when the layer asks the provider to resample).
    provider.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
    layer.setResamplingStage(QgsRasterPipe.ResamplingStage.Provider)
    layer.triggerRepaint()


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _band_range(provider: QgsRasterDataProvider) -> tuple[float, float]:
    stats = provider.bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    low, high = stats.minimumValue, stats.maximumValue
    if not _finite(low, high) or high < low:  # no valid pixel: QGIS says max < min
        return 0.0, 1.0  # any non-empty interval keeps the renderer valid
    if high == low:  # flat: its colour mid-ramp
        return low - 0.5, high + 0.5
    return low, high


class DtmStyler(QgsProcessingLayerPostProcessorInterface):
    """Post-processor that styles one output; kept alive by a class-level reference."""

    # Processing holds only a C++ pointer to the post-processor: without a Python reference the
    # object is garbage-collected before the layer loads. A context may call it for as long as
    # it lives, however many runs later; it deletes the C++ object as it goes.
    _alive: ClassVar[list[DtmStyler]] = []
    _alive_lock = threading.Lock()  # batch rows may run in parallel tasks

    def __init__(self, low: float | None, high: float | None) -> None:
        super().__init__()
        self.low = low
        self.high = high

    @classmethod
    def create(cls, low: float | None = None, high: float | None = None) -> DtmStyler:
        styler = cls(low, high)
        with cls._alive_lock:
            cls._alive = [*(kept for kept in cls._alive if not sip.isdeleted(kept)), styler]
        return styler

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            # A run into a file loaded in the project gets that project layer back, still
            # reading the file it replaced: it opens the new one first.
            layer.setDataSource(layer.source(), layer.name(), layer.providerType(),
                                QgsDataProvider.ProviderOptions())
            style_as_dtm(layer, self.low, self.high)
