"""Training samples: (normalised image, height in pixel units) pairs, three ways.

- ``SyntheticPatches``: procedural Mars terrain rendered on the fly (``training.synth``);
- ``DemShapePatches``: real measured DEMs, cropped, zoomed, turned and rendered under many suns;
- ``ShardPatches``: WebDataset tar shards (``training.shards``) streamed by rank and worker,
  which is how real HiRISE patches and pre-rendered pools reach DDP training.

Every sample is brought to the model contract: sun from ``canonical_azimuth`` (rotating real
patches when needed), image scaled as the contract's ``input_scaling`` says (``mean_ratio``:
contrast around the mean times tan(sun elevation); ``percentile``: percentiles to 0..1) then
standardised, height divided by the pixel size and made zero-mean.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import IterableDataset, get_worker_info

from training.shards import Patch, ShardWriter, read_shard

# Rows of a DEM shape kept out of training because the evaluation renders its test set there.
HOLDOUT_ROWS = {"mars_louth_crater_ice_mound_hirise.tif": 600}
EARTH_DEG_M = 111_320.0
EARTH_RADIUS_M = 6_378_137.0
LOW_RELIEF = (0.01, 1.0)  # range of the relief scale of `--low-relief` patches
SYNTHETIC_PIXEL_M = 1.0  # synthetic terrain is drawn at HiRISE-like 1 m pixels
DEM_ZOOM = (0.5, 2.0)  # DEM shapes: output pixels per DEM pixel, log-uniform
DEM_RELIEF = (0.5, 1.5)  # DEM shapes: factor on the relief
SHUFFLE_BUFFER = 256  # samples mixed across shards
AZIMUTH_TOLERANCE = 15.0  # degrees off the canonical sun a shard patch may be


@dataclass(frozen=True)
class Normalisation:
    """What the engine does to a scene, then (x - mean) / std.

    ``percentile``: percentiles -> 0..1. ``mean_ratio``: (I / mean(I) - 1) * tan(elevation),
    the linearised Lambertian slope toward the sun (see the model contract).
    """

    percentiles: tuple[float, float] = (1.0, 99.0)
    mean: float = 0.5
    std: float = 0.25
    scaling: str = "percentile"

    def apply(self, image: np.ndarray, sun_elevation: float = 45.0,
              level_scale: float = 1.0) -> np.ndarray:
        """``level_scale``: the mean_ratio level relative to the patch's own mean (the engine
        uses the scene's mean, which a patch's need not match)."""
        image = image.astype(np.float32)
        if self.scaling == "mean_ratio":
            level = max(float(image.mean()) * level_scale, 1e-6)
            scaled = (image / level - 1.0) * math.tan(math.radians(sun_elevation))
        else:
            lo, hi = np.percentile(image, self.percentiles)
            scaled = (image - lo) / max(float(hi - lo), 1e-6)
        return ((scaled - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class SunRange:
    canonical_azimuth: float = 270.0
    azimuth_jitter: float = 10.0
    elevation: tuple[float, float] = (15.0, 60.0)

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        azimuth = self.canonical_azimuth + rng.uniform(-self.azimuth_jitter, self.azimuth_jitter)
        return float(azimuth % 360.0), float(rng.uniform(*self.elevation))


def to_canonical(image: np.ndarray, height: np.ndarray, sun_azimuth: float,
                 canonical: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn a patch so its sun comes from ``canonical``; keep the largest inscribed square.

    Azimuths are clockwise from image up; ``ndimage.rotate`` turns counter-clockwise.
    """
    angle = (sun_azimuth - canonical) % 360.0
    quarter = round(angle / 90.0)
    if abs(angle - 90.0 * quarter) < 1.0:
        k = quarter % 4
        return np.rot90(image, k).copy(), np.rot90(height, k).copy()
    turned = [ndimage.rotate(a.astype(np.float32), angle, order=1, reshape=False, mode="nearest")
              for a in (image, height)]
    side = int(min(image.shape) / (abs(math.cos(math.radians(angle)))
                                    + abs(math.sin(math.radians(angle)))))
    r0, c0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return tuple(a[r0:r0 + side, c0:c0 + side] for a in turned)


