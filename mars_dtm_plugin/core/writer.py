"""The output DTM: Float32 GeoTIFF written block by block under a temporary name."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from osgeo import gdal

from .errors import DtmError

NODATA = -99999.0
OUTPUT_EXTENSIONS = (".tif", ".tiff")
BLOCK = 256
# Level 1: float heights with sensor noise compress no better at higher levels, only slower.
CREATION_OPTIONS = [
    "TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE",
    "PREDICTOR=3", "ZLEVEL=1", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS",
]


def check_output_path(input_path: str, output_path: str, input_files: Iterable[str] = ()) -> None:
    """Refuse an output that would overwrite the input (or a file it is read from, such as a
    VRT's source or a PDS label's image: ``input_files``) or cannot be written."""
    out = Path(output_path)
    if out.name.lower() in OUTPUT_EXTENSIONS:  # ".tif" is a hidden file's name, not a suffix
        raise DtmError(f"The output '{out.name}' needs a name before its extension.")
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise DtmError(f"The output must be a GeoTIFF (.tif) file, not '{out.name}'.")
    if _same_file(out, Path(input_path)):
        raise DtmError("The output path is the input path; choose another file name.")
    for used in input_files:
        if _same_file(out, Path(used)):
            raise DtmError(f"The output path is '{used}', which this run reads from; "
                           "choose another file name.")
    if not out.parent.is_dir():
        raise DtmError(f"The output folder '{out.parent}' does not exist.")
    if out.is_dir():
        raise DtmError(f"The output '{out}' is a folder; give a file name ending in .tif.")
    if out.is_file() and not out.stat().st_mode & 0o222:  # through a link: its target's
        raise DtmError(f"The output '{out.name}' exists and is write-protected; choose another "
                       "file name, or make it writable to replace it.")
    if not os.access(out.parent, os.W_OK):
        raise DtmError(f"The output folder '{out.parent}' is not writable.")
    if out.is_file() and not _may_replace(out):
        raise DtmError(f"The output '{out.name}' belongs to another user in a folder where only "
                       "a file's owner may replace it (such as /tmp); choose another file name.")


def _may_replace(path: Path) -> bool:
    """Whether this process may rename a new file over ``path`` (the writer's last step): in
    a sticky folder only the file's or the folder's owner (or root) may."""
    if os.name != "posix":
        return True
    target = Path(os.path.realpath(path))  # a link is written through: its target is replaced
    folder, me = target.parent.stat(), os.geteuid()
    return not folder.st_mode & stat.S_ISVTX or me in (0, folder.st_uid, target.stat().st_uid)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also through links and case-insensitive names
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


# The world files GDAL reads beside a GeoTIFF, in either case.
WORLD_FILES = (".tfw", ".tifw", ".tiffw", ".wld")


def _remove(path: Path) -> None:
    """Delete ``path`` where it exists; beside a long name, a sidecar's name may be too long
    to exist."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise


def remove_sidecars(path: Path, placed: bool) -> None:
    """Delete what GDAL or QGIS kept beside an earlier file at ``path`` and would read as this
    one's: statistics, overviews, a mask and, for a file without a grid (not ``placed``), the
    world files that would place it."""
    for sidecar in (".aux.xml", ".ovr", ".msk"):
        _remove(Path(f"{path}{sidecar}"))
    if not placed:
        for world in _stale_world_files(path):
            _remove(world)


def _stale_world_files(path: Path) -> list[Path]:
    """The world files that would place ``path``, but those that may be another file's: a
    .tfw beside dtm.tiff as well as dtm.tif, a .wld beside dtm.png."""
    same = [p for p in path.parent.glob(glob.escape(path.stem) + ".*")
            if p.stem == path.stem and p != path]  # dtm.*, not dtm.v2.tif or dtm.tif.ovr
    others = [p for p in same if p.suffix.lower() not in (*WORLD_FILES, ".prj")]
    tiffs = [p for p in others if p.suffix.lower() in OUTPUT_EXTENSIONS]
    return [p for p in same if p.suffix.lower() in WORLD_FILES
            and not (others if p.suffix.lower() == ".wld" else tiffs)]


def _partial_prefix(path: Path) -> str:
    # The host in the name: a folder shared over the network may hold another machine's runs
    # (a long name by its hash, which tells hosts apart as a cut would not).
    host = socket.gethostname()
    host = host if len(host) <= 40 else hashlib.sha1(host.encode()).hexdigest()[:12]
    # The output's name cut short: the suffixes must not take a long name past 255 bytes.
    name = path.name.encode()[:120].decode(errors="ignore")
    return f".{name}.partial-{host}-"


def _remove_stale_partials(path: Path) -> None:
    """Delete what a killed run (out of memory, SIGKILL) left beside ``path``: partial files
    of this host's processes that no longer run. Others' are left alone."""
    if os.name != "posix":  # no safe probe for a process there; os.kill(pid, 0) would end it
        return
    prefix = _partial_prefix(path)
    for leftover in path.parent.glob(glob.escape(prefix) + "*"):
        pid = leftover.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


class DtmWriter:
    """Writes rows of heights; only ``finish()`` makes the file appear under its final name."""

    def __init__(self, path: str, width: int, height: int,
                 geotransform: tuple[float, ...] | None, crs_wkt: str,
                 gcps: tuple[gdal.GCP, ...] = (), gcp_wkt: str = "",
                 metadata: dict[str, str] | None = None,
                 rpc: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.placed = geotransform is not None
        _remove_stale_partials(self.path)
        # Unique per run, not per process: a QGIS batch runs several in one process.
        self.partial = self.path.with_name(
            f"{_partial_prefix(self.path)}{os.getpid()}-{uuid.uuid4().hex[:8]}.tif")
        self.dataset, self.band, self.overviews = None, None, []
        try:
            driver = gdal.GetDriverByName("GTiff")
            self.dataset = driver.Create(str(self.partial), width, height, 1, gdal.GDT_Float32,
                                         CREATION_OPTIONS)
            if geotransform is not None:
                self.dataset.SetGeoTransform(geotransform)
            if crs_wkt:
                # WKT, not an authority code: Mars CRSs usually have none.
                self.dataset.SetProjection(crs_wkt)
            if gcps:
                self.dataset.SetGCPs(gcps, gcp_wkt)
            if rpc:
                self.dataset.SetMetadata(rpc, "RPC")
            self.dataset.SetMetadata(metadata or {})
            self.band = self.dataset.GetRasterBand(1)
            self.band.SetNoDataValue(NODATA)
            self.band.SetDescription("height (m)")
            self.band.SetUnitType("m")
            self.overviews = self._allocate_overviews()
        except RuntimeError as exc:
            self.abort()
            raise DtmError(f"Cannot create the output '{self.path}': {exc}") from exc
        except BaseException:
            self.abort()
            raise

    def _allocate_overviews(self) -> list[gdal.Band]:
        """Empty overview levels, filled as the rows arrive: no second pass over the file."""
        levels = _overview_levels(self.dataset)
        if not levels:
            return []
        try:
            gdal.SetThreadLocalConfigOption("COMPRESS_OVERVIEW", "DEFLATE")
            gdal.SetThreadLocalConfigOption("PREDICTOR_OVERVIEW", "3")
            gdal.SetThreadLocalConfigOption("ZLEVEL_OVERVIEW", "1")
            self.dataset.BuildOverviews("NONE", levels)
        finally:
            for option in ("COMPRESS_OVERVIEW", "PREDICTOR_OVERVIEW", "ZLEVEL_OVERVIEW"):
                gdal.SetThreadLocalConfigOption(option, None)
        return [self.band.GetOverview(i) for i in range(self.band.GetOverviewCount())]

    def write_rows(self, y0: int, heights: np.ndarray) -> None:
        """Write full-width rows; ``y0`` a multiple of the block size.

        NaN becomes nodata, in place: ``heights`` is the caller's no more.
        """
        try:
            levels = [heights]
            for _ in self.overviews:
                levels.append(_halve(levels[-1]))
            for level, (band, rows) in enumerate(zip([self.band, *self.overviews], levels)):
                rows[np.isnan(rows)] = NODATA
                band.WriteArray(rows, 0, y0 >> level)
        except RuntimeError as exc:
            raise DtmError(f"Writing '{self.path.name}' failed (is the disk full?): {exc}") \
                from exc

    def finish(self, statistics: tuple[float, float, float, float]) -> None:
        """Statistics, close, then rename into place."""
        gdal.ErrorReset()
        with _closing_errors() as errors:
            try:
                self.band.SetStatistics(*statistics)
                self.band = None
                self.overviews = []
                self.dataset.FlushCache()
                self.dataset = None
            except RuntimeError as exc:
                errors.append(str(exc))
        if not errors and gdal.GetLastErrorType() >= gdal.CE_Failure:
            errors.append(gdal.GetLastErrorMsg())
        if errors:  # a file that failed to close is not renamed into place
            self._fail(errors[0])
        os.replace(self.partial, self.path)
        remove_sidecars(self.path, self.placed)  # they would describe the old file
        # A CRS that GeoTIFF's keys cannot hold (an oblique Mars projection) is in the
        # partial file's own .aux.xml: it goes with the file.
        if Path(f"{self.partial}.aux.xml").exists():
            os.replace(f"{self.partial}.aux.xml", f"{self.path}.aux.xml")

    def _fail(self, why: str) -> None:
        self.abort()
        raise DtmError(f"Writing '{self.path.name}' failed (is the disk full?): {why}")

    def abort(self) -> None:
        """Drop the partial file: a failed or cancelled run leaves nothing behind."""
        gdal.PushErrorHandler("CPLQuietErrorHandler")  # what a dropped file's close says
        try:
            with _closing_errors():
                self.band = None
                self.overviews = []
                self.dataset = None
        finally:
            gdal.PopErrorHandler()
        for leftover in (self.partial, Path(f"{self.partial}.aux.xml"),
                         Path(f"{self.partial}.ovr")):
            leftover.unlink(missing_ok=True)


# Errors GDAL raises while closing a file, per thread that is closing one (see below).
_closing: dict[int, list[str]] = {}
_hook_lock = threading.Lock()
_other_hook = sys.unraisablehook


def _collect_closing_error(unraisable: sys.UnraisableHookArgs) -> None:
    errors = _closing.get(threading.get_ident())
    if errors is not None and isinstance(unraisable.exc_value, RuntimeError) and \
            getattr(unraisable.object, "__name__", "") == "delete_Dataset":
        errors.append(str(unraisable.exc_value))
    else:
        _other_hook(unraisable)


@contextmanager
def _closing_errors() -> Iterator[list[str]]:
    """GDAL's errors from closing a file in this thread inside the block. A file is closed by
    its dataset's destructor, which cannot raise: Python would print them as "Exception
    ignored". The hook is installed while any thread is inside the block (concurrent runs
    come and go); it takes only a GDAL dataset's errors on such a thread, and passes on
    everything else."""
    global _other_hook
    errors: list[str] = []
    with _hook_lock:
        if not _closing and sys.unraisablehook is not _collect_closing_error:
            _other_hook = sys.unraisablehook
            sys.unraisablehook = _collect_closing_error
        _closing[threading.get_ident()] = errors
    try:
        yield errors
    finally:
        with _hook_lock:
            del _closing[threading.get_ident()]
            # Gone with the last: a plugin reloaded in QGIS would otherwise chain one more.
            if not _closing and sys.unraisablehook is _collect_closing_error:
                sys.unraisablehook = _other_hook


def _overview_levels(dataset: gdal.Dataset) -> list[int]:
    """Factors 2, 4, ... while a level keeps a block's width, and at most ``BLOCK``: rows
    arrive ``BLOCK`` at a time, which fill whole rows of coarser levels up to that factor."""
    levels, size = [], max(dataset.RasterXSize, dataset.RasterYSize)
    while size / (2 ** (len(levels) + 1)) >= BLOCK and 2 ** (len(levels) + 1) <= BLOCK:
        levels.append(2 ** (len(levels) + 1))
    return levels


def _halve(heights: np.ndarray) -> np.ndarray:
    """2 x 2 mean ignoring NaN (GDAL's AVERAGE with nodata); odd edges keep what they have."""
    rows, cols = heights.shape
    if not rows % 2 and not cols % 2 and not np.isnan(heights).any():  # the usual case
        return (heights[0::2, 0::2] + heights[1::2, 0::2] + heights[0::2, 1::2]
                + heights[1::2, 1::2]) * np.float32(0.25)
    if rows % 2 or cols % 2:
        padded = np.full((rows + rows % 2, cols + cols % 2), np.nan, np.float32)
        padded[:rows, :cols] = heights
        heights = padded
    valid = np.isfinite(heights)
    values = np.where(valid, heights, np.float32(0))
    weight = valid.astype(np.float32)
    total = values[0::2, 0::2] + values[1::2, 0::2] + values[0::2, 1::2] + values[1::2, 1::2]
    count = weight[0::2, 0::2] + weight[1::2, 0::2] + weight[0::2, 1::2] + weight[1::2, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.float32(np.nan))
