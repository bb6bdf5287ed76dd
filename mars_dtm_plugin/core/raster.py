"""Reading the input window by window, scene statistics, georeferencing, sun geometry."""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from .errors import DtmError

# ITU-R BT.601 luma weights, the usual choice for greyscale from RGB imagery.
LUMINANCE = (0.299, 0.587, 0.114)
SAMPLE_SIDE = 1024  # scene percentiles from at most a million pixels: plenty, and fast


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


class InputRaster:
    """One band (or the luminance of RGB) of a raster, read in windows with its validity mask."""

    def __init__(self, path: str, band: int | None = None, pixel_size: float | None = None):
        self.path = path
        self.dataset = _open(path)
        self.width = self.dataset.RasterXSize
        self.height = self.dataset.RasterYSize
        self.bands, self.weights = _select_bands(self.dataset, band)
        self.georef = _georeferencing(self.dataset, pixel_size)

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (float32) and validity of a window; outside the raster, mirrored and invalid."""
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + width, self.width), min(y0 + height, self.height)
        if ix1 <= ix0 or iy1 <= iy0:
            raise ValueError("window does not touch the raster")
        values, valid = self._read_inside(ix0, iy0, ix1 - ix0, iy1 - iy0)
        pads = ((iy0 - y0, y0 + height - iy1), (ix0 - x0, x0 + width - ix1))
        if any(p for pair in pads for p in pair):
            values = np.pad(values, pads, mode="symmetric")
            valid = np.pad(valid, pads, mode="constant", constant_values=False)
        return values, valid

    def _read_inside(self, x0: int, y0: int, w: int, h: int,
                     buf: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        bw, bh = buf or (w, h)
        values = np.zeros((bh, bw), np.float32)
        valid = np.ones((bh, bw), bool)
        for band, weight in zip(self.bands, self.weights):
            data = band.ReadAsArray(x0, y0, w, h, buf_xsize=bw, buf_ysize=bh)
            if band.GetMaskFlags() != gdal.GMF_ALL_VALID:
                mask = band.GetMaskBand().ReadAsArray(x0, y0, w, h, buf_xsize=bw, buf_ysize=bh)
                valid &= mask > 0
            if data.dtype.kind == "f":
                valid &= np.isfinite(data)
            values += data if weight == 1.0 else np.float32(weight) * data
        if not valid.all():
            values[~valid] = 0
        return values, valid

    def sample(self) -> np.ndarray:
        """Valid values from a decimated read of the whole scene (for scene statistics)."""
        scale = max(self.width, self.height) / SAMPLE_SIDE
        buf = (self.width, self.height) if scale <= 1 else (
            max(1, round(self.width / scale)), max(1, round(self.height / scale)))
        values, valid = self._read_inside(0, 0, self.width, self.height, buf)
        found = values[valid]
        if not found.size and scale > 1:
            found = self._scan_valid()
        if not found.size:
            raise DtmError(f"'{Path(self.path).name}' has no valid pixels: it is all nodata.")
        return found

    def _scan_valid(self) -> np.ndarray:
        """Full-resolution scan for scenes whose valid pixels the decimated read missed."""
        found, rows = [], 256
        for y0 in range(0, self.height, rows):
            values, valid = self._read_inside(0, y0, self.width, min(rows, self.height - y0))
            found.append(values[valid][::64])
        return np.concatenate(found)

    def close(self) -> None:
        self.bands = []
        self.dataset = None


def has_geotransform(path: str) -> bool:
    """Whether the raster is on a grid (not only placed by ground control points); True when
    it cannot be opened, so that the engine's own error explains why."""
    with gdal_exceptions():
        try:
            return gdal.Open(path).GetGeoTransform(can_return_null=True) is not None
        except RuntimeError:
            return True


def _open(path: str) -> gdal.Dataset:
    """``path`` is a file or anything else GDAL opens (``/vsizip/...``, ``NETCDF:"f.nc":v``)."""
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER)
    except RuntimeError as exc:
        dataset, error = None, exc
    else:
        error = None
    if dataset is None and not os.path.exists(path):
        raise DtmError(f"The input '{path}' does not exist.")
    if error is not None:
        raise DtmError(f"GDAL cannot read '{Path(path).name}' as a raster: {error}") from error
    if dataset is None or dataset.RasterCount == 0:
        raise DtmError(f"GDAL cannot read '{Path(path).name}' as a raster.")
    return dataset


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
    return [dataset.GetRasterBand(band)], (1.0,)


def _georeferencing(dataset: gdal.Dataset, pixel_size: float | None) -> Georeferencing:
    geotransform = dataset.GetGeoTransform(can_return_null=True)
    wkt = dataset.GetProjection() or ""
    srs = osr.SpatialReference()
    if wkt:
        srs.ImportFromWkt(wkt)
    if pixel_size is not None:
        if not pixel_size > 0:
            raise DtmError(f"The pixel size must be positive, not {pixel_size}.")
        # A world file without a CRS still places the output, and still says where up is.
        if geotransform is None:
            return Georeferencing(None, "", float(pixel_size), 0.0)
        north = north_in_image(geotransform, srs, dataset.RasterXSize, dataset.RasterYSize)
        return Georeferencing(tuple(geotransform), wkt, float(pixel_size), north)
    if geotransform is None or not wkt:
        raise DtmError("The input has no georeferencing (geotransform and CRS); give its "
                       "pixel size in metres to use it anyway.")
    size = _pixel_size_metres(geotransform, srs, dataset.RasterYSize)
    north = north_in_image(geotransform, srs, dataset.RasterXSize, dataset.RasterYSize)
    return Georeferencing(tuple(geotransform), wkt, size, north)


