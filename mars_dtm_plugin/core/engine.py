"""One image in, one seamless DTM out: the pipeline every front end (CLI, QGIS) calls.

Pass 1 runs the model over overlapping tiles and parks each tile's heights in a temporary file,
measuring how neighbours disagree; pass 2 blends the offset-corrected tiles strip by strip into
the output. Memory stays flat in the raster's size.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .coarse import BlockAveraged, cell_means, long_wavelength_correction, upsample_rows
from .contract import ModelContract
from .errors import Caution, DtmCancelled, DtmError
from .model import Generator, default_model_path, shared_generator
from .raster import (
    FILL_LIKE,
    InputRaster,
    ProductSun,
    fill_refused,
    gdal_exceptions,
    nodata_said,
    sun_from_product,
)
from .reference import open_reference, reference_files
from .stitch import OffsetProblem, blend_ramps
from .tiling import Rotation, Tile, TileGrid, snap, tile_grid
from .turn import Turned, interpolate
from .writer import BLOCK, DtmWriter, check_output_path, remove_sidecars

__all__ = ["PredictOptions", "RunReport", "default_model_path", "predict_dtm"]

# Ground pixel sizes of real images, from a drone's millimetres to a global mosaic's
# kilometres: outside, the georeferencing is more likely wrong than the image.
PLAUSIBLE_PIXEL_M = (1e-3, 1e5)

Progress = Callable[[float], None]
Strips = Callable[[int, int], np.ndarray]  # rows [y0, y1) of a DTM, computed on demand
MODEL_SHARE = 0.9  # share of the progress bar for pass 1
TURN_BACK_SHARE = 0.05  # of the bar, where a scene is turned: parking it for the turn back
SUN_SPREAD_DEG = 5.0  # a product whose images' suns differ more is worth a word
BATCH_PIXELS = 2**19  # per model call (32 tiles of 128 px): few calls, measured fastest
# Edge tiles are this share of a tile narrower: half of it is context beyond the edge, filled
# as nodata is.
EDGE_MARGIN = 0.125
MIN_SIDE_PX = 16  # below this, shading shows too little of the ground to read relief from
DEFAULT_SUN_ELEVATION = 45.0  # for `mean_ratio` models when neither user nor label gives it
# Brightness spread (std / mean) below which a model reading shading sees mostly its own bias:
# `python -m training.probes.low_contrast` (the model card's "Little contrast").
LOW_CONTRAST = 0.03


@dataclass
class PredictOptions:
    model_path: str | None = None
    """ONNX generator; None for the bundled model."""
    band: int | None = None
    """Band number; None: band 1, or the luminance of an RGB(A) raster; 0: luminance."""
    overlap_px: int | None = None
    """Overlap of neighbouring tiles in pixels; None: the model's default."""
    sun_azimuth: float | None = None
    """Degrees clockwise from north, where the light comes from; None: from the product."""
    sun_elevation: float | None = None
    provider: str = "auto"
    """auto, cpu or cuda."""
    pixel_size: float | None = None
    """Metres per pixel, for rasters without georeferencing."""
    crs_wkt: str | None = None
    """The input's CRS in place of its file's: a QGIS layer may carry one its file lacks."""
    batch_size: int | None = None
    """Tiles per model call; None: about half a megapixel (32 tiles of 128 px)."""
    threads: int | None = None
    nodata: tuple[tuple[float, float], ...] = ()
    """Ranges of values (low, high, both included) read as nodata besides what the file marks:
    a GIS layer's own nodata values, or an unmarked collar's value."""
    file_nodata: bool = True
    """Whether the file's nodata value marks nodata (a GIS layer can switch it off); its masks
    and NaN always do."""
    open_options: tuple[str, ...] = ()
    """GDAL open options of the input (``KEY=VALUE``), as a GIS layer may be opened with."""
    reference_dtm: str | None = None
    """A coarser DTM of the same ground in metres (MOLA, HRSC, CTX stereo): the output takes
    its long wavelengths and its datum from it, and its heights are no longer relative."""
    reference_resolution_m: float | None = None
    """The finest relief the reference DTM resolves, in metres; None: its pixel size."""
    reference_open_options: tuple[str, ...] = ()
    """GDAL open options of the reference DTM, as its GIS layer may be opened with."""
    reference_crs_wkt: str | None = None
    """The reference DTM's CRS in place of its file's, as for ``crs_wkt``."""
    reference_nodata: float | None = None
    """A stored value of the reference DTM read as nodata besides its file's own."""
    reference_file_nodata: bool = True
    """Whether the reference DTM's file's nodata value marks nodata, as ``file_nodata``."""


@dataclass
class RunReport:
    output_path: str
    provider: str
    provider_note: str
    tiles: int
    """Tiles the model ran over, the coarse pass's included."""
    seconds: float
    pixel_size_m: float
    sun_azimuth: float | None
    sun_source: str
    height_min: float
    height_max: float
    messages: list[str] = field(default_factory=list)
    sun_elevation: float | None = None
    """Given or read from the product; models with ``mean_ratio`` scaling use it."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each stage of the run."""


