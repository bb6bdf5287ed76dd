"""A coarser DTM of the same ground (MOLA, HRSC, CTX stereo) for what one image cannot show.

Shading tells slopes, not the slope the whole scene shares nor how high the ground is. A
reference DTM does: the output takes its wavelengths beyond ``sigma`` image pixels, and its
datum, from the reference, and the detail from the model,

    dtm + upsample(blur(reference) - blur(block_mean(dtm)))

on cells some sigma / 2 wide, as the coarse pass does (``coarse.py``). The reference is blurred
with what it holds beyond the image, so the image's edges take its slope unbent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from osgeo import gdal, gdal_array, osr

from .coarse import gaussian_within
from .errors import DtmCancelled, DtmError
from .raster import FILL_LIKE, Georeferencing, files_read, ground_pixel_size_m, nodata_said

# The reference is trusted down to its own pixels (or the resolution the user gives it): the
# blur keeps half of a wavelength some 5.3 sigma long, under 3 of them (2 are the shortest a grid
# holds). Of 2, 1 and 0.5 pixels, 0.5 scored best (`training.evaluate --reference-control`: the
# model card's "With a reference DTM").
SIGMA_REFERENCE_PIXELS = 0.5
FEW_PIXELS = 4  # across the image, fewer of the reference's tell its height, hardly its slope
METRES = {"", "m", "metre", "metres", "meter", "meters"}
MAX_CELLS = 4_000_000  # some 32 MB a grid: a reference nearly as fine as a huge image gets
# cells wider than half its sigma, so that memory stays flat


@dataclass(frozen=True)
class Reference:
    path: str
    sigma: float
    """Where the model's detail ends, in image pixels: beyond it the reference's heights."""
    across: float
    """The reference's pixels across the image's shorter side."""
    cell: int
    """Side of the cells, in image pixels."""
    long: np.ndarray
    """The reference's heights beyond sigma on the image's grid of ``cell`` x ``cell`` px,
    with a ring of cells around it (so the image's edges lie between cells' centres); NaN far
    from its data."""
    nodata: str = ""
    """What the run reads as nodata besides its file's own, as the log says it."""
    ring = 1

    def caution(self) -> str | None:
        if self.across >= FEW_PIXELS:
            return None
        return (f"The reference DTM {Path(self.path).name} has only {self.across:.1f} pixels "
                "across the image: the DTM takes little more than its height from it, and "
                "loses the slope the model reads across the image; give a finer one")

    def describe(self) -> str:
        return (f"Long wavelengths and the heights' datum: beyond {self.sigma:.3g} px, from the "
                f"reference DTM {Path(self.path).name}{self.nodata}")

    def correction(self, dtm_cells: np.ndarray) -> np.ndarray:
        """What the reference adds to the DTM on the cells: its long wavelengths for the
        DTM's. Every cell of the DTM's data must be near the reference's."""
        ringed = np.pad(dtm_cells, self.ring, constant_values=np.nan)
        added = self.long - gaussian_within(ringed, self.sigma / self.cell)
        beyond = np.isfinite(ringed) & ~np.isfinite(self.long)
        if beyond.any():
            share = beyond.sum() / np.isfinite(dtm_cells).sum()
            amount = f"{share:.0%}" if share >= 0.005 else "under 1%"
            raise DtmError(f"The reference DTM {Path(self.path).name} leaves {amount} of the "
                           "image uncovered; give one that covers the whole image.")
        return np.nan_to_num(added)


def reference_files(path: str, open_options: tuple[str, ...] = ()) -> list[str]:
    """The reference DTM's name and every file it is read from (a VRT's sources, say)."""
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER, open_options=list(open_options))
    except RuntimeError:
        return [path]  # open_reference says why it cannot be read
    return [path, *files_read(dataset)]


