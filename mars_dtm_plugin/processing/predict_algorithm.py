"""Processing algorithm ``marsdtm:predictdtm``: a DTM from one image, raster in, raster out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qgis.core import (
    NULL,
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsProperty,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.engine import PredictOptions, RunReport, predict_dtm
from ..core.errors import DtmError
from ..core.raster import bands_read, has_geotransform
from ..core.writer import OUTPUT_EXTENSIONS
from .feedback import FeedbackAdapter
from .icons import icon_path
from .onnxruntime_help import onnxruntime_missing_in_qgis
from .styling import DtmStyler

# PROVIDER enum index -> engine provider name.
EXECUTION_PROVIDERS = ("auto", "cpu", "cuda")


def tr(text: str) -> str:
    return QCoreApplication.translate("PredictDtmAlgorithm", text)


def input_layer_problem(layer: QgsMapLayer, reference: bool = False) -> str | None:
    """Why a layer cannot be the input (or the ``reference`` DTM), in one sentence; None when
    it can."""
    if not isinstance(layer, QgsRasterLayer):
        choose = tr("a DTM") if reference else tr("an image")
        return tr("'{0}' is not a raster layer; choose {1}.").format(layer.name(), choose)
    if not layer.isValid():
        return tr("The layer '{0}' is unavailable: QGIS cannot read its source; fix the source "
                  "(Layer Properties > Source) first.").format(layer.name())
    role = tr("The reference DTM layer") if reference else tr("The input layer")
    if layer.providerType() != "gdal":  # WMS, XYZ, WCS: no file for the engine to read
        return tr("{0} '{1}' is not a raster file; save it as a GeoTIFF first.").format(
            role, layer.name())
    nodata = layer_nodata(layer, bands=(1,)) if reference else ()
    if len(nodata) > 1 or any(low != high for low, high in nodata):
        return tr("{0} '{1}' has several nodata values, or a range of them, set in QGIS; the "
                  "run applies one: keep one (Layer Properties > Transparency) or set them in "
                  "its file (Raster > Conversion > Translate).").format(role, layer.name())
    return None


def gdal_source(source: str) -> tuple[str, tuple[str, ...]]:
    """The GDAL dataset name behind a gdal layer's source (a file, /vsizip/..., GPKG:file:table,
    NETCDF:"file":variable) and the open options QGIS appends as "|option:KEY=VALUE" (a "|"
    elsewhere is the file name's own)."""
    name, *open_options = source.split("|option:")
    return name, tuple(open_options)


def layer_nodata(layer: QgsRasterLayer, bands: tuple[int, ...] | None = None
                 ) -> tuple[tuple[float, float], ...]:
    """The nodata values set on the layer in QGIS (Layer Properties > Transparency), of
    ``bands`` (default: all), as ranges of stored values: QGIS compares them with the values
    after the band's scale and offset, the engine as GDAL compares its nodata value."""
    provider, ranges = layer.dataProvider(), set()
    for band in bands or range(1, layer.bandCount() + 1):
        scale, offset = provider.bandScale(band) or 1.0, provider.bandOffset(band)
        for r in provider.userNoDataValues(band):
            if not math.isnan(r.min() + r.max()):  # the Transparency tab makes closed ranges
                ranges.add(tuple(sorted(((r.min() - offset) / scale,
                                         (r.max() - offset) / scale))))
    return tuple(sorted(ranges))


def uses_file_nodata(layer: QgsRasterLayer, bands: tuple[int, ...] | None = None) -> bool:
    """False where the file's nodata value is switched off on the layer (Layer Properties >
    Transparency: "No data value" unticked), as QGIS then draws those pixels."""
    provider = layer.dataProvider()
    return all(provider.useSourceNoDataValue(band)
               for band in bands or range(1, layer.bandCount() + 1))


def crs_of_its_own(layer: QgsRasterLayer) -> QgsCoordinateReferenceSystem | None:
    """The layer's CRS where it is not its file's (set in QGIS, or given to a file without)."""
    crs = layer.crs()
    return crs if crs.isValid() and crs != layer.dataProvider().crs() else None


# How an error names each number parameter (their labels also say what empty means).
NUMBER_NAMES = {"SUN_AZIMUTH": "The sun azimuth", "SUN_ELEVATION": "The sun elevation",
                "OVERLAP": "The tile overlap", "PIXEL_SIZE": "The pixel size",
                "REFERENCE_RESOLUTION": "The reference DTM's resolution", "BAND": "The band",
                "PROVIDER": "The choice of where to run"}


class PredictDtmAlgorithm(QgsProcessingAlgorithm):
    """Predicts a DTM (heights in metres) on the grid of a single orbital image."""

    INPUT = "INPUT"
    BAND = "BAND"
    MODEL = "MODEL"
    REFERENCE_DTM = "REFERENCE_DTM"
    REFERENCE_RESOLUTION = "REFERENCE_RESOLUTION"
    SUN_AZIMUTH = "SUN_AZIMUTH"
    SUN_ELEVATION = "SUN_ELEVATION"
    OVERLAP = "OVERLAP"
    PIXEL_SIZE = "PIXEL_SIZE"
    PROVIDER = "PROVIDER"
    OUTPUT = "OUTPUT"

    def createInstance(self) -> PredictDtmAlgorithm:
        return PredictDtmAlgorithm()

    def name(self) -> str:
        return "predictdtm"

    def displayName(self) -> str:
        return tr("Predict DTM from image")

    def group(self) -> str:
        return tr("Raster terrain analysis")

    def groupId(self) -> str:
        return "rasterterrainanalysis"

    def tags(self) -> list[str]:
        return tr("dtm,dem,elevation,height,terrain,mars,hirise,ctx,monocular,onnx").split(",")

    def icon(self) -> QIcon:
        return QIcon(icon_path("predict_dtm.svg"))

    def svgIconPath(self) -> str:
        return icon_path("predict_dtm.svg")

    def shortHelpString(self) -> str:
        return tr(
            "<p>Predicts a Digital Terrain Model from one orbital image (a HiRISE or CTX "
            "orthoimage of Mars, or Earth satellite and aerial imagery), without a stereo "
            "partner.</p>"
            "<p><b>Output</b>: a Float32 GeoTIFF of heights in metres on exactly the input's "
            "grid (the layer's CRS, extent and pixel size), with nodata where the layer has "
            "nodata (the file's, and the values set in Layer Properties > Transparency). "
            "Heights are <i>relative</i>: the model sees relief, not absolute elevation, so the "
            "zero level is arbitrary (near the scene's mean). Tie it to a reference DTM (for "
            "Mars, MOLA or HRSC) before reading absolute elevations. Slopes, hillshade, "
            "contours, profiles and 3D views can be used as they are.</p>"
            "<p><b>Trust</b>: the bundled model learned from rendered terrain and measured "
            "elevation models lit by many suns. It gives a quick first DTM, not a survey: "
            "expect the shapes of hills, craters and valleys to be more reliable than their "
            "exact heights, and check heights against a reference before relying on them. "
            "Trust it least on flat, featureless, dusty or deeply shadowed ground and over "
            "long distances. Clouds, frost, water and other brightness that is not shading "
            "become false relief: make them nodata first. Use stereo DTMs where they "
            "exist.</p>"
            "<p><b>Band</b>: empty means the luminance of an RGB image (bands tagged red, "
            "green and blue), else band 1. An alpha band is refused.</p>"
            "<p><b>Pixel size</b> (advanced): needed for an image without georeferencing, such "
            "as a JPEG tile; its DTM then has none either.</p>"
            "<p><b>Sun</b>: shading depends on where the light comes from. The sun direction "
            "is read from the product's label or metadata when there is one (HiRISE, Maxar "
            "and Landsat products carry it); otherwise enter it, or the run stops and says so "
            "if the model needs it.</p>"
            "<p><b>Reference DTM</b>: a coarser DTM of the same ground (MOLA, HRSC, CTX "
            "stereo) gives the output the regional slope and the datum that shading cannot "
            "show; without one, heights are relative to the scene's mean.</p>"
            "<p>Needs the onnxruntime Python package (see the plugin's About text).</p>"
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input image")))
        self.addParameter(QgsProcessingParameterBand(
            self.BAND, tr("Band (empty: band 1, or the luminance of RGB)"),
            parentLayerParameterName=self.INPUT, optional=True))
        # No default path: a saved model, batch or script must not carry this profile's folder.
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, tr("Model (ONNX; empty: the bundled model)"),
            behavior=QgsProcessingParameterFile.File, extension="onnx",  # any case: MODEL.ONNX
            optional=True))
        self._add_sun_parameters()
        reference = QgsProcessingParameterRasterLayer(
            self.REFERENCE_DTM, tr("Reference DTM (optional; coarser, heights in metres)"),
            optional=True)
        reference.setHelp(tr(
            "A coarser DTM of the same ground, such as MOLA, HRSC or CTX stereo. The output "
            "takes from it what one image cannot show: the slope the whole scene shares, relief "
            "longer than a few of its pixels, and its datum, so heights are no longer relative "
            "to the scene's mean. It must cover the whole image."))
        self.addParameter(reference)
        self._add_advanced_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, tr("Predicted DTM")))

    def _add_sun_parameters(self) -> None:
        angles = (  # an azimuth of -90 (as some metadata give it) is 270: no range
            (self.SUN_AZIMUTH, tr("Sun azimuth (degrees clockwise from north)"), None,
             tr("Leave empty to read it from the product's label or metadata. Required when "
                "the image carries none and the model needs the sun direction.")),
            (self.SUN_ELEVATION, tr("Sun elevation (degrees above the horizon)"), 90.0,
             tr("Leave empty to read it from the product's label or metadata. Models that "
                "read contrast as slope (the bundled one) use it: a low sun shows gentle slopes "
                "with strong contrast. Unknown: 45 degrees is assumed and logged.")),
        )
        for name, description, maximum, help_text in angles:
            parameter = QgsProcessingParameterNumber(
                name, description, QgsProcessingParameterNumber.Double, optional=True)
            if maximum is not None:
                parameter.setMinimum(0.0)
                parameter.setMaximum(maximum)
            parameter.setHelp(help_text)
            self.addParameter(parameter)

    def _add_advanced_parameters(self) -> None:
        overlap = QgsProcessingParameterNumber(
            self.OVERLAP, tr("Tile overlap in pixels (empty: the model's default)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1)
        overlap.setHelp(tr("More overlap hides tile borders better and takes longer."))
        pixel_size = QgsProcessingParameterNumber(
            self.PIXEL_SIZE, tr("Pixel size in metres (empty: from the georeferencing)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0)
        pixel_size.setHelp(tr(
            "Needed for an image without georeferencing (such as a JPEG tile), whose DTM then "
            "has none either; for a georeferenced image it replaces the measured pixel size."))
        resolution = QgsProcessingParameterNumber(
            self.REFERENCE_RESOLUTION,
            tr("Reference DTM resolution in metres (empty: its pixel size)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0)
        resolution.setHelp(tr(
            "The finest relief the reference DTM resolves. A stereo DTM is smoother than its "
            "pixels (some three of them): give that, and the model's relief is kept up to it."))
        provider = QgsProcessingParameterEnum(
            self.PROVIDER, tr("Run on"),
            options=[tr("Auto (GPU when available)"), tr("CPU"), tr("CUDA (NVIDIA GPU)")],
            defaultValue=0)
        for parameter in (overlap, pixel_size, resolution, provider):
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        problem = self._layer_problem(parameters, self.INPUT, context)
        if problem:
            return False, problem
        try:  # the reference layer and the numbers, before QGIS's own checks, which would say
            self._options(parameters, context)  # only "Incorrect parameter value"
        except QgsProcessingException as refusal:
            return False, str(refusal)
        # A scratch context: for a temporary output, parameterAsOutputLayer invents a file name
        # and registers it for loading, and the run (which invents another) never writes it.
        scratch = QgsProcessingContext()
        scratch.copyThreadSafeSettings(context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, scratch)
        if output and Path(output).suffix.lower() not in OUTPUT_EXTENSIONS:
            return False, tr("The output must be a GeoTIFF file: end its name with .tif.")
        return super().checkParameterValues(parameters, context)

    @staticmethod
    def _layer_problem(parameters: dict[str, Any], name: str,
                       context: QgsProcessingContext) -> str | None:
        """Why the layer parameter ``name`` cannot be read, in one sentence, where QGIS would
        only say "invalid value" or "not found" (batches and models skip checkParameterValues,
        so the run asks too)."""
        value = parameters.get(name)
        layer = value if isinstance(value, QgsMapLayer) else None
        if isinstance(value, str) and value:
            # A raster first: a GeoPackage may hold a vector table beside the image.
            layer = QgsProcessingUtils.mapLayerFromString(
                value, context, typeHint=QgsProcessingUtils.LayerHint.Raster) or \
                QgsProcessingUtils.mapLayerFromString(value, context)
            if layer is None and Path(value).is_file():
                return tr("GDAL cannot read '{0}' as a raster.").format(value)
        if layer is None:
            return None
        return input_layer_problem(layer, reference=name == PredictDtmAlgorithm.REFERENCE_DTM)

    def canExecute(self) -> tuple[bool, str]:
        message = onnxruntime_missing_in_qgis()
        return (False, message) if message else (True, "")

    def prepareAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> bool:
        """In the main thread: all the run needs from the project's layers, which must not be
        read from the worker thread that processAlgorithm runs in."""
        # A refusal is raised from processAlgorithm: QGIS 3.22 reports one raised here only as
        # "There were errors executing the algorithm".
        try:
            missing = onnxruntime_missing_in_qgis()
            if missing:
                raise QgsProcessingException(missing)
            options = self._options(parameters, context)
            self._prepared = (options, *self._input(parameters, context, options))
        except QgsProcessingException as refusal:
            self._prepared = refusal
        return True

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        if isinstance(self._prepared, QgsProcessingException):
            raise self._prepared
        feedback = feedback or QgsProcessingFeedback()  # run() from a script may pass None
        options, input_path, layer_crs = self._prepared
        if layer_crs is not None:  # QGIS may have given it from its settings: say so
            options.crs_wkt = layer_crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)
            feedback.pushInfo(tr("CRS: the layer's, {0}, not the file's").format(
                layer_crs.userFriendlyIdentifier()))
        if options.reference_crs_wkt:  # as for the input: QGIS may have given it one
            feedback.pushInfo(tr("Reference DTM's CRS: the layer's, {0}, not the file's").format(
                QgsCoordinateReferenceSystem.fromWkt(
                    options.reference_crs_wkt).userFriendlyIdentifier()))
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        report = self._run_engine(input_path, output, options, FeedbackAdapter(feedback))
        # The engine has logged provider (and why not a GPU), tiles, sun, heights and output.
        feedback.pushInfo(tr("Finished in {0:.2f} s").format(report.seconds))
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(
                DtmStyler.create(report.height_min, report.height_max))
        return {self.OUTPUT: output}

    def _input(self, parameters: dict[str, Any], context: QgsProcessingContext,
               options: PredictOptions) -> tuple[str, QgsCoordinateReferenceSystem | None]:
        """The file behind INPUT, after the checks QGIS can make better than the engine, and
        the layer's CRS where it is not the file's (set in QGIS, or given to a file without);
        the layer's nodata go into ``options``."""
        problem = self._layer_problem(parameters, self.INPUT, context)
        if problem:
            raise QgsProcessingException(problem)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        source, options.open_options = gdal_source(layer.source())
        # The bands read alone: QGIS's Transparency tab sets the same values on every band, but
        # a script may set a band's own.
        try:
            bands = bands_read(source, options.band, options.open_options)
        except DtmError as exc:  # a band that does not exist, say
            raise QgsProcessingException(str(exc)) from exc
        options.nodata = layer_nodata(layer, bands)
        options.file_nodata = uses_file_nodata(layer, bands)
        layer_crs = crs_of_its_own(layer)  # the DTM lies where QGIS shows the image
        if options.pixel_size is not None:  # the engine then needs no georeferencing
            placed = has_geotransform(source, options.open_options)
            return source, layer_crs if placed else None  # without a grid, no CRS either
        if not layer.crs().isValid():
            raise QgsProcessingException(tr(
                "The input image '{0}' has no coordinate reference system; set the layer's "
                "CRS (Layer Properties > Source) if a world file places it, georeference it "
                "(the Georeferencer) if nothing does, or give its pixel size in metres (the "
                "DTM then has none either)."
            ).format(layer.name()))
        if not has_geotransform(source, options.open_options):
            raise QgsProcessingException(tr(
                "The input image '{0}' is not on a georeferenced grid (ground control points "
                "or RPCs alone do not place it); warp it onto a grid first (Raster > Projections > "
                "Warp, or the Georeferencer), or give its pixel size in metres."
            ).format(layer.name()))
        return source, layer_crs

    def _options(self, parameters: dict[str, Any],
                 context: QgsProcessingContext) -> PredictOptions:
        model = self.parameterAsFile(parameters, self.MODEL, context)
        reference = self._reference_layer(parameters, context)
        options = PredictOptions(
            model_path=model or None,
            # 0 is what QGIS makes of an empty band; the engine's "auto" is None.
            band=self._whole_number(parameters, self.BAND, context) or None,
            overlap_px=self._whole_number(parameters, self.OVERLAP, context),
            sun_azimuth=self._optional_number(parameters, self.SUN_AZIMUTH, context),
            sun_elevation=self._optional_number(parameters, self.SUN_ELEVATION, context),
            provider=EXECUTION_PROVIDERS[self._whole_number(parameters, self.PROVIDER, context)
                                         or 0],
            pixel_size=self._optional_number(parameters, self.PIXEL_SIZE, context),
            reference_resolution_m=self._optional_number(parameters, self.REFERENCE_RESOLUTION,
                                                         context),
        )
        if reference is not None:  # read as QGIS shows it, as the input is
            options.reference_dtm, options.reference_open_options = gdal_source(
                reference.source())
            crs = crs_of_its_own(reference)
            options.reference_crs_wkt = crs.toWkt(
                QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL) if crs else None
            nodata = layer_nodata(reference, bands=(1,))  # one value: input_layer_problem
            options.reference_nodata = nodata[0][0] if nodata else None
            options.reference_file_nodata = uses_file_nodata(reference, bands=(1,))
        return options

    def _reference_layer(self, parameters: dict[str, Any], context: QgsProcessingContext
                         ) -> QgsRasterLayer | None:
        """The REFERENCE_DTM layer, after the checks; None where none is given."""
        problem = self._layer_problem(parameters, self.REFERENCE_DTM, context)
        if problem:
            raise QgsProcessingException(problem)
        layer = self.parameterAsRasterLayer(parameters, self.REFERENCE_DTM, context)
        if layer is None and parameters.get(self.REFERENCE_DTM) in (None, ""):
            return None
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.REFERENCE_DTM))
        return layer

    def _optional_number(self, parameters: dict[str, Any], name: str,
                         context: QgsProcessingContext) -> float | None:
        """None when empty; parameterAsDouble reads an empty optional number, and text that
        is no number (QGIS lets it through as "not set"), as 0, which is a real azimuth."""
        value = parameters.get(name)
        if isinstance(value, QgsProperty):
            value, _ = value.value(context.expressionContext())
        if value is None or value == NULL or (isinstance(value, str) and not value.strip()):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            decimals = tr(" (with a point for decimals)") if "," in str(value) else ""
            raise QgsProcessingException(tr("{0} must be a number{1}, not '{2}'.").format(
                tr(NUMBER_NAMES[name]), decimals, value))
        low, high = self._range(name)
        if not low <= number <= high:  # models and batches skip QGIS's check of the range
            limits = (tr("from {0:g} to {1:g}").format(low, high) if high < math.inf
                      else tr("at least {0:g}").format(low))
            raise QgsProcessingException(tr("{0} must be {1}, not {2:g}.").format(
                tr(NUMBER_NAMES[name]), limits, number))
        return number

    def _whole_number(self, parameters: dict[str, Any], name: str,
                      context: QgsProcessingContext) -> int | None:
        """As ``_optional_number``, refusing a fraction that QGIS would round."""
        number = self._optional_number(parameters, name, context)
        if number is not None and not number.is_integer():
            raise QgsProcessingException(tr("{0} must be a whole number, not {1:g}.").format(
                tr(NUMBER_NAMES[name]), number))
        return None if number is None else int(number)

    def _range(self, name: str) -> tuple[float, float]:
        """The values a number parameter takes; QGIS's largest double stands for none."""
        definition = self.parameterDefinition(name)
        if isinstance(definition, QgsProcessingParameterEnum):
            return 0, len(definition.options()) - 1
        if isinstance(definition, QgsProcessingParameterNumber):
            high = definition.maximum()
            return definition.minimum(), math.inf if high >= 1e300 else high
        return 0, math.inf  # a band number

    @staticmethod
    def _run_engine(input_path: str, output: str, options: PredictOptions,
                    adapter: FeedbackAdapter) -> RunReport:
        try:
            return predict_dtm(input_path, output, options, progress=adapter.progress,
                               is_cancelled=adapter.is_cancelled, log=adapter.log)
        except DtmError as exc:  # DtmCancelled included: its message says nothing was written
            raise QgsProcessingException(str(exc)) from exc