def predict_dtm(input_path: str, output_path: str, options: PredictOptions | None = None,
                progress: Progress | None = None,
                is_cancelled: Callable[[], bool] | None = None,
                log: Callable[[str], None] | None = None) -> RunReport:
    """Predict a DTM (heights in metres) for ``input_path`` and write it to ``output_path``."""
    options = options or PredictOptions()
    started = time.perf_counter()
    input_path, output_path = str(input_path), str(output_path)
    with gdal_exceptions():
        raster = InputRaster(input_path, options.band, options.pixel_size, options.crs_wkt,
                             options.nodata, options.file_nodata, options.open_options)
        try:
            check_output_path(input_path, output_path, raster.files_read() + (
                reference_files(options.reference_dtm, options.reference_open_options)
                if options.reference_dtm else []))
            link = output_path if os.path.islink(output_path) else None
            if link:  # written through, as GDAL does: the link stays
                output_path = os.path.realpath(output_path)
            generator = shared_generator(options.model_path or default_model_path(),
                                         options.provider, options.threads)
            run = _Run(raster, generator, options, progress, is_cancelled)
            said = run.setup_messages() if log else []  # said now: a run can be long
            for line in said:
                log(line)
            report = run.execute(output_path)
            if link:  # GDAL and QGIS look for sidecars beside the name they open too
                remove_sidecars(Path(link), raster.georef.geotransform is not None)
        except OSError as exc:  # the tile store or the rename
            full = exc.errno in (errno.ENOSPC, errno.EFBIG)
            raise DtmError(f"Writing near '{output_path}' failed: {exc.strerror}"
                           + (" (is the disk full?)." if full else ".")) from exc
        except RuntimeError as exc:  # GDAL, with exceptions on: a corrupt or truncated file
            raise DtmError(f"GDAL failed on '{Path(input_path).name}': "
                           f"{str(exc).strip().splitlines()[0]}") from exc
        finally:
            raster.close()
    report.seconds = time.perf_counter() - started
    if log:
        for line in report.messages[len(said):]:
            log(line)
    return report