def open_reference(path: str, georef: Georeferencing, width: int, height: int,
                   resolution_m: float | None = None, open_options: tuple[str, ...] = (),
                   crs_wkt: str | None = None, nodata: float | None = None,
                   file_nodata: bool = True,
                   is_cancelled: Callable[[], bool] = lambda: False) -> Reference:
    """The reference DTM at ``path`` (opened with GDAL's ``open_options``, placed in
    ``crs_wkt`` where given, else its file's CRS) averaged onto cells of the image's grid,
    trusted down to ``resolution_m`` (default: its pixel size; a stereo DTM resolves some
    three of them). ``nodata`` is a stored value read as nodata besides the file's own
    nodata value, which marks nodata where ``file_nodata``. The warp, which reads every
    pixel under the image, stops when ``is_cancelled`` says so."""
    if nodata is not None:  # a plain float: numpy 2 writes its own scalars as no number GDAL reads
        nodata = float(nodata)
    if georef.geotransform is None or not georef.crs_wkt:
        raise DtmError("A reference DTM needs an image with a geotransform and a CRS, to "
                       "place the one on the other.")
    try:
        opened = gdal.OpenEx(str(path), gdal.OF_RASTER, open_options=list(open_options))
    except RuntimeError as exc:
        raise DtmError(f"The reference DTM '{path}' cannot be read: "
                       f"{str(exc).strip().splitlines()[0]}") from exc
    dataset = opened
    if crs_wkt:  # the CRS its GIS layer shows it in, which its file may lack
        dataset = gdal.Translate("", opened, format="VRT", outputSRS=crs_wkt)
    name, band = Path(path).name, dataset.GetRasterBand(1)
    gt = dataset.GetGeoTransform(can_return_null=True)
    if gt is None or not dataset.GetProjection():
        raise DtmError(f"The reference DTM {name} has no geotransform and CRS to place it by.")
    if band.GetUnitType().lower() not in METRES:
        raise DtmError(f"The reference DTM {name} holds heights in '{band.GetUnitType()}'; "
                       "give one in metres.")
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    pixel_m = ground_pixel_size_m(gt, srs, dataset.RasterXSize, dataset.RasterYSize)
    if resolution_m is not None and not resolution_m >= 0.999 * pixel_m:
        raise DtmError(f"The reference DTM's resolution, {resolution_m:g} m, cannot be finer "
                       f"than its {pixel_m:.3g} m pixels.")
    sigma = max(SIGMA_REFERENCE_PIXELS * (resolution_m or pixel_m) / georef.pixel_size_m, 2.0)
    cell = max(1, round(sigma / 2), math.ceil(math.sqrt(width * height / MAX_CELLS)))
    pad = math.ceil(3 * sigma / cell)  # the blur's reach, in cells
    scale, offset = band.GetScale() or 1.0, band.GetOffset() or 0.0
    unused = not file_nodata and bool(band.GetMaskFlags() & gdal.GMF_NODATA)
    alpha = any(dataset.GetRasterBand(i + 1).GetColorInterpretation() == gdal.GCI_AlphaBand
                for i in range(dataset.RasterCount))
    own = band.GetNoDataValue() if file_nodata else None
    beside = dataset.RasterCount > 1 and not alpha  # a band beside the heights (an error band)
    if nodata is not None or unused or beside:
        _refuse_masks(band, alpha, name)
    # One nodata value the warp can take in place of the file's; two need band 1 as a VRT.
    source_nodata = repr(nodata) if nodata is not None else "None" if unused else None
    folder = f"/vsimem/marsdtm-{uuid.uuid4().hex}"
    try:
        if beside or (nodata is not None and own is not None):  # two bands, or two values
            dataset, source_nodata = _band_one(opened, nodata, own, folder, crs_wkt), None
        cells = _warp(dataset, name, georef, -(-width // cell), -(-height // cell), cell, pad,
                      source_nodata, is_cancelled)
    finally:
        dataset = opened = None
        for file in gdal.ReadDirRecursive(folder) or []:  # in memory, but for the process
            gdal.Unlink(f"{folder}/{file}")
    cells = cells * scale + offset
    inside = (slice(pad, -pad), slice(pad, -pad))
    if not np.isfinite(cells[inside]).any():
        raise DtmError(f"The reference DTM {name} does not overlap the image.")
    keep = pad - Reference.ring  # cells cut from each side: the blur's reach beyond the ring
    ringed = (slice(keep, -keep or None),) * 2
    across = min(width, height) * georef.pixel_size_m / pixel_m
    return Reference(str(path), sigma, across, cell,
                     gaussian_within(cells, sigma / cell)[ringed],
                     nodata_said(() if nodata is None else ((nodata, nodata),), not unused))


def _refuse_masks(band: gdal.Band, alpha: bool, name: str) -> None:
    flags = band.GetMaskFlags()  # a driver's own mask (ISIS3's) follows its nodata value
    if alpha or flags & gdal.GMF_PER_DATASET or (flags == 0 and band.GetNoDataValue() is None):
        raise DtmError(f"The reference DTM {name} has a mask or alpha band, which the run "
                       "cannot keep while it reads band 1 alone or applies a nodata value "
                       "given for it; set the nodata in its file, or give band 1 alone.")


def _band_one(dataset: gdal.Dataset, value: float | None, own: float | None, folder: str,
              crs_wkt: str | None) -> gdal.Dataset:
    """Band 1 of ``dataset`` (placed in ``crs_wkt`` where given) as a VRT in ``folder`` whose
    nodata is ``value`` and also ``own``, the file's nodata value where it is kept (GDAL's
    warp reads one, so the file's is mapped onto ``value``); without ``value``, ``own``."""
    band = dataset.GetRasterBand(1)
    values = f"{folder}/values.vrt"  # band 1; written as it closes, now
    gdal.Translate(values, dataset, format="VRT", bandList=[1], outputSRS=crs_wkt,
                   noData="none" if own is None or value is not None else own)
    placed = gdal.Open(values)
    if value is None:
        return placed
    stored = np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(band.DataType))
    if stored.kind == "f":  # rounded to the stored type, as GDAL rounds its nodata value
        value = float(stored.type(value))
    source = f"<NODATA>{own!r}</NODATA>" if own is not None else ""
    return gdal.Open(
        f'<VRTDataset rasterXSize="{placed.RasterXSize}" rasterYSize="{placed.RasterYSize}">'
        f"<SRS>{escape(placed.GetProjection())}</SRS>"
        f"<GeoTransform>{', '.join(map(repr, placed.GetGeoTransform()))}</GeoTransform>"
        f'<VRTRasterBand dataType="Float64" band="1"><NoDataValue>{value!r}</NoDataValue>'
        f'<ComplexSource><SourceFilename relativeToVRT="0" shared="0">{values}'
        f"</SourceFilename><SourceBand>1</SourceBand>{source}</ComplexSource>"
        "</VRTRasterBand></VRTDataset>")