def to_sample(image: np.ndarray, height_m: np.ndarray, meta: dict,
              norm: Normalisation, level_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input [1, H, W] and target heights in pixel units, zero-mean [1, H, W]."""
    pixel = meta.get("pixel_size_m", 1.0)
    height = height_m.astype(np.float32) / np.float32(pixel)
    height = height - height.mean()
    elevation = meta.get("sun_elevation_deg", 45.0)
    return (torch.from_numpy(norm.apply(image, elevation, level_scale))[None],
            torch.from_numpy(np.ascontiguousarray(height))[None])


def _worker_rng(seed: int, epoch: int = 0, *more: int) -> np.random.Generator:
    """One independent stream per (seed, epoch, rank, DataLoader worker[, more])."""
    info = get_worker_info()
    worker = info.id if info else 0
    rank = int(os.environ.get("RANK", "0"))
    return np.random.default_rng([seed, epoch, rank, worker, *more])


class _RenderedPatches(IterableDataset):
    """Endless patches, each drawn by ``raw`` from a stream of its own (this worker's n-th),
    so that a resumed run can pass over the patches already used without rendering them."""

    seed: int
    size: int
    norm: Normalisation
    skip_batches: tuple[int, int] = (0, 1)
    """(batches, batch size) already used: each worker's share of them comes out blank."""

    def raw(self, rng: np.random.Generator) -> Patch:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batches, batch_size = self.skip_batches
        # A DataLoader takes its batches from the workers in turn.
        blank = (batches // workers + (worker < batches % workers)) * batch_size
        for index in itertools.count():
            if index < blank:
                yield torch.zeros(1, self.size, self.size), torch.zeros(1, self.size, self.size)
                continue
            patch = self.raw(_worker_rng(self.seed, 0, index))
            yield to_sample(patch.image, patch.height, patch.meta, self.norm)


class SyntheticPatches(_RenderedPatches):
    """Endless procedural terrain rendered at the canonical sun (± jitter)."""

    def __init__(self, size: int = 128, seed: int = 0, sun: SunRange | None = None,
                 norm: Normalisation | None = None, relief: tuple[float, float] = (1.0, 1.0),
                 photometry: float = 1.0) -> None:
        self.size, self.seed = size, seed
        self.sun, self.norm, self.relief = sun or SunRange(), norm or Normalisation(), relief
        self.photometry = photometry  # synth.render's spread of albedo, haze, gamma...

    def raw(self, rng: np.random.Generator) -> Patch:
        from training import synth  # the terrain generator; heavy, so imported when used

        dem = synth.synthetic_dem(rng, self.size, pixel_size_m=SYNTHETIC_PIXEL_M)
        # The relief drawn here is the model's prior on slope magnitude (a stretched image
        # shows relative slope only), so it is kept near real Mars slopes.
        dem = dem * np.float32(np.exp(rng.uniform(*np.log(self.relief))))
        azimuth, elevation = self.sun.draw(rng)
        image = synth.render(dem, SYNTHETIC_PIXEL_M, azimuth, elevation, rng, self.photometry)
        meta = {"source": "synthetic", "pixel_size_m": SYNTHETIC_PIXEL_M,
                "sun_azimuth_deg": azimuth, "sun_elevation_deg": elevation}
        return Patch("synthetic", image, (dem - dem.mean()).astype(np.float32), meta)


@dataclass
class DemShape:
    name: str
    heights: np.ndarray
    pixel_size_m: float


def pixel_size_metres(geotransform: Sequence[float], radius_m: float | None,
                      lat_deg: float) -> float:
    """Mean pixel side in metres. ``radius_m``: the body's, for geographic pixels (degrees)."""
    dx, dy = abs(geotransform[1]), abs(geotransform[5])
    if radius_m:
        # Earth's metres per degree scaled to the body: exactly Earth's on an Earth datum, so
        # the recipe's Earth DEMs keep the pixel sizes the bundled model was trained with.
        degree_m = EARTH_DEG_M * (radius_m / EARTH_RADIUS_M)
        dx, dy = dx * degree_m * math.cos(math.radians(lat_deg)), dy * degree_m
    return math.sqrt(dx * dy)


def load_dem_shapes(folder: str | os.PathLike) -> list[DemShape]:
    """Read every GeoTIFF in ``folder``; drop the rows reserved for evaluation."""
    from osgeo import gdal

    shapes = []
    for path in sorted(Path(folder).glob("*.tif")):
        try:
            ds = gdal.Open(str(path))
        except RuntimeError:  # where GDAL's exceptions are on
            ds = None
        if ds is None:  # a damaged or half-copied file
            raise ValueError(f"{path.name} cannot be read as a raster; replace it or remove it")
        band = ds.GetRasterBand(1)
        heights = band.ReadAsArray().astype(np.float32)
        # A crop through a void would render as a cliff: such a DEM is refused, not guessed.
        void = ~np.isfinite(heights) | (heights == band.GetNoDataValue())
        if void.any():
            raise ValueError(f"{path.name} has {int(void.sum())} nodata pixels; fill them "
                             "(gdal_fillnodata.py) or crop them out first")
        gt = ds.GetGeoTransform()
        srs = ds.GetSpatialRef()
        radius = srs.GetSemiMajor() if srs and srs.IsGeographic() else None
        lat = gt[3] + gt[5] * ds.RasterYSize / 2
        if path.name in HOLDOUT_ROWS:
            heights = heights[:HOLDOUT_ROWS[path.name]]
        shapes.append(DemShape(path.stem, heights, pixel_size_metres(gt, radius, lat)))
    return shapes


class DemShapePatches(_RenderedPatches):
    """Real DEM shapes: random crop, zoom, quarter turn or mirror, relief scale, many suns."""

    def __init__(self, shapes: list[DemShape], size: int = 128, seed: int = 0,
                 sun: SunRange | None = None, norm: Normalisation | None = None,
                 photometry: float = 1.0) -> None:
        if not shapes:
            raise ValueError("no DEM shapes to render")
        self.shapes, self.size, self.seed = shapes, size, seed
        self.sun, self.norm = sun or SunRange(), norm or Normalisation()
        self.photometry = photometry

    def raw(self, rng: np.random.Generator) -> Patch:
        from training import synth

        shape = self.shapes[rng.integers(len(self.shapes))]
        rows, cols = shape.heights.shape
        # zoom > 1: each output pixel covers several DEM pixels (coarser); < 1: finer.
        zoom = float(np.exp(rng.uniform(*np.log(DEM_ZOOM))))
        crop = int(min(round(self.size * zoom), rows, cols))
        r0, c0 = rng.integers(rows - crop + 1), rng.integers(cols - crop + 1)
        dem = shape.heights[r0:r0 + crop, c0:c0 + crop]
        dem = ndimage.zoom(dem, self.size / crop, order=1)[:self.size, :self.size]
        dem = np.rot90(dem, rng.integers(4))
        dem = np.ascontiguousarray(dem[:, ::-1] if rng.random() < 0.5 else dem)
        pixel = shape.pixel_size_m * crop / self.size
        dem = (dem - dem.mean()) * rng.uniform(*DEM_RELIEF)
        azimuth, elevation = self.sun.draw(rng)
        image = synth.render(dem.astype(np.float32), pixel, azimuth, elevation, rng,
                             self.photometry)
        meta = {"source": shape.name, "pixel_size_m": pixel,
                "sun_azimuth_deg": azimuth, "sun_elevation_deg": elevation}
        return Patch(shape.name, image, dem.astype(np.float32), meta)


def write_pool(sources: Sequence[tuple[SyntheticPatches | DemShapePatches, int]],
               out_dir: str | os.PathLike, seed: int, per_shard: int = 500) -> list[Path]:
    """Render ``count`` raw patches from each source into shards (a fixed, reusable pool)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out_dir, prefix="pool", max_count=per_shard) as writer:
        index = 0
        for source, count in sources:
            for _ in range(count):
                patch = source.raw(rng)
                patch.key = f"{index:08d}"
                writer.write(patch)
                index += 1
    return writer.paths


def scene_level(whole: np.ndarray, crop: np.ndarray,
                stretch: Callable[[np.ndarray], np.ndarray] | None) -> float:
    """The whole patch's mean over the crop's, ``crop`` already stretched and ``whole`` stretched
    here alike (a gamma changes the ratio of two means)."""
    whole_mean = float((stretch(whole) if stretch else whole).mean())
    return whole_mean / max(float(crop.mean()), 1e-6)


class ShardPatches(IterableDataset):
    """Streams shards: each rank and DataLoader worker reads its own subset of shard files.

    Shards are reshuffled every epoch (``set_epoch``) with a shuffle buffer across them;
    samples get an up-down mirror (it keeps a sun from the left or right where it is), a random
    gamma and a small stretch jitter, so a fixed pool is seen differently each epoch.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], seed: int = 0,
                 norm: Normalisation | None = None, canonical_azimuth: float = 270.0,
                 augment: bool = True, size: int = 128, mean_jitter: float = 0.0,
                 scene_mean: bool = False, low_relief: float = 0.0,
                 split_across_ranks: bool = True) -> None:
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise ValueError("no shard files to read")
        self.seed, self.norm, self.canonical = seed, norm or Normalisation(), canonical_azimuth
        self.augment, self.epoch = augment, 0
        self.size, self.mean_jitter = size, mean_jitter
        self.scene_mean, self.low_relief = scene_mean, low_relief
        self.split_across_ranks = split_across_ranks  # off: one rank reads it all (validation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        """This reader's slot among all readers (ranks x DataLoader workers)."""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if not self.split_across_ranks:
            rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return rank * workers + worker, world * workers

    def my_shards(self) -> list[str]:
        """This rank's and worker's share of the shard list, in a new order each epoch.

        The share is the same every epoch, so ranks that drift an epoch apart (their shares
        differ in size) still never read the same shard."""
        slot, slots = self._reader()
        # Fewer shards than readers: everyone reads all shards, samples split by index.
        mine = list(self.paths) if len(self.paths) < slots else self.paths[slot::slots]
        random.Random(self.seed * 1000 + self.epoch).shuffle(mine)
        return mine

    def _patches(self) -> Iterator[Patch]:
        slot, slots = self._reader()
        split = len(self.paths) < slots
        for i, patch in enumerate(p for path in self.my_shards() for p in read_shard(path)):
            if not split or i % slots == slot:
                yield patch

    def _sample(self, patch: Patch, rng: np.random.Generator) -> tuple[torch.Tensor, ...] | None:
        image, height = patch.image.astype(np.float32), patch.height
        sun = patch.meta.get("sun_azimuth_deg")
        if sun is None:
            return None  # a patch without its sun cannot be put in the canonical frame
        sun = (sun + patch.meta.get("north_deg", 0.0)) % 360.0  # from north to the grid
        # Rendered pools already carry the canonical sun with a deliberate small jitter.
        if abs((sun - self.canonical + 180.0) % 360.0 - 180.0) > AZIMUTH_TOLERANCE:
            image, height = to_canonical(image, height, sun, self.canonical)
        if min(image.shape) < self.size:
            return None  # too small for a training patch once turned
        whole = image
        image, height = self._crop(image, height, rng)
        if self.augment and self.low_relief and rng.random() < self.low_relief:
            image, height = flattened(image, height, rng)
        stretch = None
        if self.augment:
            if rng.random() < 0.5:
                image, height = image[::-1], height[::-1]
            stretch = self._restretch(image, rng)
            image = stretch(image)
        # mean_ratio: the engine divides each tile by its scene's mean, not the tile's own;
        # a crop of a larger pool patch can be scaled the same way, the whole patch stretched
        # as the crop was.
        level = scene_level(whole, image, stretch) if self.scene_mean else 1.0
        jitter = self.mean_jitter if self.augment else 0.0
        if jitter:
            level *= float(rng.uniform(1 - jitter, 1 + jitter))
        x, y = to_sample(np.ascontiguousarray(image), np.ascontiguousarray(height), patch.meta,
                         self.norm, level)
        if self.augment:
            # The engine maps by scene statistics, never exactly the patch's own.
            shift = 0.2 if self.norm.scaling == "percentile" else 0.05
            x = x * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-shift, shift))
        return x, y

    def _restretch(self, image: np.ndarray,
                   rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
        """A random gamma; percentile models also see a min-max stretch, ratio models only
        a small dark offset (stretching to zero would inflate their contrast). Drawn for
        ``image``, returned as a function of pixel values (to apply to its whole patch too)."""
        if self.norm.scaling == "percentile":
            lo, hi = float(image.min()), float(image.max())
            gamma = rng.uniform(0.8, 1.25)
            return lambda values: np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, None) ** gamma
        hi = max(float(image.max()), 1e-6)
        offset = rng.uniform(-0.1, 0.1) * float(image.mean()) / hi
        gamma = rng.uniform(0.8, 1.25)
        return lambda values: np.clip(values / hi + offset, 0.0, None) ** gamma

    def _crop(self, image: np.ndarray, height: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = image.shape
        r0 = rng.integers(rows - self.size + 1) if self.augment else (rows - self.size) // 2
        c0 = rng.integers(cols - self.size + 1) if self.augment else (cols - self.size) // 2
        window = (slice(r0, r0 + self.size), slice(c0, c0 + self.size))
        return image[window], height[window]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = _worker_rng(self.seed, self.epoch)
        buffer: list[Patch] = []
        for patch in self._patches():
            buffer.append(patch)
            if len(buffer) >= SHUFFLE_BUFFER:
                sample = self._sample(buffer.pop(rng.integers(len(buffer))), rng)
                if sample is not None:
                    yield sample
        while buffer:
            sample = self._sample(buffer.pop(rng.integers(len(buffer))), rng)
            if sample is not None:
                yield sample


def flattened(image: np.ndarray, height: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """The same ground with its relief scaled by k (log-uniform in LOW_RELIEF) and its image's
    contrast about the mean with it: shading is linear in small slopes, and a network that never
    sees faint shading invents slope where there is none (the model card's "Little contrast")."""
    k = float(np.exp(rng.uniform(*np.log(LOW_RELIEF))))
    mean = float(image.mean())
    return mean + k * (image - mean), height * k


def list_shards(folder: str | os.PathLike) -> list[Path]:
    paths = sorted(Path(folder).glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no shard files (*.tar) in {folder}")
    return paths
