"""Reading the input window by window, scene statistics, georeferencing, sun geometry."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

import numpy as np
from osgeo import gdal, osr

from .errors import DtmError

# ITU-R BT.601 luma weights, the usual choice for greyscale from RGB imagery.
LUMINANCE = (0.299, 0.587, 0.114)
SAMPLE_SIDE = 1024  # scene percentiles from at most a million pixels: plenty, and fast
SAMPLE_MIN_SIDE = 64  # a long strip's short side is sampled this many times, not once
FILL_LIKE = 1e30  # beside ordinary values, a value this large is a fill (HiRISE's -3.4e38)


_exceptions_lock = threading.Lock()
_exceptions_users = [0, False]  # runs inside the block; the setting found by the first


@contextmanager
def gdal_exceptions() -> Iterator[None]:
    """Raise GDAL errors as exceptions inside the block, restoring the caller's setting.

    GDAL 3.6's flag is process-wide: concurrent runs (QGIS batches) share one count so that
    the first run out does not switch exceptions off under the others.
    """
    with _exceptions_lock:
        if _exceptions_users[0] == 0:
            _exceptions_users[1] = bool(gdal.GetUseExceptions())
            gdal.UseExceptions()
        _exceptions_users[0] += 1
    try:
        yield
    finally:
        with _exceptions_lock:
            _exceptions_users[0] -= 1
            if _exceptions_users[0] == 0 and not _exceptions_users[1]:
                gdal.DontUseExceptions()


@dataclass(frozen=True)
class Georeferencing:
    geotransform: tuple[float, ...] | None
    crs_wkt: str
    pixel_size_m: float
    north_deg: float
    """Direction of true north at the scene centre, degrees clockwise from image up."""
    mirrored: bool = False
    """East lies anticlockwise of north in the image (a south-up or east-left grid): angles
    clockwise on the ground turn anticlockwise in the image."""
    aspect: float = 1.0
    """Ground width over ground height of a pixel; the model takes pixels as square."""
    gcps: tuple[gdal.GCP, ...] = ()
    """Ground control points of an input placed by them alone, kept so the DTM warps alike."""
    gcp_wkt: str = ""
    rpc: dict[str, str] | None = None
    """Rational polynomial coefficients of an input placed by them alone (a satellite's raw
    product), kept for the same reason."""

    def image_azimuth(self, from_north: float) -> float:
        """An azimuth given clockwise from north, clockwise from image up."""
        return (self.north_deg + (-from_north if self.mirrored else from_north)) % 360

    def north_azimuth(self, in_image: float) -> float:
        """An azimuth given clockwise from image up, clockwise from north."""
        return (self.north_deg - in_image if self.mirrored else in_image - self.north_deg) % 360


class InputRaster:
    """One band (or the luminance of RGB) of a raster, read in windows with its validity mask."""

    def __init__(self, path: str, band: int | None = None,
                 pixel_size: float | None = None, crs_wkt: str | None = None,
                 nodata: tuple[tuple[float, float], ...] = (), file_nodata: bool = True,
                 open_options: tuple[str, ...] = ()) -> None:
        self.path = path
        self.nodata = nodata  # value ranges read as nodata besides the file's own
        self.file_nodata = file_nodata  # False: the file's nodata value is a value like any other
        # Set where the scene's sample holds ordinary values: then a window's value past
        # FILL_LIKE is a fill value the sample stepped over.
        self.refuse_fills = False
        self.dataset = _open(path, open_options)
        self.width = self.dataset.RasterXSize
        self.height = self.dataset.RasterYSize
        self.bands, self.weights = _select_bands(self.dataset, band)
        self.georef = _georeferencing(self.dataset, pixel_size, path, crs_wkt)
        # A HiRISE JP2 keeps its DN to I/F scaling in the detached label, where GDAL does not
        # look: applied to bands without GDAL's own scale and offset.
        self.label_scaling = _label_scaling(_read_label(path, self.dataset))

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (float32) and validity of a window; outside the raster, 0 and invalid."""
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + width, self.width), min(y0 + height, self.height)
        if ix1 <= ix0 or iy1 <= iy0:
            raise ValueError("window does not touch the raster")
        values, valid = self._read_inside(ix0, iy0, ix1 - ix0, iy1 - iy0)
        if self.refuse_fills and (values.max() >= FILL_LIKE or values.min() <= -FILL_LIKE):
            raise fill_refused(values[np.abs(values) >= FILL_LIKE][0])  # nodata are 0 here
        pads = ((iy0 - y0, y0 + height - iy1), (ix0 - x0, x0 + width - ix1))
        if any(p for pair in pads for p in pair):
            values, valid = np.pad(values, pads), np.pad(valid, pads)
        return values, valid

    def _read_inside(self, x0: int, y0: int, w: int, h: int,
                     buf: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        bw, bh = buf or (w, h)
        values = np.zeros((bh, bw), np.float32)
        valid = np.ones((bh, bw), bool)
        for band, weight in zip(self.bands, self.weights):
            data = band.ReadAsArray(x0, y0, w, h, buf_xsize=bw, buf_ysize=bh)
            valid &= outside(data, self.nodata)
            scale, offset = band.GetScale() or 1.0, band.GetOffset() or 0.0
            if (scale, offset) == (1.0, 0.0):
                scale, offset = self.label_scaling
            if (scale, offset) != (1.0, 0.0):  # DN to radiance (PDS, ISIS, GeoTIFF scaling)
                data = data.astype(np.float64) * scale + offset
            if mask_marks_nodata(band, self.file_nodata):
                mask = band.GetMaskBand().ReadAsArray(x0, y0, w, h, buf_xsize=bw, buf_ysize=bh)
                valid &= mask > 0
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: inf, invalid below
                values += data if weight == 1.0 else np.float32(weight) * data
        valid &= np.isfinite(values)  # NaN, infinity and values past float32's range (float64)
        if not valid.all():
            values[~valid] = 0
        return values, valid

    def file_nodata_used(self) -> bool:
        """False where the file has a nodata value that is not read as nodata."""
        return self.file_nodata or not any(b.GetMaskFlags() & gdal.GMF_NODATA for b in self.bands)

    def zero_rim(self) -> float:
        """Share of the outermost pixels that are exactly 0 while nothing marks nodata: an
        orthoimage's black collar without a nodata value is read as black ground."""
        if any(mask_marks_nodata(band, self.file_nodata) for band in self.bands):
            return 0.0
        w, h = self.width, self.height
        bw, bh = min(w, SAMPLE_SIDE), min(h, SAMPLE_SIDE)  # decimated: a few blocks each
        rim = [self._read_inside(0, 0, w, 1, (bw, 1)), self._read_inside(0, h - 1, w, 1, (bw, 1)),
               self._read_inside(0, 0, 1, h, (1, bh)), self._read_inside(w - 1, 0, 1, h, (1, bh))]
        values = np.concatenate([v[ok] for v, ok in rim])  # NaN is nodata already, not 0
        return float(np.mean(values == 0)) if values.size else 0.0

    def sample(self) -> np.ndarray:
        """Valid values from a decimated read of the whole scene (for scene statistics)."""
        scale = max(self.width, self.height) / SAMPLE_SIDE
        buf = (self.width, self.height) if scale <= 1 else tuple(
            max(min(side, SAMPLE_MIN_SIDE), round(side / scale))
            for side in (self.width, self.height))
        values, valid = self._read_inside(0, 0, self.width, self.height, buf)
        found = values[valid]
        if not found.size and scale > 1:
            found = self._scan_valid()
        if not found.size:
            raise DtmError(f"'{Path(self.path).name}' has no valid pixels: it is all nodata.")
        return found

    def one_value(self) -> bool:
        """Whether every valid pixel holds the same value: a full-resolution scan that stops at
        the first that differs (a decimated sample can miss fine texture)."""
        first = None
        for found in self._valid_strips():
            if found.size:
                first = found[0] if first is None else first
                if (found != first).any():
                    return False
        return True

    def _scan_valid(self) -> np.ndarray:
        """Full-resolution scan for scenes whose valid pixels the decimated read missed."""
        return np.concatenate([found[::64] for found in self._valid_strips()])

    def _valid_strips(self, rows: int = 256) -> Iterator[np.ndarray]:
        """The valid pixels of each strip of ``rows`` rows, top to bottom, at full resolution."""
        for y0 in range(0, self.height, rows):
            values, valid = self._read_inside(0, y0, self.width, min(rows, self.height - y0))
            yield values[valid]

    def files_read(self) -> list[str]:
        return files_read(self.dataset)

    def close(self) -> None:
        self.bands = []
        self.dataset = None


def outside(data: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Where the stored values lie outside every (low, high) range of nodata values."""
    valid = np.ones(data.shape, bool)
    for low, high in ranges:  # on the stored values, as GDAL's nodata value
        if math.isnan(low):  # NaN is nodata anyway; it compares false
            continue
        if data.dtype.kind == "f":  # rounded to the band's type, as GDAL does
            low, high = data.dtype.type(low), data.dtype.type(high)
        valid &= (data < low) | (data > high)
    return valid


def fill_refused(value: float) -> DtmError:
    """The refusal of an image holding a fill value beside ordinary brightness (the scene's
    sample finds most; a window read finds one the sample's decimation missed)."""
    return DtmError(f"The image holds the value {value}, a fill value rather than a "
                    f"brightness; give it as nodata (--nodata={value}, or the layer's no data "
                    "values in QGIS), or set the file's nodata value.")


def nodata_said(ranges: tuple[tuple[float, float], ...], file_nodata_used: bool) -> str:
    """What a run says of the nodata it reads besides a file's own: ", 0 as nodata", ..."""
    return ("".join(f", {low:g}" + (f" to {high:g}" if high > low else "") + " as nodata"
                    for low, high in ranges)
            + ("" if file_nodata_used else ", the file's nodata value not used"))


def mask_marks_nodata(band: gdal.Band, file_nodata: bool) -> bool:
    """Whether the band's mask marks nodata: any mask but one from a nodata value the file
    gives and the reader does not use (``file_nodata`` False)."""
    flags = band.GetMaskFlags()
    return flags != gdal.GMF_ALL_VALID and (file_nodata or not flags & gdal.GMF_NODATA)


def files_read(dataset: gdal.Dataset) -> list[str]:
    """Every file a dataset is read from: a VRT's sources, theirs in turn, a label's image."""
    files: dict[str, None] = {}  # an ordered set
    pending = list(dataset.GetFileList() or [])
    while pending:
        path = pending.pop()
        if path not in files:
            files[path] = None
            pending += _vrt_sources(path)
    return list(files)


def _vrt_sources(path: str) -> list[str]:
    """The sources a VRT file names, whatever its extension; a source only GDAL resolves
    (``GTIFF_DIR:1:f.tif``) as the files it opens. Nothing for other files."""
    with contextlib.suppress(RuntimeError):
        driver = gdal.IdentifyDriver(path)
        if driver is None or driver.ShortName != "VRT":
            return []
    try:
        names = [element for element in ElementTree.parse(path).iter()
                 if element.tag in ("SourceFilename", "SourceDataset")]
    except (OSError, ElementTree.ParseError):
        return []  # the run itself will say what is wrong with it
    sources = []
    for element in names:
        name = element.text or ""
        if element.get("relativeToVRT") == "1":
            name = os.path.join(os.path.dirname(path), name)
        if os.path.exists(name):
            sources.append(name)
        else:
            with contextlib.suppress(RuntimeError, AttributeError):
                sources += gdal.OpenEx(name).GetFileList() or []
    return sources


def has_geotransform(path: str, open_options: tuple[str, ...] = ()) -> bool:
    """Whether the raster is on a grid (not only placed by ground control points); True when
    it cannot be opened, so that the engine's own error explains why."""
    with gdal_exceptions():
        try:
            dataset = gdal.OpenEx(path, gdal.OF_RASTER, open_options=list(open_options))
            return dataset.GetGeoTransform(can_return_null=True) is not None
        except RuntimeError:
            return True


# A name only GDAL resolves (GTIFF_DIR:2:f.tif, NETCDF:..., /vsizip/...): GDAL says what is wrong.
_GDAL_NAME = re.compile(r"^(/vsi|[A-Za-z0-9_]{2,}:)")


# Drivers that read from a web service: their rasters are whole map pyramids (a tiled basemap is
# some 67 million pixels square), not an image to read end to end.
WEB_DRIVERS = {"WMS", "WMTS", "WCS", "EEDAI", "PLMosaic", "DAAS", "OGCAPI", "NGW"}
# Larger than any one image (a 0.25 m HiRISE strip is about 5e9 px): a basemap or map pyramid
# (MBTiles, a tile cache) whose tile grid alone would exhaust the memory.
MAX_PIXELS = 10**11
VRT_PRODUCTS = 64  # sources of a VRT looked into for their product's metadata file


def _open(path: str, open_options: tuple[str, ...] = ()) -> gdal.Dataset:
    """``path`` is a file or anything else GDAL opens (``/vsizip/...``, ``NETCDF:"f.nc":v``)."""
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER, open_options=list(open_options))
    except RuntimeError as exc:
        dataset, error = None, exc
    else:
        error = None
    if dataset is None and not os.path.exists(path) and not _GDAL_NAME.match(path):
        raise DtmError(f"The input '{path}' does not exist.")
    if error is not None:
        raise DtmError(f"GDAL cannot read '{Path(path).name}' as a raster: {error}") from error
    inside = dataset.GetSubDatasets() if dataset is not None else []
    if inside and dataset.RasterCount == 0:  # a NetCDF, HDF or GeoPackage of several rasters
        names = " or ".join(name for name, _ in inside[:2])
        raise DtmError(f"'{Path(path).name}' holds {len(inside)} rasters; name the one to use, "
                       f"such as {names}.")
    if dataset is None or dataset.RasterCount == 0:
        raise DtmError(f"GDAL cannot read '{Path(path).name}' as a raster.")
    driver = dataset.GetDriver().ShortName
    if driver in WEB_DRIVERS:
        raise DtmError(f"'{Path(path).name}' is a web service ({driver}), not an image: save the "
                       "area you want as a GeoTIFF first (gdal_translate -projwin, or Export > "
                       "Save As in QGIS).")
    if dataset.RasterXSize * dataset.RasterYSize > MAX_PIXELS:
        raise DtmError(f"'{Path(path).name}' is {dataset.RasterXSize} x {dataset.RasterYSize} "
                       "pixels, a basemap rather than an image: save the area you want as a "
                       "GeoTIFF first (gdal_translate -projwin, or Export > Save As in QGIS).")
    return dataset


def bands_read(path: str, band: int | None, open_options: tuple[str, ...] = ()
               ) -> tuple[int, ...]:
    """The numbers of the bands a run reads for ``band`` (None: band 1 or the luminance of
    RGB; 0: luminance); DtmError where it can read none."""
    with gdal_exceptions():
        dataset = _open(path, open_options)  # held: its bands die with it
        return tuple(b.GetBand() for b in _select_bands(dataset, band)[0])


def _select_bands(dataset: gdal.Dataset, band: int | None) -> tuple[list, tuple[float, ...]]:
    count = dataset.RasterCount
    colour = [dataset.GetRasterBand(i + 1).GetColorInterpretation() for i in range(count)]
    is_rgb = count >= 3 and colour[:3] == [gdal.GCI_RedBand, gdal.GCI_GreenBand,
                                            gdal.GCI_BlueBand]
    if band == 0 or (band is None and is_rgb):
        if count < 3:
            raise DtmError(f"Luminance needs three bands (red, green, blue); the raster has "
                           f"{count}.")
        return [dataset.GetRasterBand(i) for i in (1, 2, 3)], LUMINANCE
    band = band or 1
    if not 1 <= band <= count:
        raise DtmError(f"Band {band} does not exist: the raster has {count} band(s).")
    if colour[band - 1] == gdal.GCI_PaletteIndex:
        raise DtmError(f"Band {band} holds colour-table indices, not brightness; expand it "
                       "first (gdal_translate -expand rgb).")
    if colour[band - 1] == gdal.GCI_AlphaBand:
        raise DtmError(f"Band {band} is the alpha (transparency) band, not brightness; choose "
                       "another band.")
    if gdal.DataTypeIsComplex(dataset.GetRasterBand(band).DataType):
        raise DtmError(f"Band {band} holds complex numbers (as radar data do), not brightness; "
                       "give an image of amplitudes instead.")
    return [dataset.GetRasterBand(band)], (1.0,)


DEGENERATE_GRID = ("The input's geotransform is degenerate (its pixels have no size); fix "
                   "its georeferencing or remove it and give the pixel size.")


def _georeferencing(dataset: gdal.Dataset, pixel_size: float | None, path: str,
                    crs_wkt: str | None = None) -> Georeferencing:
    geotransform = dataset.GetGeoTransform(can_return_null=True)
    if geotransform is not None and gdal.InvGeoTransform(geotransform) is None:
        raise DtmError(DEGENERATE_GRID)
    wkt = crs_wkt or dataset.GetProjection() or ""
    srs = osr.SpatialReference()
    if wkt and srs.ImportFromWkt(wkt) != 0:
        raise DtmError("The CRS given for the input is not valid WKT.")
    cols, rows = dataset.RasterXSize, dataset.RasterYSize
    if pixel_size is not None:
        if not 0 < pixel_size < math.inf:
            raise DtmError(f"The pixel size must be a positive number, not {pixel_size}.")
        # A world file without a CRS still places the output, and still says where up is;
        # without one, a PDS label may say where north is.
        if geotransform is None:
            north, mirrored = _frame_from_points(dataset) or (_north_from_label(path, dataset),
                                                              False)
            return Georeferencing(None, "", float(pixel_size), north, mirrored,
                                  gcps=tuple(dataset.GetGCPs()),
                                  gcp_wkt=dataset.GetGCPProjection() or "",
                                  rpc=dataset.GetMetadata("RPC") or None)
        north, mirrored = image_frame(geotransform, srs, cols, rows)
        return Georeferencing(tuple(geotransform), wkt, float(pixel_size), north, mirrored)
    if geotransform is None and dataset.GetGCPCount():
        raise DtmError("The input is placed only by ground control points; warp it onto a "
                       "grid first (gdalwarp), or give its pixel size to use it as it is "
                       "(the DTM keeps the points).")
    if geotransform is None and dataset.GetMetadata("RPC"):
        raise DtmError("The input is placed only by its RPCs (a raw satellite product); "
                       "orthorectify it first (gdalwarp -rpc), or give its pixel size to use it "
                       "as it is (the DTM keeps the RPCs).")
    if geotransform is None:
        raise DtmError("The input has no georeferencing (geotransform and CRS); give its "
                       "pixel size in metres to use it anyway.")
    if not wkt:
        raise DtmError("The input has a grid but no CRS, so its pixel size on the ground is "
                       "unknown; give the pixel size in metres (the output keeps the grid), or "
                       "assign the CRS (gdal_edit.py -a_srs).")
    width, height = ground_pixel_sides_m(geotransform, srs, cols, rows)
    if not (width > 0 and height > 0):  # sides so small they are 0 in floating point
        raise DtmError(DEGENERATE_GRID)
    north, mirrored = image_frame(geotransform, srs, cols, rows)
    return Georeferencing(tuple(geotransform), wkt, math.sqrt(width * height), north, mirrored,
                          width / height)


def ground_pixel_size_m(gt: tuple[float, ...], srs: osr.SpatialReference, cols: int,
                        rows: int) -> float:
    """Geometric mean of the ground size of the centre pixel's two sides, in metres."""
    return math.sqrt(math.prod(ground_pixel_sides_m(gt, srs, cols, rows)))


def ground_pixel_sides_m(gt: tuple[float, ...], srs: osr.SpatialReference, cols: int,
                         rows: int) -> tuple[float, float]:
    """Ground width and height of the centre pixel, in metres.

    Measured on the body's sphere, not in map units, which a projection stretches (Web
    Mercator's pixels cover cos(latitude) of their map size).
    """
    ground = _to_geographic(srs)
    if ground is not None:
        try:
            corners = [ground.TransformPoint(*gdal.ApplyGeoTransform(gt, cols / 2 + dx,
                                                                     rows / 2 + dy))
                       for dx, dy in ((0, 0), (1, 0), (0, 1))]
        except RuntimeError:
            corners = []
        if corners and all(map(math.isfinite, np.ravel(corners))):
            radius = srs.GetSemiMajor()
            return (_arc(corners[0], corners[1]) * radius, _arc(corners[0], corners[2]) * radius)
    units = srs.GetSemiMajor() * math.pi / 180 if srs.IsGeographic() else srs.GetLinearUnits()
    return math.hypot(gt[1], gt[4]) * units, math.hypot(gt[2], gt[5]) * units


def _arc(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Angle in radians between two (lon, lat) points on a sphere (haversine)."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 \
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * math.asin(math.sqrt(min(h, 1.0)))


def _to_geographic(srs: osr.SpatialReference, inverse: bool = False
                   ) -> osr.CoordinateTransformation | None:
    """Map coordinates to (lon, lat) on the CRS's own body (``inverse``: back); None for a
    local CRS."""
    if not (srs.IsGeographic() or srs.IsProjected()):
        return None
    # Longitude east and latitude north on the CRS's own ellipsoid, whatever its axes (IAU
    # planetographic CRSs count longitude west).
    geographic = osr.SpatialReference()
    geographic.SetGeogCS("body", "body", "body", srs.GetSemiMajor(), srs.GetInvFlattening())
    # A CRS bound to WGS84 by a datum shift (+towgs84, as many Mars and Moon exports carry) has
    # PROJ look for a way through WGS84 that no other body has: its own geographic CRS needs none.
    for target in (geographic, srs.CloneGeogCS()):
        for ref in (srs, target):
            ref.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        try:  # None, or RuntimeError where osr's exceptions are on, when PROJ finds no way
            transform = osr.CreateCoordinateTransformation(
                *((target, srs) if inverse else (srs, target)))
        except RuntimeError:
            transform = None
        if transform is not None:
            return transform
    return None


def north_in_image(gt: tuple[float, ...], srs: osr.SpatialReference, cols: int,
                   rows: int) -> float:
    """Where true north points at the scene centre, clockwise from image up (see
    ``image_frame``)."""
    return image_frame(gt, srs, cols, rows)[0]


def image_frame(gt: tuple[float, ...], srs: osr.SpatialReference, cols: int,
                rows: int) -> tuple[float, bool]:
    """Where true north points at the scene centre, clockwise from image up, and whether the
    grid is mirrored (east anticlockwise of north).

    Not only the geotransform's rotation: in a polar stereographic CRS grid north and true
    north part by up to 180 degrees. North is NaN where the CRS cannot say (the scene's centre
    lies outside the area where its projection is defined).
    """
    to_geo, to_map = _to_geographic(srs), _to_geographic(srs, inverse=True)
    grid_mirrored = gt[1] * gt[5] - gt[2] * gt[4] > 0  # when map x and y are east and north
    if to_geo is None or to_map is None:  # a local CRS: grid north is all there is
        # One row up moves by (-gt[2], -gt[5]) in map x and y; north is the other way round.
        return -math.degrees(math.atan2(-gt[2], -gt[5])) % 360, grid_mirrored
    inverse = gdal.InvGeoTransform(gt)
    centre = gdal.ApplyGeoTransform(gt, cols / 2, rows / 2)

    def pixel_step(lon: float, lat: float) -> tuple[float, float]:
        x, y, _ = to_map.TransformPoint(lon, lat)
        col, row = gdal.ApplyGeoTransform(inverse, x, y)
        return col - cols / 2, row - rows / 2

    try:
        lon, lat, _ = to_geo.TransformPoint(*centre)
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise RuntimeError("the centre is off the body")
        step = -1e-4 if lat > 89.9 else 1e-4  # at the pole, step south and turn round
        n_col, n_row = (step / abs(step) * v for v in pixel_step(lon, lat + step))
        cos_lat = math.cos(math.radians(lat))
        east = pixel_step(lon + 1e-4 / cos_lat, lat) if cos_lat > 1e-9 else None
    except RuntimeError:
        return math.nan, grid_mirrored
    north = math.degrees(math.atan2(n_col, -n_row)) % 360
    if east is None:  # exactly at a pole, east is nowhere
        return north, grid_mirrored
    # Rows grow downwards: east a quarter turn clockwise of north gives a positive product.
    return north, n_col * east[1] - n_row * east[0] < 0


# PDS3 keywords of HiRISE labels; azimuths are clockwise from the image's right edge.
_LABEL_NUMBER = r"\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


# The sun's keys in GDAL's IMD metadata domain, lower case without namespace or punctuation:
# Maxar's .IMD or .XML (IMAGE_1.sunAz, or meanSunAz), Landsat's _MTL.txt
# (IMAGE_ATTRIBUTES.SUN_AZIMUTH), Pleiades' and SPOT's DIMAP (Solar_Incidences.SUN_AZIMUTH),
# GeoEye's and Ikonos' _metadata.txt (Sun Angle Azimuth: 148.4 degrees), RapidEye's
# _metadata.xml (opt:illuminationAzimuthAngle).
_IMD_SUN_KEYS = {"sunaz": 0, "meansunaz": 0, "sunazimuth": 0, "sunangleazimuth": 0,
                 "illuminationazimuthangle": 0,
                 "sunel": 1, "meansunel": 1, "sunelevation": 1, "sunangleelevation": 1,
                 "illuminationelevationangle": 1}
# NITF's USE00A extension gives 999.9 for an angle it does not know.
_NITF_UNKNOWN = 999.9


class ProductSun(NamedTuple):
    """The sun as the product gives it, and where each angle was read (for messages)."""

    azimuth: float | None
    elevation: float | None
    azimuth_from: str = ""
    elevation_from: str = ""
    azimuth_spread: float = 0.0
    """How far from their mean the azimuths lie, for a product of several images."""


def sun_from_product(path: str, dataset: gdal.Dataset | None = None,
                     wanted: tuple[bool, bool] = (True, True)) -> ProductSun:
    """Sun azimuth (clockwise from north) and elevation from the product: the dataset's
    metadata, else the product metadata file GDAL reads beside Earth imagery, else a PDS
    label; each ``wanted`` angle from the first of these that has it."""
    angles: list[float | None] = [None, None]
    missing = list(wanted)
    sources, spread = ["", ""], 0.0

    def take(source: str, values: tuple[float | None, float | None]) -> None:
        for i, value in enumerate(values):
            if missing[i] and value is not None:
                angles[i], sources[i], missing[i] = value, source, False

    # Each source is read only for the angles still missing: a bad value that is not needed
    # (an angle the user gave, or one found in an earlier source) does not stop the run.
    if dataset is not None:
        take("metadata", _sun_from_metadata(dataset, missing))
        if any(missing):
            products = _product_datasets(path, dataset)
            suns = [_imd_suns(product, missing) for product in products]
            azimuths = [a for found, _ in suns for a in found]
            elevations = [e for _, found in suns for e in found]
            metadata_file = ", ".join(dict.fromkeys(map(_metadata_file, products)))
            take(metadata_file, _mean_sun(azimuths, elevations))
            if sources[0] == metadata_file:
                spread = _azimuth_spread(azimuths)
    if any(missing):
        suns = [_sun_from_label(label) for label in _read_labels(path, dataset)]
        source = "label" if len(suns) < 2 else "labels"
        take(source, _mean_sun([a for a, _ in suns if a is not None],
                               [e for _, e in suns if e is not None]))
        if sources[0] == source:
            spread = _azimuth_spread([a for a, _ in suns if a is not None])
    return ProductSun(*angles, *sources, spread)


def _sun_from_metadata(dataset: gdal.Dataset, wanted: list[bool]
                       ) -> tuple[float | None, float | None]:
    """``SUN_AZIMUTH``/``SUN_ELEVATION``, or NITF's USE00A ``SUN_AZ``/``SUN_EL``."""
    meta = {k.upper(): v for k, v in (dataset.GetMetadata() or {}).items()}
    angles: list[float | None] = []
    for key, nitf, want in (("SUN_AZIMUTH", "NITF_USE00A_SUN_AZ", wanted[0]),
                            ("SUN_ELEVATION", "NITF_USE00A_SUN_EL", wanted[1])):
        if not want:
            angles.append(None)
            continue
        value = _number(meta, key)
        if value is None and (value := _number(meta, nitf)) == _NITF_UNKNOWN:
            value = None
        angles.append(value)
    return angles[0], angles[1]


def _product_datasets(path: str, dataset: gdal.Dataset) -> list[gdal.Dataset]:
    """The datasets GDAL found a product metadata file beside: the input's own, else (a VRT,
    which keeps its products' metadata) those of its first ``VRT_PRODUCTS`` sources (a mosaic of
    several products gives their mean sun, and a caution where they differ)."""
    if dataset.GetMetadata("IMD"):
        return [dataset]
    found = []
    for source in _vrt_sources(path)[:VRT_PRODUCTS]:
        with contextlib.suppress(RuntimeError):
            opened = gdal.Open(source)
            if opened is not None and opened.GetMetadata("IMD"):
                found.append(opened)
    return found or [dataset]


def _imd_suns(dataset: gdal.Dataset, wanted: list[bool]) -> tuple[list[float], list[float]]:
    """Every ``wanted`` sun azimuth and elevation in GDAL's IMD domain (Maxar, Landsat and
    other Earth products' sidecar files): one per image or point of the product."""
    values: tuple[list[float], list[float]] = ([], [])
    imd = dataset.GetMetadata("IMD") or {}
    for key in imd:
        name = re.sub(r"[^a-z]", "", key.rsplit(".", 1)[-1].rsplit(":", 1)[-1].lower())
        if name in _IMD_SUN_KEYS and wanted[_IMD_SUN_KEYS[name]]:
            values[_IMD_SUN_KEYS[name]].append(_number(imd, key))
    return values


def _mean_sun(azimuths: list[float], elevations: list[float]
              ) -> tuple[float | None, float | None]:
    """The mean of the product's suns (a circular mean for the azimuth)."""
    return (_mean_azimuth(azimuths) if azimuths else None,
            sum(elevations) / len(elevations) if elevations else None)


def _mean_azimuth(azimuths: list[float]) -> float:
    mean = math.degrees(math.atan2(sum(math.sin(math.radians(a)) for a in azimuths),
                                   sum(math.cos(math.radians(a)) for a in azimuths)))
    return round(mean, 9) % 360  # rounded first: the mean of 350 and 10 is 0, not 360 - 1e-14


def _azimuth_spread(azimuths: list[float]) -> float:
    """The largest angle between one of ``azimuths`` and their mean."""
    mean = _mean_azimuth(azimuths)
    return max((abs((a - mean + 180) % 360 - 180) for a in azimuths), default=0.0)


def _metadata_file(dataset: gdal.Dataset) -> str:
    """The name of the product metadata file GDAL found beside the image, for messages."""
    files = [Path(f).name for f in (dataset.GetFileList() or [])[1:]
             if f.lower().endswith((".imd", ".xml", ".txt", ".dim"))
             and not f.lower().endswith(".aux.xml")]
    return files[0] if files else "the product's metadata file"


def _sun_from_label(label: str) -> tuple[float | None, float | None]:
    """Sun azimuth (from north) and elevation from a PDS3 label; an angle out of its range
    (a NOT_APPLICABLE_CONSTANT such as -9998) counts as absent."""
    values = {}
    for key, low, high in (("SUB_SOLAR_AZIMUTH", 0.0, 360.0), ("NORTH_AZIMUTH", 0.0, 360.0),
                           ("INCIDENCE_ANGLE", 0.0, 90.0)):
        match = re.search(r"^\s*" + key + _LABEL_NUMBER, label, re.MULTILINE)
        if match and low <= float(match.group(1)) <= high:
            values[key] = float(match.group(1))
    incidence = values.get("INCIDENCE_ANGLE")
    elevation = None if incidence is None else 90.0 - incidence
    if "SUB_SOLAR_AZIMUTH" not in values:
        return None, elevation
    return (values["SUB_SOLAR_AZIMUTH"] - values.get("NORTH_AZIMUTH", 270.0)) % 360, elevation


def label_scaling(path: str) -> tuple[float, float]:
    """The DN-to-I/F scaling of a product's PDS3 label, as a run on ``path`` applies it where
    GDAL gives none; (1, 0) without one."""
    return _label_scaling(_read_label(path, None))


def _label_scaling(label: str) -> tuple[float, float]:
    """``SCALING_FACTOR`` and ``OFFSET`` of the label's IMAGE object (DN to I/F in HiRISE
    products); (1, 0) without them."""
    image = re.search(r"^\s*OBJECT\s*=\s*IMAGE\s*$(.*?)^\s*END_OBJECT\s*=\s*IMAGE\s*$", label,
                      re.MULTILINE | re.DOTALL)
    found = {}
    for key in ("SCALING_FACTOR", "OFFSET"):
        match = re.search(r"^\s*" + key + _LABEL_NUMBER, image.group(1) if image else "",
                          re.MULTILINE)
        found[key] = float(match.group(1)) if match else None
    scale, offset = found["SCALING_FACTOR"], found["OFFSET"]
    if scale is None or not math.isfinite(scale) or scale <= 0:
        return 1.0, 0.0
    return scale, offset if offset is not None and math.isfinite(offset) else 0.0


def _frame_from_points(dataset: gdal.Dataset) -> tuple[float, bool] | None:
    """North and mirroring of an image placed only by ground control points or RPCs (a raw
    product may be turned or mirrored), from the affine grid they give about the scene's
    centre; None where they say nothing."""
    if dataset.GetGCPCount():
        method, srs = "GCP_POLYNOMIAL", dataset.GetGCPSpatialRef()
    elif dataset.GetMetadata("RPC"):
        method, srs = "RPC", osr.SpatialReference()
        srs.ImportFromEPSG(4326)  # RPCs give WGS84 longitude and latitude
    else:
        return None
    cx, cy = dataset.RasterXSize / 2, dataset.RasterYSize / 2
    try:
        transformer = gdal.Transformer(dataset, None, [f"METHOD={method}"])
    except RuntimeError:  # too few points for a grid (None where GDAL's exceptions are off)
        transformer = None
    if transformer is None:
        return None
    points, placed = transformer.TransformPoints(
        False, [(cx, cy, 0.0), (cx + 1, cy, 0.0), (cx, cy + 1, 0.0)])
    (x0, y0, _), (x1, y1, _), (x2, y2, _) = points
    if srs is None or not all(placed) or not all(map(math.isfinite, (x0, y0, x1, y1, x2, y2))):
        return None
    gt = (x0 - cx * (x1 - x0) - cy * (x2 - x0), x1 - x0, x2 - x0,
          y0 - cx * (y1 - y0) - cy * (y2 - y0), y1 - y0, y2 - y0)
    north, mirrored = image_frame(gt, srs, dataset.RasterXSize, dataset.RasterYSize)
    return (north, mirrored) if math.isfinite(north) else None


def _north_from_label(path: str, dataset: gdal.Dataset) -> float:
    """North clockwise from image up, from a PDS label's NORTH_AZIMUTH (clockwise from the
    image's right edge); 0 (north up) without one."""
    label = _read_label(path, dataset)
    match = re.search(r"^\s*NORTH_AZIMUTH" + _LABEL_NUMBER, label, re.MULTILINE)
    return (float(match.group(1)) - 270.0) % 360 if match else 0.0


def _number(meta: dict[str, str], key: str) -> float | None:
    if key not in meta:
        return None
    try:  # GeoEye's files add a unit: "148.4268 degrees"
        value = float(re.sub(r"\s*deg(rees)?$", "", meta[key].strip(), flags=re.IGNORECASE))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DtmError(f"The input's metadata item {key} is not a number: '{meta[key]}'; "
                       "give the sun's azimuth and elevation instead.")
    return value


def _read_label(path: str, dataset: gdal.Dataset | None) -> str:
    """The first of ``_read_labels``, or ''."""
    return next(iter(_read_labels(path, dataset)), "")


def _read_labels(path: str, dataset: gdal.Dataset | None) -> list[str]:
    """PDS3 labels, detached (same stem, .LBL) or attached at the start of the file: the
    input's own, else those of the first ``VRT_PRODUCTS`` files it is read from (a crop to a
    VRT keeps its product's label; a mosaic of several products has theirs)."""
    if (own := _label_of(path)) is not None:
        return [own]
    sources = (dataset.GetFileList() or [])[1:] if dataset is not None else []
    labels = (_label_of(source) for source in sources[:VRT_PRODUCTS])
    return list(dict.fromkeys(label for label in labels if label is not None))


def _head(path: str) -> bytes:
    """The first MiB of a file that starts like a PDS3 label, else its first 200 bytes (a VRT
    may list hundreds of large sources); RuntimeError where it cannot be read."""
    handle = gdal.VSIFOpenL(path, "rb")
    if handle is None:
        raise RuntimeError(f"cannot open {path}")
    try:
        head = gdal.VSIFReadL(1, 200, handle) or b""
        if b"PDS_VERSION_ID" in head:
            head += gdal.VSIFReadL(1, (1 << 20) - 200, handle) or b""
        return head
    finally:
        gdal.VSIFCloseL(handle)


def _label_of(source: str) -> str | None:
    """The label of one file, beside it or at its start; read through GDAL, so a product in a
    zip (``/vsizip/``) or behind another virtual file system has its label found too."""
    stem = os.path.splitext(source)[0]
    for candidate in (stem + ".LBL", stem + ".lbl", source):
        try:
            head = _head(candidate)
        except RuntimeError:  # absent, a folder, or not readable: no label there
            continue
        if b"PDS_VERSION_ID" in head[:200]:
            text = head.decode("latin-1")
            end = re.search(r"^END\s*$", text, re.MULTILINE)
            return text[: end.start()] if end else text
    return None