def default_batch_size(tile_size: int) -> int:
    """Tiles per model call when the caller does not say: about ``BATCH_PIXELS`` pixels."""
    return max(1, BATCH_PIXELS // tile_size**2)


class _Run:
    """State of one prediction: scene mapping, tile grid, tile store, offsets."""

    def __init__(self, raster: InputRaster, generator: Generator, options: PredictOptions,
                 progress: Progress | None, is_cancelled: Callable[[], bool] | None) -> None:
        self.raster, self.generator, self.options = raster, generator, options
        if min(raster.width, raster.height) < MIN_SIDE_PX:
            raise DtmError(f"The input is {raster.width} x {raster.height} pixels, too small to "
                           f"read relief from; at least {MIN_SIDE_PX} on each side are needed.")
        self.contract: ModelContract = generator.contract
        self.progress = progress or (lambda fraction: None)
        self.is_cancelled = is_cancelled or (lambda: False)
        self.sun_azimuth, self.sun_source = self._sun()
        self.sun_elevation = self._sun_elevation()  # checked now, before anything is written
        self.degrees = snap(self._rotation_degrees())
        whole_turn = self.degrees % 90 != 0  # the scene is turned, not each tile
        self.turned = Turned(raster, self.degrees) if whole_turn else None
        self.tiled = self.turned or raster  # the raster the tiles lie on
        self.rotation = Rotation(0.0 if whole_turn else self.degrees, self.contract.tile_size)
        self.overlap = self._overlap()
        self._lay_tiles()
        self.coarse = self._coarse_pass()
        self.coarse_tiles = 0  # counted when the coarse pass runs
        for given, what in ((options.reference_resolution_m, "resolution"),
                            (options.reference_nodata, "nodata value")):
            if given is not None and not options.reference_dtm:
                raise DtmError(f"A reference {what} is given without a reference DTM.")
        self.reference = (open_reference(options.reference_dtm, raster.georef, raster.width,
                                         raster.height, options.reference_resolution_m,
                                         options.reference_open_options,
                                         options.reference_crs_wkt, options.reference_nodata,
                                         options.reference_file_nodata, self.is_cancelled)
                          if options.reference_dtm else None)
        self.model_span = (0.0, MODEL_SHARE * (1 - self.coarse.share if self.coarse else 1))
        sample = self.raster.sample()
        if sample.min() == sample.max() and raster.one_value():
            raise DtmError(f"The image is {sample[0]:g} wherever it has data: there is no "
                           "shading to read heights from.")
        extreme = np.abs(sample) >= FILL_LIKE
        if extreme.any() and not extreme.all():  # beside ordinary values: a fill value
            raise fill_refused(sample[extreme][0])
        raster.refuse_fills = not extreme.any()  # and where the sample steps over it
        self.scale, self.fill = self._intensity_mapping(sample)
        level = float(sample.mean(dtype=np.float64))  # > 0 where the contrast is used
        self.contrast = float(sample.std(dtype=np.float64)) / level if level > 0 else math.inf
        self.zero_rim = raster.zero_rim()
        self.height_scale = (raster.georef.pixel_size_m
                             if self.contract.height_units == "gsd" else 1.0)

    # -- set-up -------------------------------------------------------------------------------
    def _lay_tiles(self) -> None:
        """The tile grid over the tiled raster, the tiles that meet the image, and empty
        caches of their blending weights."""
        # The raster's edge tiles are made narrower to give its edge context; a turned grid's
        # edges lie beyond the image but at its corners, and narrower tiles there would only
        # make more of them.
        size = self.contract.tile_size
        margin = 0 if self.turned else round(size * EDGE_MARGIN)
        self.grid = tile_grid(self.tiled.width, self.tiled.height, size, self.overlap, margin)
        self.laid = [tile for tile in self.grid.tiles if self._meets_image(tile)]
        self.tiles_run = 0  # those with a valid pixel, counted as they are read
        self._weight_cache: dict[tuple[bytes, bytes], np.ndarray] = {}
        self._weights_of: dict[tuple[int, bool], np.ndarray] = {}
        self._row_ramps: dict[int, np.ndarray] = {}
        self._col_ramps: dict[int, np.ndarray] = {}

    def _meets_image(self, tile: Tile) -> bool:
        """Whether a tile can hold a valid pixel: of a turned scene's grid, not all do."""
        return self.turned is None or self.turned.meets(tile.x0, tile.y0, tile.width,
                                                        tile.height)

    def _coarse_pass(self) -> _CoarsePass | None:
        """The model's second pass for long wavelengths, where it asks for one and the image
        averaged over its blocks is still large enough to read relief from."""
        wanted = self.contract.coarse_pass
        if wanted is None:
            return None
        factor = wanted["factor"]
        if min(self.raster.width, self.raster.height) < MIN_SIDE_PX * factor:
            return None
        return _CoarsePass(factor, float(wanted["sigma_px"]))

    def _sun(self) -> tuple[float | None, str]:
        azimuth = self.options.sun_azimuth
        if azimuth is not None:
            if not math.isfinite(azimuth):
                raise DtmError(f"The sun azimuth must be a number of degrees, not {azimuth}.")
            return azimuth % 360, "user"
        if self.contract.sun_mode == "none":
            return None, "not needed"
        product = self._product_sun
        if product.azimuth is None:
            raise DtmError("This model needs the sun azimuth and the input's label or metadata "
                           "does not give it; give it in degrees clockwise from north "
                           "(--sun-azimuth; Sun azimuth in QGIS, SUN_AZIMUTH in qgis_process).")
        return product.azimuth % 360, product.azimuth_from  # as some metadata say: -60

    @cached_property
    def _product_sun(self) -> ProductSun:
        """The angles the run needs and was not given, from the product's metadata or label,
        read once."""
        wanted = (self.options.sun_azimuth is None and self.contract.sun_mode != "none",
                  self.options.sun_elevation is None
                  and self.contract.input_scaling == "mean_ratio")
        return sun_from_product(self.raster.path, self.raster.dataset, wanted)

    def _sun_elevation(self) -> float | None:
        given = self.options.sun_elevation
        if given is not None and not 0 < given < 90:  # a label's is checked where it is used
            raise DtmError(f"The sun elevation (given) must be above 0 and below 90 degrees, "
                           f"not {given}.")
        return given if given is not None else self._product_sun.elevation

    def _rotation_degrees(self) -> float:
        if self.contract.sun_mode != "rotate" or self.sun_azimuth is None:
            return 0.0
        if not math.isfinite(self.raster.georef.north_deg):
            raise DtmError("Where north points cannot be found from the input's CRS (the "
                           "scene's centre lies outside the area it is defined for); check "
                           "the input's georeferencing.")
        in_image = self.raster.georef.image_azimuth(self.sun_azimuth)
        # Rounded: a north 1e-13 degrees off up must not turn the scene by 359.9999999.
        return round(self.contract.sun_azimuth - in_image, 6) % 360

    def _overlap(self) -> int:
        """At least a pixel: tiles that share none cannot be tied into one surface."""
        size = self.contract.tile_size
        if self.options.overlap_px is None:
            return max(1, round(size * self.contract.tiles_overlap / 100))
        overlap = self.options.overlap_px
        if not 1 <= overlap < size // 2:
            raise DtmError(f"The overlap must be from 1 to {size // 2 - 1} pixels for this "
                           f"model (tiles that share no pixels cannot be stitched), not "
                           f"{overlap}.")
        return overlap

    def _intensity_mapping(self, sample: np.ndarray) -> tuple[tuple[float, float], float]:
        """One affine mapping of brightness for the whole scene (never per tile)."""
        if self.contract.input_scaling == "mean_ratio":
            low, high = self._mean_ratio_range(sample)
        else:
            low, high = np.percentile(sample, self.contract.input_percentiles)
            if not high > low:
                high = low + 1.0  # nearly one value: any scale will do
        mean = self.contract.standardization_mean[0]
        std = self.contract.standardization_std[0]
        # x -> ((x - low) / (high - low) - mean) / std, as one multiply-add per pixel.
        gain = 1.0 / ((high - low) * std)
        offset = -(low / (high - low) + mean) / std
        fill = float(np.median(sample)) * gain + offset
        return (gain, offset), fill

    def _mean_ratio_range(self, sample: np.ndarray) -> tuple[float, float]:
        """The brightness pair that maps to 0 and 1 for (I / mean - 1) * tan(elevation)."""
        level = float(sample.mean(dtype=np.float64))
        if not level > 0:
            raise DtmError("This model needs image values that grow with brightness from zero "
                           "(a positive mean); this band's mean is not positive.")
        tan_e = math.tan(math.radians(self._sun_elevation_used))
        return level, level * (1.0 + 1.0 / tan_e)

    @cached_property
    def _sun_elevation_used(self) -> float:
        elevation = self.sun_elevation
        if elevation is None:
            return DEFAULT_SUN_ELEVATION
        if not 0 < elevation < 90:
            raise DtmError(f"The sun elevation in the product's {self._product_sun.elevation_from}"
                           f" must be above 0 and below 90 degrees, not {elevation}; give it "
                           "instead.")
        return elevation

    # -- pass 1: the model --------------------------------------------------------------------
    def execute(self, output_path: str) -> RunReport:
        clock = [time.perf_counter()]
        folder = Path(output_path).parent
        with ExitStack() as files:
            def temporary() -> BinaryIO:
                return files.enter_context(tempfile.TemporaryFile(dir=folder,
                                                                  prefix=".marsdtm-"))

            self.store = _TileStore(temporary(), self.grid, self.laid)
            problem = self._predict_tiles()
            clock.append(time.perf_counter())
            offsets = self._offsets(problem)
            clock.append(time.perf_counter())
            long = self._long_wavelengths(offsets, folder) if self.coarse else None
            clock.append(time.perf_counter())

            def tiled(y0: int, y1: int) -> np.ndarray:
                """Stitched heights on the tiled grid, long wavelengths corrected."""
                strip = self._blend_strip(y0, y1, offsets)
                if long is not None:
                    strip += upsample_rows(long, self.coarse.cell, y0, y1, self.tiled.width)
                return strip

            stitched = self._turned_back(tiled, temporary()) if self.turned else tiled
            clock.append(time.perf_counter())
            if self.reference:
                stitched = self._with_reference(stitched)
            clock.append(time.perf_counter())
            statistics = self._blend(output_path, stitched)
            clock.append(time.perf_counter())
        report = self._report(output_path, statistics)
        stages = ("model pass", "offsets", "coarse pass", "turn back", "reference DTM",
                  "blend and write")
        ran = {"coarse pass": bool(self.coarse), "turn back": bool(self.turned),
               "reference DTM": bool(self.reference)}
        report.timings = {stage: float(seconds) for stage, seconds in zip(stages, np.diff(clock))
                          if ran.get(stage, True)}
        return report

    def _long_wavelengths(self, offsets: np.ndarray, folder: Path) -> np.ndarray:
        """What the coarse pass adds to the stitched heights, on a grid of cells of
        ``self.coarse.cell`` px: the two passes' difference, blurred beyond ``sigma`` px."""
        coarse = self.coarse
        fine_cells = self._cell_means(offsets, coarse.cell)
        run = _CoarseRun(self, coarse.factor)
        coarse_cells = run.cell_means(coarse.cell // coarse.factor, folder)
        self.coarse_tiles = run.tiles_run
        return long_wavelength_correction(fine_cells, coarse_cells, coarse.sigma / coarse.cell)

    def _turned_back(self, tiled: Strips, file: BinaryIO) -> Strips:
        """The turned scene's heights parked in ``file``, and strips of them turned back onto
        the raster's grid, NaN where the raster has no data."""
        turned = self.turned
        strips = range(0, turned.height, BLOCK)
        for number, y0 in enumerate(strips):
            if self.is_cancelled():
                raise DtmCancelled
            heights = tiled(y0, min(y0 + BLOCK, turned.height))
            file.write(memoryview(np.ascontiguousarray(heights, np.float32)).cast("B"))
            self.progress(MODEL_SHARE + TURN_BACK_SHARE * (number + 1) / len(strips))
        file.flush()

        def strip(y0: int, y1: int) -> np.ndarray:
            width = self.raster.width
            heights = np.empty((y1 - y0, width), np.float32)
            for x0 in range(0, width, BLOCK * 8):  # positions of 2048 columns at a time
                x1 = min(x0 + BLOCK * 8, width)
                cols, rows = turned.turned(*np.meshgrid(np.arange(x0, x1, dtype=np.float64),
                                                        np.arange(y0, y1, dtype=np.float64)))
                # Mapped for these rows alone, and let go: the pages read stay off the
                # process's memory, where one map of the whole file would hold them all.
                top = math.floor(rows.min())
                parked = np.memmap(file, np.float32, "r", offset=top * turned.width * 4,
                                   shape=(math.floor(rows.max()) + 2 - top, turned.width))
                values, known = interpolate(parked, cols, rows - top)
                del parked
                valid = self.raster.read(x0, y0, x1 - x0, y1 - y0)[1]
                heights[:, x0:x1] = np.where(known & valid, values, np.float32(np.nan))
            return heights

        return strip

    def _with_reference(self, stitched: Strips) -> Strips:
        """``stitched`` plus what the reference DTM adds to it, on the reference's cells."""
        reference = self.reference
        cells = cell_means(stitched, self.raster.height, reference.cell, BLOCK)
        correction = reference.correction(cells)

        def strip(y0: int, y1: int) -> np.ndarray:
            return stitched(y0, y1) + upsample_rows(correction, reference.cell, y0, y1,
                                                    self.raster.width, reference.ring)

        return strip

    def _cell_means(self, offsets: np.ndarray, cell: int) -> np.ndarray:
        """The stitched heights averaged over ``cell`` x ``cell`` blocks, strip by strip."""
        return cell_means(lambda y0, y1: self._blend_strip(y0, y1, offsets),
                          self.tiled.height, cell, BLOCK)

    def _predict_tiles(self) -> OffsetProblem:
        """Three stages in step: read batch n+1, run the model on n, file the heights of n-1."""
        problem = OffsetProblem(len(self.grid.tiles))
        recent: dict[int, np.ndarray] = {}
        batches = list(_chunks(self.laid, self._batch_size()))
        start, end = self.model_span
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as filer:
            pending = reader.submit(self._prepare, batches[0])
            filed = []
            for number, batch in enumerate(batches):
                if self.is_cancelled():
                    raise DtmCancelled
                inputs, valids, todo = pending.result()
                if number + 1 < len(batches):
                    pending = reader.submit(self._prepare, batches[number + 1])
                predictions = self.generator.run(inputs[todo]) if todo else []
                filed.append(filer.submit(self._file, batch, dict(zip(todo, predictions)),
                                          valids, problem, recent))
                if len(filed) > 2:  # bounded memory; also surfaces the filer's errors
                    filed.pop(0).result()
                self.progress(start + (end - start) * (number + 1) / len(batches))
            for future in filed:
                future.result()
        return problem

    def _batch_size(self) -> int:
        if self.options.batch_size is None:
            return default_batch_size(self.contract.tile_size)
        if self.options.batch_size < 1:
            raise DtmError(f"The batch size must be at least 1 tile, not "
                           f"{self.options.batch_size}.")
        return self.options.batch_size

    def _file(self, batch: list[Tile], predictions: dict[int, np.ndarray],
              valids: list[np.ndarray], problem: OffsetProblem,
              recent: dict[int, np.ndarray]) -> None:
        """Heights in metres on each footprint, zero mean, NaN on nodata, into the store."""
        for i, tile in enumerate(batch):
            if i not in predictions:
                continue  # no valid pixel: nothing to predict
            heights = self.rotation.from_model(predictions[i], tile) * np.float32(
                self.height_scale)
            count = int(np.count_nonzero(valids[i]))
            if count == heights.size:
                heights -= heights.mean()
            else:
                heights[~valids[i]] = np.nan
                heights -= np.float32(np.nanmean(heights))
            self.store.put(tile, heights, count)
            self._compare(problem, recent, tile, heights)

    def _offsets(self, problem: OffsetProblem) -> np.ndarray:
        """Per-tile offsets, shifted so that the scene's heights average about zero."""
        offsets = problem.solve()
        counts = self.store.valid_counts
        return offsets - np.average(offsets, weights=counts) if counts.any() else offsets

    def _prepare(self, batch: list[Tile]) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
        """Model inputs (scaled, nodata filled, rotated), footprint validity of a batch, and
        which of its tiles have a valid pixel (found here, off the model's thread)."""
        gain, offset = self.scale
        inputs, valids = [], []
        for tile in batch:
            x0, y0, width, height = self.rotation.context(tile)
            window, valid = self.tiled.read(x0, y0, width, height)
            scaled = window * np.float32(gain) + np.float32(offset)
            scaled[~valid] = self.fill
            inputs.append(self.rotation.to_model(scaled, tile))
            top, left = tile.y0 - y0, tile.x0 - x0
            valids.append(valid[top : top + tile.height, left : left + tile.width])
        todo = [i for i, valid in enumerate(valids) if valid.any()]
        self.tiles_run += len(todo)
        return np.stack(inputs), valids, todo

    def _compare(self, problem: OffsetProblem, recent: dict[int, np.ndarray], tile: Tile,
                 heights: np.ndarray) -> None:
        """Measure disagreement with the neighbours already predicted (row-major order)."""
        for other in self.grid.neighbours(tile):
            if other.index < tile.index and other.index in recent:
                whole = self.store.complete(other) and self.store.complete(tile)
                problem.add_overlap(other, recent[other.index], tile, heights, whole)
        # Tiles arrive in row-major order, so the oldest entry is first: drop those more than
        # a row behind, which have no neighbours left to meet.
        while recent and self.grid.tiles[next(iter(recent))].row < tile.row - 1:
            del recent[next(iter(recent))]
        recent[tile.index] = heights

    # -- pass 2: blending ---------------------------------------------------------------------
    def _blend(self, output_path: str, stitched: Strips) -> tuple[float, float, float, float]:
        """Write strip by strip; a writer thread compresses one strip while the next blends."""
        georef = self.raster.georef
        writer = DtmWriter(output_path, self.raster.width, self.raster.height,
                           georef.geotransform, georef.crs_wkt, georef.gcps, georef.gcp_wkt,
                           self.provenance(), georef.rpc)
        statistics = _Statistics()
        start = MODEL_SHARE + (TURN_BACK_SHARE if self.turned else 0.0)
        try:
            with ThreadPoolExecutor(1) as writing:
                written = None
                strips = range(0, self.raster.height, BLOCK)
                for number, y0 in enumerate(strips):
                    if self.is_cancelled():
                        raise DtmCancelled
                    y1 = min(y0 + BLOCK, self.raster.height)
                    strip = stitched(y0, y1)
                    if written is not None:
                        written.result()
                    written = writing.submit(self._write_strip, writer, y0, strip, statistics)
                    self.progress(start + (1 - start) * (number + 1) / len(strips))
                written.result()
            if statistics.count == 0:
                raise DtmError("No pixel of the input could be predicted.")
            writer.finish(statistics.summary())
        except BaseException:
            writer.abort()
            raise
        return statistics.summary()

    @staticmethod
    def _write_strip(writer: DtmWriter, y0: int, strip: np.ndarray,
                     statistics: _Statistics) -> None:
        statistics.add(strip)
        writer.write_rows(y0, strip)  # turns NaN into nodata in place

    def _blend_strip(self, y0: int, y1: int, offsets: np.ndarray) -> np.ndarray:
        rows = self._rows_meeting(y0, y1)
        tiles = list(self._tiles_of(rows))
        if (tiles and len(tiles) == len(rows) * self.grid.cols
                and all(self.store.complete(tile) for tile in tiles)):
            # Every tile over these rows is there and whole: no pixel is left uncovered.
            return self._blend_full_strip(y0, y1, tiles, offsets)
        total = np.zeros((y1 - y0, self.tiled.width), np.float32)
        weight = np.zeros_like(total)
        for tile in tiles:
            r0, r1 = max(y0, tile.y0) - tile.y0, min(y1, tile.y1) - tile.y0
            heights = self.store.rows(tile, r0, r1) + np.float32(offsets[tile.index])
            w = self._weights(tile)[r0:r1]
            if not self.store.complete(tile):
                w = w.copy()
                valid = np.isfinite(heights)
                w[~valid] = 0
                heights[~valid] = 0
            rows = slice(tile.y0 + r0 - y0, tile.y0 + r1 - y0)
            total[rows, tile.x0 : tile.x1] += heights * w
            weight[rows, tile.x0 : tile.x1] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / weight, np.float32(np.nan))

    def _blend_full_strip(self, y0: int, y1: int, tiles: list[Tile],
                          offsets: np.ndarray) -> np.ndarray:
        """The common case, every tile there and whole: weights that already sum to one."""
        total = np.zeros((y1 - y0, self.tiled.width), np.float32)
        for tile in tiles:
            r0, r1 = max(y0, tile.y0) - tile.y0, min(y1, tile.y1) - tile.y0
            heights = self.store.rows(tile, r0, r1)
            heights += np.float32(offsets[tile.index])
            heights *= self._weights(tile, normalised=True)[r0:r1]
            total[tile.y0 + r0 - y0 : tile.y0 + r1 - y0, tile.x0 : tile.x1] += heights
        return total

    def _rows_meeting(self, y0: int, y1: int) -> list[int]:
        """Rows of the tile grid whose tiles meet output rows [y0, y1)."""
        return [row for row in range(self.grid.rows)
                if self.grid.at(row, 0).y0 < y1 and self.grid.at(row, 0).y1 > y0]

    def _tiles_of(self, rows: list[int]) -> Iterator[Tile]:
        """The predicted tiles of whole rows of the grid."""
        for row in rows:
            row_tiles = self.grid.tiles[row * self.grid.cols : (row + 1) * self.grid.cols]
            yield from (tile for tile in row_tiles if self.store.has(tile))

    def _weights(self, tile: Tile, normalised: bool = False) -> np.ndarray:
        """Blending weights of a tile; tiles with the same ramps (most of them) share one.

        ``normalised``: divided by the sum over the whole grid, which is separable because
        every tile's weight is an outer product of a row ramp and a column ramp.
        """
        if (tile.index, normalised) not in self._weights_of:
            ramp_y, ramp_x = self._ramps(tile)
            if normalised:
                sum_y, sum_x = self._ramp_sums
                ramp_y = ramp_y / sum_y[tile.y0 : tile.y1]
                ramp_x = ramp_x / sum_x[tile.x0 : tile.x1]
            key = (ramp_y.tobytes(), ramp_x.tobytes())
            if key not in self._weight_cache:
                self._weight_cache[key] = np.outer(ramp_y, ramp_x)
            self._weights_of[tile.index, normalised] = self._weight_cache[key]
        return self._weights_of[tile.index, normalised]

    def _ramps(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        # A tile's row ramp depends only on its grid row, its column ramp on its grid column.
        row = self._row_ramps.get(tile.row)
        col = self._col_ramps.get(tile.col)
        if row is None or col is None:
            row, col = blend_ramps(tile, self.grid.neighbours(tile))
            self._row_ramps[tile.row], self._col_ramps[tile.col] = row, col
        return row, col

    @cached_property
    def _ramp_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Row ramps summed down the grid, column ramps across it (the weights' sum)."""
        sum_y = np.zeros(self.tiled.height, np.float32)
        sum_x = np.zeros(self.tiled.width, np.float32)
        for row in range(self.grid.rows):
            tile = self.grid.at(row, 0)
            sum_y[tile.y0 : tile.y1] += self._ramps(tile)[0]
        for col in range(self.grid.cols):
            tile = self.grid.at(0, col)
            sum_x[tile.x0 : tile.x1] += self._ramps(tile)[1]
        return sum_y, sum_x

    def _report(self, output_path: str, statistics: tuple[float, float, float, float]
                ) -> RunReport:
        generator, georef = self.generator, self.raster.georef
        report = RunReport(
            output_path=output_path, provider=generator.provider,
            provider_note=generator.provider_note,
            tiles=self.tiles_run + self.coarse_tiles, seconds=0.0,
            pixel_size_m=georef.pixel_size_m, sun_azimuth=self.sun_azimuth,
            sun_source=self.sun_source, height_min=statistics[0], height_max=statistics[1],
            sun_elevation=self.sun_elevation)
        report.messages = [
            *self.setup_messages(),
            f"Heights: {statistics[0]:.2f} to {statistics[1]:.2f} m",
            f"Output: {output_path}",
        ]
        return report

    @property
    def _elevation_source(self) -> str:
        if self.sun_elevation is None:
            return "assumed"
        given = self.options.sun_elevation is not None
        return "user" if given else self._product_sun.elevation_from

    def provenance(self) -> dict[str, str]:
        """What the DTM was made with, kept in its file (gdalinfo, QGIS's layer properties)."""
        elevation = ("not used" if self.contract.input_scaling != "mean_ratio"
                     else f"{self._sun_elevation_used:.1f} ({self._elevation_source})")
        return {
            "MARSDTM_MODEL": f"{self.generator.path.name}, version {self.contract.version}",
            "MARSDTM_SUN_AZIMUTH": ("not used" if self.sun_azimuth is None
                                    else f"{self.sun_azimuth:.1f} ({self.sun_source})"),
            "MARSDTM_SUN_ELEVATION": elevation,
            "MARSDTM_PIXEL_SIZE_M": f"{self.raster.georef.pixel_size_m:.6g}",
            "MARSDTM_TILES": f"{self.contract.tile_size} px, overlap {self.overlap} px",
            "MARSDTM_COARSE_PASS": self.coarse.describe() if self.coarse else "none",
            "MARSDTM_REFERENCE": self.reference.describe() if self.reference else "none",
            "MARSDTM_HEIGHTS": ("metres, on the reference DTM's datum" if self.reference else
                                "metres, relative: the scene's mean height is about 0"),
        }

    def setup_messages(self) -> list[str]:
        """What the run is about to do: model, provider, tiles, pixel size and sun; then what
        the user should check (``Caution``)."""
        return self._plan() + self._cautions()

    def _plan(self) -> list[str]:
        generator, georef, bands = self.generator, self.raster.georef, self.raster.bands
        said = [f"Input: {self.raster.width} x {self.raster.height} px, "
                + ("luminance of the red, green and blue bands" if len(bands) > 1
                   else f"band {bands[0].GetBand()}")
                + nodata_said(self.options.nodata, self.raster.file_nodata_used()),
                f"Model: {generator.path.name}, version {self.contract.version}",
                f"Execution provider: {generator.provider}"]
        if generator.provider_note:
            said.append(generator.provider_note)
        said.append(f"Tiles: {len(self.laid)} of {self.contract.tile_size} px, scene rotated "
                    f"by {self.degrees:.1f} degrees")
        said += [part.describe() for part in (self.coarse, self.reference) if part]
        said.append(f"Pixel size: {georef.pixel_size_m:.4g} m; sun azimuth: "
                    + ("not used" if self.sun_azimuth is None
                       else f"{self.sun_azimuth:.1f} degrees ({self.sun_source})"))
        if self.sun_elevation is not None:
            said.append(f"Sun elevation: {self.sun_elevation:.1f} degrees "
                        f"({self._elevation_source})")
        return said

    def _cautions(self) -> list[Caution]:
        aspect = self.raster.georef.aspect
        ratio_scaled = self.contract.input_scaling == "mean_ratio"
        said = []
        if self.zero_rim > 0.5:
            said.append(Caution(
                f"{self.zero_rim:.0%} of the image's outermost pixels are 0 and it has no "
                "nodata value: a black collar is read as black ground; give 0 as nodata "
                "(--nodata 0, the layer's no data values in QGIS, or gdal_edit.py -a_nodata 0 "
                "in the file) if it is one"))
        pixel = self.raster.georef.pixel_size_m
        if self.options.pixel_size is None and not (
                PLAUSIBLE_PIXEL_M[0] <= pixel <= PLAUSIBLE_PIXEL_M[1]):
            said.append(Caution(
                f"Pixels of {pixel:.3g} m on the ground are not an orbital or aerial image's: "
                "check the image's CRS and geotransform (a grid in degrees labelled with a CRS "
                "in metres?), or give the pixel size"))
        if abs(math.log(aspect)) > math.log(1.05):
            said.append(Caution(
                f"Pixels are {aspect:.2f} times as wide as tall on the ground, which the "
                "model takes as square: warp the image to a grid with square pixels there "
                "(gdalwarp -t_srs, e.g. UTM, or equirectangular true at the scene's latitude) "
                "for slopes and heights at the right scale"))
        if (self.sun_source not in ("user", "not needed")
                and self._product_sun.azimuth_spread > SUN_SPREAD_DEG):
            said.append(Caution(
                f"The suns of the images in the product ({self.sun_source}) lie up to "
                f"{self._product_sun.azimuth_spread:.0f} degrees of azimuth from their mean, "
                "which is used; give the sun of the image run here"))
        if ratio_scaled and self.contrast < LOW_CONTRAST:
            said.append(Caution(
                f"The image's brightness varies by only {self.contrast:.1%} of its mean "
                "(standard deviation): there is little shading to read relief from, and the "
                "DTM will show more of the model's own bias than of the ground"))
        if self.reference and (caution := self.reference.caution()):
            said.append(Caution(caution))
        if self.sun_elevation is None and ratio_scaled:
            said.append(Caution(f"Sun elevation unknown: {DEFAULT_SUN_ELEVATION:.0f} degrees "
                                "assumed; give it for heights at the right scale"))
        return said


@dataclass(frozen=True)
class _CoarsePass:
    """The model's second pass over the image averaged in ``factor`` x ``factor`` blocks."""

    factor: int
    sigma: float
    """Where the fine pass's detail ends, in fine pixels: the long wavelengths beyond it
    come from the coarse pass."""

    @property
    def cell(self) -> int:
        """Side in fine pixels of the cells the correction is computed on: a whole number of
        coarse pixels, some half a sigma (finer adds nothing to a blur that wide)."""
        return self.factor * max(1, round(self.sigma / (2 * self.factor)))

    def describe(self) -> str:
        return (f"Long wavelengths: beyond {self.sigma:g} px, from a second pass over the "
                f"image averaged in {self.factor} x {self.factor} blocks")

    @property
    def share(self) -> float:
        """The coarse pass's share of the model's work."""
        return 1 / (1 + self.factor**2)


class _CoarseRun(_Run):
    """The model over the fine run's input averaged in ``factor`` x ``factor`` blocks,
    scaled, turned and tiled as the fine run is; heights in metres on the coarse grid."""

    def __init__(self, fine: _Run, factor: int) -> None:
        # Not _Run's: the fine run has checked the input and resolved the sun and scaling.
        # Averaged, then turned: the same grid as the fine pass's turned scene averaged, at a
        # quarter of the resampling.
        averaged = BlockAveraged(fine.raster, factor)
        self.turned = fine.turned.coarser(averaged, factor) if fine.turned else None
        self.tiled = self.turned or averaged
        self.generator, self.options, self.contract = fine.generator, fine.options, fine.contract
        self.progress, self.is_cancelled = fine.progress, fine.is_cancelled
        self.rotation, self.overlap = fine.rotation, fine.overlap
        self.scale, self.fill = fine.scale, fine.fill
        gsd = self.contract.height_units == "gsd"
        self.height_scale = fine.height_scale * (factor if gsd else 1)
        self.model_span = (fine.model_span[1], MODEL_SHARE)
        self._lay_tiles()

    def cell_means(self, cell: int, folder: Path) -> np.ndarray:
        """The stitched coarse heights averaged over ``cell`` x ``cell`` coarse pixels."""
        with tempfile.TemporaryFile(dir=folder, prefix=".marsdtm-") as file:
            self.store = _TileStore(file, self.grid, self.laid)
            return self._cell_means(self._offsets(self._predict_tiles()), cell)


class _TileStore:
    """Each tile's heights parked in a temporary file between the two passes."""

    def __init__(self, file: BinaryIO, grid: TileGrid, laid: list[Tile]) -> None:
        """Room for the tiles laid, one after another: a turned scene's grid has more."""
        self.file = file
        sizes = [t.width * t.height * 4 for t in laid]
        self.offsets = np.zeros(len(grid.tiles), np.int64)
        self.offsets[[t.index for t in laid]] = np.cumsum([0, *sizes])[:-1]
        self.valid_counts = np.zeros(len(grid.tiles))  # 0: never predicted (all nodata)

    def put(self, tile: Tile, heights: np.ndarray, valid_count: int) -> None:
        self.file.seek(int(self.offsets[tile.index]))
        self.file.write(memoryview(np.ascontiguousarray(heights, np.float32)).cast("B"))
        self.valid_counts[tile.index] = valid_count

    def has(self, tile: Tile) -> bool:
        return bool(self.valid_counts[tile.index])

    def complete(self, tile: Tile) -> bool:
        """True when every pixel of the tile has a height (no nodata)."""
        return self.valid_counts[tile.index] == tile.width * tile.height

    def rows(self, tile: Tile, r0: int, r1: int) -> np.ndarray:
        self.file.seek(int(self.offsets[tile.index]) + r0 * tile.width * 4)
        heights = np.empty((r1 - r0, tile.width), np.float32)
        self.file.readinto(memoryview(heights).cast("B"))
        return heights


class _Statistics:
    """Running minimum, maximum, mean and standard deviation of the written heights."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        valid = values if finite.all() else values[finite]
        if valid.size:
            self.count += valid.size
            self.total += float(valid.sum(dtype=np.float64))
            self.squares += float(np.dot(valid.ravel(), valid.ravel()))
            self.low = min(self.low, float(valid.min()))
            self.high = max(self.high, float(valid.max()))

    def summary(self) -> tuple[float, float, float, float]:
        if not self.count:
            return 0.0, 0.0, 0.0, 0.0
        mean = self.total / self.count
        std = math.sqrt(max(self.squares / self.count - mean**2, 0.0))
        return float(self.low), float(self.high), mean, std


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