def _warp(dataset: gdal.Dataset, name: str, georef: Georeferencing, cols: int, rows: int,
          cell: int, pad: int, source_nodata: str | None,
          is_cancelled: Callable[[], bool]) -> np.ndarray:
    """The reference's stored values, averaged onto the image's grid coarsened by
    ``cell`` and widened by ``pad`` cells on each side; NaN where it has none. A
    ``source_nodata`` ("None": none) replaces the file's nodata value."""
    gt = georef.geotransform
    target = gdal.GetDriverByName("MEM").Create("", cols + 2 * pad, rows + 2 * pad, 1,
                                                gdal.GDT_Float32)
    step = [value * cell for value in gt]
    target.SetGeoTransform((gt[0] - pad * (step[1] + step[2]), step[1], step[2],
                            gt[3] - pad * (step[4] + step[5]), step[4], step[5]))
    target.SetProjection(georef.crs_wkt)
    target.GetRasterBand(1).SetNoDataValue(math.nan)
    target.GetRasterBand(1).Fill(math.nan)
    try:
        # Every pixel, not an overview's: those a file holds may be sampled, not averaged,
        # and a VRT's of a band with a nodata value given read as nodata (GDAL 3.6).
        gdal.Warp(target, dataset, resampleAlg="average", overviewLevel="NONE",
                  srcNodata=source_nodata, callback=lambda *_: 0 if is_cancelled() else 1)
    except RuntimeError as exc:
        if is_cancelled():
            raise DtmCancelled from exc
        detail = str(exc).strip().splitlines()[0]
        if "coordinate operation" in detail:  # GDAL's message quotes both CRSs in full
            detail = "PROJ knows no way from its CRS to the image's (is it of another body?)"
        raise DtmError(f"The reference DTM {name} cannot be placed on the image's grid: "
                       f"{detail.rstrip('.')}.") from exc
    if is_cancelled():  # the warp stops where the callback says so, without a word
        raise DtmCancelled
    values = target.GetRasterBand(1).ReadAsArray().astype(np.float64)
    values[np.abs(values) >= FILL_LIKE] = np.nan  # an unmarked fill, alone or averaged in
    return values