def _pixel_size_metres(gt: tuple[float, ...], srs: osr.SpatialReference, rows: int) -> float:
    """Geometric mean of the pixel's two sides in metres, also in a geographic CRS."""
    size_x, size_y = math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5])
    if srs.IsGeographic():
        metres_per_degree = srs.GetSemiMajor() * math.pi / 180
        centre_lat = gt[3] + gt[5] * rows / 2
        size_x *= metres_per_degree * math.cos(math.radians(centre_lat))
        size_y *= metres_per_degree
    else:
        size_x *= srs.GetLinearUnits()
        size_y *= srs.GetLinearUnits()
    return math.sqrt(size_x * size_y)


def north_in_image(gt: tuple[float, ...], srs: osr.SpatialReference, cols: int,
                    rows: int) -> float:
    """Where true north points at the scene centre, clockwise from image up.

    Not only the geotransform's rotation: in a polar stereographic CRS grid north and true
    north part by up to 180 degrees. NaN where the CRS cannot say (the scene's centre lies
    outside the area where its projection is defined).
    """
    geographic = srs.CloneGeogCS() if srs.IsGeographic() or srs.IsProjected() else None
    inverse = gdal.InvGeoTransform(gt)
    if geographic is None or inverse is None:  # a local CRS: grid north is all there is
        # One row up moves by (-gt[2], -gt[5]) in map x and y; north is the other way round.
        return -math.degrees(math.atan2(-gt[2], -gt[5])) % 360
    for ref in (srs, geographic):
        ref.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_geo = osr.CoordinateTransformation(srs, geographic)
    to_map = osr.CoordinateTransformation(geographic, srs)
    centre = gdal.ApplyGeoTransform(gt, cols / 2, rows / 2)
    try:
        lon, lat, _ = to_geo.TransformPoint(*centre)
        step = -1e-4 if lat > 89.9 else 1e-4  # at the pole, step south and turn round
        x, y, _ = to_map.TransformPoint(lon, lat + step)
    except RuntimeError:
        return math.nan
    col, row = gdal.ApplyGeoTransform(inverse, x, y)
    d_col, d_row = (col - cols / 2), (row - rows / 2)
    if step < 0:
        d_col, d_row = -d_col, -d_row
    return math.degrees(math.atan2(d_col, -d_row)) % 360


# PDS3 keywords of HiRISE labels; azimuths are clockwise from the image's right edge.
_LABEL_NUMBER = r"\s*=\s*([-+0-9.eE]+)"


def sun_from_product(path: str, dataset: gdal.Dataset | None = None
                     ) -> tuple[float | None, float | None]:
    """Sun azimuth (clockwise from north) and elevation from metadata or a PDS label; the
    metadata's value where it has one, the label's where it does not."""
    meta = {k.upper(): v for k, v in (dataset.GetMetadata() or {}).items()} if dataset else {}
    azimuth, elevation = _number(meta, "SUN_AZIMUTH"), _number(meta, "SUN_ELEVATION")
    if azimuth is None or elevation is None:
        label_azimuth, label_elevation = _sun_from_label(path)
        azimuth = label_azimuth if azimuth is None else azimuth
        elevation = label_elevation if elevation is None else elevation
    return azimuth, elevation


def _sun_from_label(path: str) -> tuple[float | None, float | None]:
    label = _read_label(path)
    values = {}
    for key in ("SUB_SOLAR_AZIMUTH", "NORTH_AZIMUTH", "INCIDENCE_ANGLE"):
        match = re.search(r"^\s*" + key + _LABEL_NUMBER, label, re.MULTILINE)
        if match:
            values[key] = float(match.group(1))
    incidence = values.get("INCIDENCE_ANGLE")
    elevation = None if incidence is None else 90.0 - incidence
    if "SUB_SOLAR_AZIMUTH" not in values:
        return None, elevation
    return (values["SUB_SOLAR_AZIMUTH"] - values.get("NORTH_AZIMUTH", 270.0)) % 360, elevation


def _number(meta: dict[str, str], key: str) -> float | None:
    if key not in meta:
        return None
    try:
        value = float(meta[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DtmError(f"The input's metadata item {key} is not a number: '{meta[key]}'.")
    return value


def _read_label(path: str) -> str:
    """The PDS3 label: detached (same stem, .LBL) or attached at the start of the file."""
    source = Path(path)
    for candidate in (source.with_suffix(".LBL"), source.with_suffix(".lbl"), source):
        if candidate.is_file():
            with open(candidate, "rb") as handle:
                head = handle.read(1 << 20).decode("latin-1")
            if "PDS_VERSION_ID" in head[:200]:
                end = re.search(r"^END\s*$", head, re.MULTILINE)
                return head[: end.start()] if end else head
    return ""
