"""Evaluate ONNX generators through the plugin's engine, beside classical baselines.

    python -m training.evaluate --model [NAME=]M.onnx [--model ...] --data DIR [--out DIR]

Each model runs through ``mars_dtm_plugin.core.engine.predict_dtm`` on GeoTIFFs (what is
measured is what ships). Test sets, written under ``--data`` when missing:

- ``synthetic``: 48 procedural scenes (512 px, 1 m, sun from any azimuth), a seed never used for
  training;
- ``louth``: the rows of the real Louth crater HiRISE DTM held out of training, rendered;
- ``karoo``: the real QuickBird 8 m image, predictions averaged 3 x 3 onto the real 24 m DEM,
  under the sun of the image's acquisition time;
- ``gale``: the real HiRISE colour image (grey = mean of bands 1-3), predictions averaged
  8 x 8 onto the real 5 m DTM (one tile: a smoke test);
- ``hirise``: 24 real HiRISE tiles without truth: re-shading consistency only;
- ``pairs``: with ``--test-shards DIR``, every patch of held-out real image / DTM pairs cut by
  ``training.tiles`` (the test split of a scrape), each with its label's sun.

Metrics per evaluation tile, with each tile's mean removed from prediction and truth, then
averaged over tiles: RMSE and MAE (m), mean absolute slope error (degrees), the share of
pixels whose depth below the tile's highest point is within a factor 1.25^k of the truth, and
the relief ratio (standard deviation of the prediction over the truth's: 1 is the right relief)
and the detail ratio (the same for what a 4-pixel Gaussian smooths away: 1 is the right roughness);
and the RMSE split in two: the error's best-fit plane over the tile (tilt) and the rest
(detrended), whose squares add up in each tile. The flat row's two values are the truth's tilt
and its relief beyond the tilt. Per scene: the scene tilt error, the slope of the plane by which
the prediction's best-fit plane over the whole scene differs from the truth's (flat's is the
truth's regional slope).
Baselines: a flat surface and linear Fourier-domain shape from shading (Pentland). On a set of
at least 10 scenes, the first model's difference from each baseline and each other model in
the metrics the bar compares comes with a 95 % paired bootstrap interval over scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.shards import UnreadableShard, read_shard
from training.synth import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
# The real DEM shapes and test sets (docs/data.md, "Real data for evaluation (and the DEM shapes)").
DATA_DIR = Path(os.environ.get("MARSDTM_DATA") or ROOT.parent / "shared" / "data")
HIRISE_ASSUMED_SUN = (270.0, 40.0)
KAROO_ACQUIRED = datetime(2003, 11, 18, 8, 20, 12, tzinfo=timezone.utc)
"""When QuickBird-2 took the Karoo image: its source product,
03NOV18082012-P1BS-056844553010_01_P001, is named after its acquisition time in UTC."""
BASELINES = ("flat", "sfs")
MADE_HERE = ".made-by-evaluate"  # marks a generated set's folder as the evaluation's own
TILT_SUFFIX = "+true scene tilt"
REFERENCE_SUFFIX = "+reference DTM {}x"
REFERENCE_ALONE = "reference DTM {}x"
DETILTED_TRUTH = "truth-scene tilt"
DETAIL_SIGMA_PX = 4.0
"""The detail ratio compares what a Gaussian of this many truth pixels smooths away."""
FIGURE_SCENES = 3
"""Scenes of each set shown in its figure."""
SYNTHETIC_SCENES = 48
ROUNDING_ZERO = 1e-6
"""Table cells smaller than this (in metres, degrees or ratios) are shown as 0."""
INTERVAL_KEYS = ("rmse_m", "mae_m", "slope_err_deg", "delta1", "delta2", "delta3")
"""The metrics the bar compares with the baselines, given a confidence interval."""
INTERVAL_MIN_SCENES = 10
"""Scenes, not tiles, are resampled (a scene's tiles share its tilt, its sun and its render),
and the patches of one stereo pair are resampled together."""


# -- metrics -------------------------------------------------------------------------------
def slope_deg(height: np.ndarray, pixel_size_m: float) -> np.ndarray:
    d_row, d_col = np.gradient(height.astype(np.float64), pixel_size_m)
    return np.degrees(np.arctan(np.hypot(d_row, d_col)))


def tile_metrics(pred: np.ndarray, truth: np.ndarray, pixel_size_m: float,
                 valid: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one tile; both inputs in metres, means removed here over valid pixels."""
    valid = np.isfinite(pred) & np.isfinite(truth) & (True if valid is None else valid)
    p = np.where(valid, pred - pred[valid].mean(), 0.0)
    t = np.where(valid, truth - truth[valid].mean(), 0.0)
    error = (p - t)[valid]
    # Slopes need both neighbours valid in each direction: erode the mask by one pixel.
    inner = valid.copy()
    inner[1:-1, 1:-1] &= valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    inner[[0, -1], :], inner[:, [0, -1]] = False, False
    slope_error = np.abs(slope_deg(p, pixel_size_m) - slope_deg(t, pixel_size_m))[inner]
    # The error split into the tile's best-fit plane (its overall tilt) and what is left:
    # the two are orthogonal, so rmse² = tilt_rmse² + detrended_rmse².
    tilt_error = _plane(p - t, valid)
    return {"rmse_m": _rms(error), "mae_m": float(np.mean(np.abs(error))),
            "slope_err_deg": float(slope_error.mean()) if slope_error.size else math.nan,
            **depth_deltas(p, t, valid),
            "relief_ratio": _std_ratio(p, t, valid),
            "detail_ratio": _std_ratio(_detail(p, valid), _detail(t, valid), valid),
            "tilt_rmse_m": _rms(tilt_error[valid]),
            "detrended_rmse_m": _rms(error - tilt_error[valid])}


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2)))


def plane_fit(height: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Coefficients (a, b, c) of the least-squares plane a + b·column + c·row through the valid
    pixels."""
    rows, cols = np.nonzero(valid)
    design = np.column_stack([np.ones(rows.size), cols, rows]).astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(design, height[valid], rcond=None)
    return coefficients


def _plane(height: np.ndarray, valid: np.ndarray) -> np.ndarray:
    a, b, c = plane_fit(height, valid)
    rows, cols = np.indices(height.shape)
    return a + b * cols + c * rows


def _detail(height: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """What a Gaussian of ``DETAIL_SIGMA_PX`` pixels smooths away from a tile.

    The tile's plane is taken out first: mirrored at the tile's edges, a tilt would bend, and
    the smoothing would count a plane as roughness there.
    """
    from scipy import ndimage

    relief = np.where(valid, height - _plane(height, valid), 0.0)
    # Normalised by the smoothed mask, so that nodata holes are not read as steps to 0.
    weight = ndimage.gaussian_filter(valid.astype(float), DETAIL_SIGMA_PX, mode="reflect")
    smooth = ndimage.gaussian_filter(relief, DETAIL_SIGMA_PX, mode="reflect")
    return relief - smooth / np.maximum(weight, 1e-6)


def _std_ratio(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    spread = truth[valid].std()
    return float(pred[valid].std() / spread) if spread > 0 else math.nan


def depth_deltas(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """δ < 1.25^k on depth below the tile's highest point (pixels with a true depth > 0)."""
    d_pred = pred[valid].max() - pred[valid]
    d_true = truth[valid].max() - truth[valid]
    keep = d_true > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(d_pred[keep] / d_true[keep], d_true[keep] / d_pred[keep])
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    return {f"delta{k}": float(np.mean(ratio < 1.25**k)) if ratio.size else math.nan
            for k in (1, 2, 3)}


def tiles_of(shape: tuple[int, int], size: int) -> list[tuple[slice, slice]]:
    """Non-overlapping ``size`` windows covering ``shape`` (ragged edges dropped)."""
    return [(slice(r, r + size), slice(c, c + size))
            for r in range(0, shape[0] - size + 1, size)
            for c in range(0, shape[1] - size + 1, size)]


def scene_metrics(pred: np.ndarray, truth: np.ndarray, pixel_size_m: float, tile: int,
                  valid: np.ndarray | None = None, min_valid: float = 0.8) -> list[dict]:
    valid = np.ones(truth.shape, bool) if valid is None else valid
    rows = []
    for window in tiles_of(truth.shape, tile):
        v = valid[window] & np.isfinite(pred[window]) & np.isfinite(truth[window])
        if v.mean() >= min_valid:
            rows.append(tile_metrics(pred[window], truth[window], pixel_size_m, v))
    return rows


# -- baselines -----------------------------------------------------------------------------
def flat(image: np.ndarray) -> np.ndarray:
    return np.zeros(image.shape, np.float32)


def sfs_fourier(image: np.ndarray, pixel_size_m: float, sun_azimuth: float,
                sun_elevation: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Linear shape from shading in the Fourier domain (Pentland 1988), heights in metres.

    Lambert linearised for small slopes: I / mean(I) - 1 = -cot(e) * (slope toward the sun),
    so the slope along the sun is known and integrates along that direction by division in
    the Fourier domain; frequencies across the sun carry no information and stay zero
    (a Wiener-style floor avoids dividing by ~0). Zero padding (flat surroundings) keeps the
    integration from wrapping around the scene's edges.
    """
    image = image.astype(np.float64)
    valid = np.ones(image.shape, bool) if valid is None else valid
    level = image[valid].mean()
    ratio = np.where(valid, image / max(level, 1e-6) - 1.0, 0.0)
    toward_sun = -ratio * math.tan(math.radians(sun_elevation))
    rows, cols = image.shape
    padded = np.zeros((2 * rows, 2 * cols))
    padded[:rows, :cols] = toward_sun
    f_row = np.fft.fftfreq(2 * rows)[:, None]
    f_col = np.fft.fftfreq(2 * cols)[None, :]
    az = math.radians(sun_azimuth)
    # d/d(east) = d/dcol, d/d(north) = -d/drow; slope toward the sun in pixel units.
    g = 2j * math.pi * (f_col * math.sin(az) - f_row * math.cos(az))
    floor = (2 * math.pi / (4 * max(rows, cols))) ** 2  # ~ a wave four scenes long
    heights = np.fft.fft2(padded) * np.conj(g) / (np.abs(g) ** 2 + floor)
    heights[0, 0] = 0.0
    z = np.real(np.fft.ifft2(heights))[:rows, :cols] * pixel_size_m
    return (z - z[valid].mean()).astype(np.float32)


def reshading_correlation(image: np.ndarray, dem: np.ndarray, pixel_size_m: float,
                          sun_azimuth: float, sun_elevation: float,
                          valid: np.ndarray | None = None) -> float:
    """Pearson correlation of the image with ``dem`` shaded (Lambert) under the given sun."""
    from training.synth import cos_incidence

    shade = np.clip(cos_incidence(dem, pixel_size_m, sun_azimuth, sun_elevation), 0, None)
    valid = np.isfinite(dem) & (True if valid is None else valid)
    valid[[0, -1], :], valid[:, [0, -1]] = False, False
    a, b = image[valid].astype(np.float64), shade[valid]
    if a.std() == 0 or np.ptp(b) < 1e-9:  # a flat DEM shades to a constant (up to rounding)
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def sun_over(path: Path, when: datetime) -> tuple[float, float]:
    """The sun over a georeferenced image's centre at ``when``: azimuth clockwise from image up,
    elevation, in degrees (no refraction)."""
    from astral import Observer
    from astral.sun import azimuth, elevation
    from osgeo import gdal, osr

    from mars_dtm_plugin.core.raster import InputRaster

    dataset = gdal.Open(str(path))
    gt, cols, rows = dataset.GetGeoTransform(), dataset.RasterXSize, dataset.RasterYSize
    srs, wgs84 = osr.SpatialReference(wkt=dataset.GetProjection()), osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    for ref in (srs, wgs84):
        ref.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat, _ = osr.CoordinateTransformation(srs, wgs84).TransformPoint(
        *gdal.ApplyGeoTransform(gt, cols / 2, rows / 2))
    observer = Observer(latitude=lat, longitude=lon)
    return (InputRaster(str(path)).georef.image_azimuth(azimuth(observer, when)),
            elevation(observer, when, with_refraction=False))


def estimate_sun(image: np.ndarray, dem: np.ndarray, pixel_size_m: float,
                 valid: np.ndarray | None = None) -> tuple[float, float, float]:
    """Sun (azimuth, elevation) whose shading of the true DEM best matches the image.

    Stands in for the product metadata that the Gale test image lacks; returns the
    correlation reached as well.
    """
    best = (0.0, 45.0, -2.0)
    for az in range(0, 360, 5):
        for el in (15.0, 25.0, 35.0, 45.0, 55.0, 65.0):
            r = reshading_correlation(image, dem, pixel_size_m, az, el, valid)
            if r > best[2]:
                best = (float(az), el, r)
    return best


# -- scenes --------------------------------------------------------------------------------
@dataclass
class Scene:
    """One test input and how to score predictions on it."""

    name: str
    image_path: Path
    image: np.ndarray
    valid: np.ndarray
    pixel_size_m: float
    sun: tuple[float, float]
    """Azimuth clockwise from image up (the frame renders and baselines use), elevation."""
    truth: np.ndarray | None = None
    truth_pixel_m: float = 0.0
    factor: int = 1
    """Predictions are averaged ``factor`` x ``factor`` onto the truth grid."""
    tile: int = 256
    """Evaluation tile side on the truth grid."""
    truth_valid: np.ndarray | None = None
    """Truth cells the image covers whole, where only part of it does."""
    notes: dict = field(default_factory=dict)

    def scored(self) -> np.ndarray:
        """Truth cells that are scored: finite, and covered by the image."""
        finite = np.isfinite(self.truth)
        return finite if self.truth_valid is None else finite & self.truth_valid

    def on_truth_grid(self, heights: np.ndarray) -> np.ndarray:
        """``heights`` on the image's grid averaged onto the truth's, NaN where not valid."""
        return block_mean(np.where(self.valid, heights, np.nan), self.factor)


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return a
    r, c = a.shape[0] // factor * factor, a.shape[1] // factor * factor
    return a[:r, :c].reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3))


def read_band(path: Path, band: int = 1) -> tuple[np.ndarray, float | None, tuple, str]:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    b = ds.GetRasterBand(band)
    return b.ReadAsArray(), b.GetNoDataValue(), ds.GetGeoTransform(), ds.GetProjection()


class ModelFailed(RuntimeError):
    """The engine refused to run a model on a scene."""


def _synthetic_made(out: Path, seed: int, count: int = SYNTHETIC_SCENES) -> bool:
    # The shard, named by its seed, is closed last: it marks a set complete for that seed.
    return any(out.glob(f"synth-{seed}-*.tar")) and \
        len(list(out.glob("geotiff/*_image.tif"))) >= count


def check_data_folder(folder: Path, seed: int, sets: list[str]) -> None:
    """Refuse a ``--data`` whose synthetic set would be made again over files not its own."""
    out = folder / "synthetic"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--data {folder} is a file; give a folder for the test inputs")
    if ("synthetic" in sets and out.is_dir() and any(out.iterdir())
            and not (out / MADE_HERE).exists() and not _synthetic_made(out, seed)):
        raise ValueError(f"{out} holds files that no evaluation with --seed {seed} made, and "
                         "its synthetic scenes would replace them; give --data a folder of "
                         "its own")


def synthetic_scenes(folder: Path, seed: int, count: int = SYNTHETIC_SCENES) -> list[Scene]:
    from training import synth

    out = folder / "synthetic"
    if not _synthetic_made(out, seed, count):
        shutil.rmtree(out, ignore_errors=True)  # ours (check_data_folder), of another seed
        out.mkdir(parents=True)
        (out / MADE_HERE).write_text("made by training.evaluate; replaced for another --seed\n")
        synth.write_dataset(out, count, seed=seed, size=512, sun_azimuth_deg=None, geotiff=True)
    scenes = []
    for image_path in sorted(out.glob("geotiff/*_image.tif"))[:count]:
        image, _, gt, _ = read_band(image_path)
        dem, *_ = read_band(Path(str(image_path).replace("_image.tif", "_dem.tif")))
        from osgeo import gdal
        meta = gdal.Open(str(image_path)).GetMetadata()
        sun = (float(meta["SUN_AZIMUTH"]), float(meta["SUN_ELEVATION"]))
        scenes.append(Scene(image_path.stem.replace("_image", ""), image_path, image,
                            np.ones(image.shape, bool), gt[1], sun, dem, gt[1]))
    return scenes


def louth_scenes(folder: Path, seed: int, suns: int = 1) -> list[Scene]:
    """Renders of the held-out rows (600-999) of the Louth crater HiRISE DTM: three crops,
    each under ``suns`` random suns."""
    from osgeo import osr

    from mars_dtm_plugin.core.raster import ground_pixel_size_m
    from training import synth
    from training.data import HOLDOUT_ROWS

    name = "mars_louth_crater_ice_mound_hirise.tif"
    source = set_source("louth") / name
    if not source.exists():
        return []
    dem, _, gt, wkt = read_band(source)
    rng = np.random.default_rng([seed, 600])
    out = folder / "louth"
    out.mkdir(parents=True, exist_ok=True)
    scenes = []
    top = HOLDOUT_ROWS[name]
    for i, c0 in enumerate((0, 308, 616) * suns):
        crop = dem[top:top + 384, c0:c0 + 384].astype(np.float32)
        sun = (float(rng.uniform(0, 360)), float(rng.uniform(20, 50)))
        crop_gt = (gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + top * gt[5], 0.0, gt[5])
        # Polar stereographic map units are some 3 % longer than the ground at 70 N; slopes,
        # the rendering and the engine all take the ground's.
        pixel = ground_pixel_size_m(crop_gt, osr.SpatialReference(wkt=wkt), 384, 384)
        image = synth.render(crop, pixel, sun[0], sun[1], rng)
        path = write_geotiff(out / f"louth_{i}.tif", image, crop_gt, wkt)
        scenes.append(Scene(f"louth_{i}", path, image, np.ones(image.shape, bool), pixel, sun,
                            crop, pixel, tile=128))
    return scenes


def karoo_scenes(_folder: Path, _seed: int) -> list[Scene]:
    base = set_source("karoo")
    if not _present(base, "image_qb2_pan_8m.tif", "dem_24m.tif"):
        return []
    image, nodata, gt, _ = read_band(base / "image_qb2_pan_8m.tif")
    dem, *_ = read_band(base / "dem_24m.tif")
    valid8 = image != (nodata if nodata is not None else 0)
    valid24 = block_mean(valid8.astype(float), 3) == 1.0
    image24 = block_mean(image.astype(float), 3)
    sun = sun_over(base / "image_qb2_pan_8m.tif", KAROO_ACQUIRED)
    scored = valid24 & np.isfinite(dem)
    shading = reshading_correlation(image24, dem, 24.0, *sun, scored)
    fit = estimate_sun(image24, dem, 24.0, scored)
    scene = Scene("karoo", base / "image_qb2_pan_8m.tif", image, valid8, gt[1], sun,
                  dem, 24.0, factor=3, tile=64, truth_valid=valid24)
    scene.notes = {"sun": f"at the acquisition time (az {sun[0]:.0f}, el {sun[1]:.0f}; the 24 m "
                          f"DEM shaded under it: r = {shading:.2f}, under the best-fitting sun "
                          f"az {fit[0]:.0f}, el {fit[1]:.0f}: r = {fit[2]:.2f})"}
    return [scene]


def gale_scenes(folder: Path, _seed: int) -> list[Scene]:
    base = set_source("gale")
    if not _present(base, "image_hirise_color_0p63m.tif", "dem_5m.tif"):
        return []
    from osgeo import gdal

    ds = gdal.Open(str(base / "image_hirise_color_0p63m.tif"))
    grey = np.mean([ds.GetRasterBand(i).ReadAsArray() for i in (1, 2, 3)], axis=0)
    grey = np.round(grey).astype(np.uint8)
    out = folder / "gale"
    out.mkdir(parents=True, exist_ok=True)
    path = write_geotiff(out / "gale_grey.tif", grey, ds.GetGeoTransform(), ds.GetProjection())
    dem, _, dem_gt, _ = read_band(base / "dem_5m.tif")
    sun = estimate_sun(block_mean(grey.astype(float), 8), dem, dem_gt[1])
    scene = Scene("gale", path, grey, np.ones(grey.shape, bool), ds.GetGeoTransform()[1],
                  sun[:2], dem, dem_gt[1], factor=8, tile=64)
    scene.notes = {"sun": f"estimated from the 5 m DTM (az {sun[0]:.0f}, el {sun[1]:.0f}, "
                          f"r = {sun[2]:.2f})"}
    return [scene]


def hirise_scenes(_folder: Path, _seed: int) -> list[Scene]:
    scenes = []
    for path in sorted(set_source("hirise").glob("hirise_tile_*.jpg")):
        image, *_ = read_band(path)
        scenes.append(Scene(path.stem, path, image, np.ones(image.shape, bool), 1.0,
                            HIRISE_ASSUMED_SUN))
    return scenes


def pair_scenes(shards: Path, workdir: Path) -> Iterator[Scene]:
    """Each patch of the shards in ``shards`` as a GeoTIFF on its DTM's grid, with its truth.

    Made one at a time: a test split can hold thousands of patches.
    """
    for shard in sorted(shards.glob("*.tar")):
        yield from _shard_scenes(shard, workdir)


def _shard_scenes(shard: Path, workdir: Path) -> Iterator[Scene]:
    for patch in read_shard(shard):
        meta = patch.meta
        tile = min(256, *patch.height.shape)
        path = write_geotiff(workdir / f"{patch.key}.tif", patch.image,
                             tuple(meta["geotransform"]), meta["crs_wkt"])
        # Scenes keep the sun in the image's frame; the label's is from true north.
        sun = ((meta["sun_azimuth_deg"] + meta["north_deg"]) % 360, meta["sun_elevation_deg"])
        rows, cols = patch.image.shape
        yield Scene(patch.key, path, patch.image, np.ones(patch.image.shape, bool),
                    meta["pixel_size_m"], sun, patch.height, meta["pixel_size_m"],
                    tile=tile, notes={"pair": meta["pair_id"], "shards": shard.parent,
                                      "size": f"{cols} x {rows}", "tile": tile})
        path.unlink()  # scored by now


def _present(folder: Path, *names: str) -> bool:
    """Whether every file a set is made of is there (one alone is skipped as none)."""
    return all((folder / name).is_file() for name in names)


def set_source(set_name: str) -> Path | None:
    """Where a test set's real data is read from; None for the generated synthetic set."""
    return {"louth": DATA_DIR / "dem_shapes", "karoo": DATA_DIR / "karoo_quickbird",
            "gale": DATA_DIR / "gale_hirise", "hirise": DATA_DIR / "hirise_tiles"}.get(set_name)


TEST_SETS: dict[str, Callable[[Path, int], list[Scene]]] = {
    "synthetic": synthetic_scenes, "louth": louth_scenes, "karoo": karoo_scenes,
    "gale": gale_scenes, "hirise": hirise_scenes,
}
ALL_SETS = (*TEST_SETS, "pairs")
"""Every set the evaluation knows: ``pairs`` is read from test shards, not made."""


# -- report --------------------------------------------------------------------------------
COLUMNS = {"rmse_m": "RMSE (m)", "mae_m": "MAE (m)", "slope_err_deg": "slope err (°)",
           "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³",
           "relief_ratio": "relief ratio", "detail_ratio": "detail ratio",
           "tilt_rmse_m": "tilt RMSE (m)", "detrended_rmse_m": "detrended RMSE (m)",
           "scene_tilt_err_deg": "scene tilt err (°)",
           "tiles": "tiles",
           "reshade_r": "re-shading r", "mean_slope_deg": "mean slope (°)"}
SET_TITLES = {"synthetic": "Held-out synthetic scenes", "louth": "Louth crater (real HiRISE "
              "DTM, held-out rows, rendered)", "karoo": "Karoo (real QuickBird 8 m image, "
              "real 24 m DEM)", "gale": "Gale crater (real HiRISE image, real 5 m DTM; smoke "
              "test)", "hirise": "Real HiRISE tiles (no truth)",
              "pairs": "Held-out real image / DTM pairs (test shards)"}


def hillshade(height: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Cartographic hillshade (sun from the north-west, 45° up), for figures."""
    from training.synth import cos_incidence

    filled = np.where(np.isfinite(height), height, np.nanmean(height))
    return np.clip(cos_incidence(filled, pixel_size_m, 315.0, 45.0), 0, 1)


def _panels(row: dict, model: str) -> list[tuple[str, np.ndarray, str]]:
    """(title, array, colour map) for one scene, all on the truth grid when there is one."""
    scene: Scene = row["scene"]
    pixel = scene.truth_pixel_m if scene.truth is not None else scene.pixel_size_m
    panels = [("input", scene.on_truth_grid(scene.image.astype(float)), "gray")]
    if scene.truth is not None:
        panels.append(("truth hillshade", hillshade(scene.truth, pixel), "gray"))
    panels += [(f"{model} hillshade", hillshade(scene.on_truth_grid(row[model]), pixel), "gray"),
               ("SFS hillshade", hillshade(scene.on_truth_grid(row["sfs"]), pixel), "gray")]
    heights = [("truth (m)", scene.truth)] if scene.truth is not None else []
    heights.append((f"{model} (m)", scene.on_truth_grid(row[model])))
    for title, h in heights:
        panels.append((title, h - np.nanmean(h), "terrain"))
    if scene.truth is not None:
        pred = scene.on_truth_grid(row[model])
        truth = np.where(np.isfinite(pred), scene.truth, np.nan)  # both means over one area
        panels.append(("error (m)", (pred - np.nanmean(pred)) - (truth - np.nanmean(truth)),
                       "RdBu_r"))
    return panels


def figures(set_name: str, rows: list[dict], model: str, out: Path) -> Path:
    """One PNG per test set: a few scenes, each as input / hillshades / heights / error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [_panels(row, model) for row in rows]
    cols = max(len(g) for g in grids)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.3 * len(rows)),
                             squeeze=False)
    for r, panels in enumerate(grids):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(panels):
                continue
            title, array, cmap = panels[c]
            limit = np.nanpercentile(np.abs(array), 99) if cmap == "RdBu_r" else None
            image = ax.imshow(array, cmap=cmap, vmin=-limit if limit else None, vmax=limit)
            # Each row's scene named once, above its first panel (pair keys are long).
            ax.set_title(f"{rows[r]['scene'].name}\n{title}" if c == 0 else title, fontsize=7)
            if cmap != "gray":
                fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.tight_layout()
    path = out / f"{set_name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def table(metrics: dict[str, dict], order: list[str]) -> str:
    keys = [k for k in COLUMNS if any(k in m for m in metrics.values())]
    lines = ["| method | " + " | ".join(COLUMNS[k] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name in order:
        if name in metrics:
            cells = [_fmt(metrics[name].get(k)) for k in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interval_table(found: dict[str, dict], model: str, drawn: str, count: int) -> str:
    """The first model less each baseline (and each other model), with 95 % intervals; bold
    where 0 lies outside. A cell drawn from fewer than the ``count`` scenes (or pairs) that
    ``drawn`` names says from how many."""
    lines = [f"`{model}` less each other method, paired scene by scene, with 95 % bootstrap "
             f"intervals over the {drawn} (bold: the interval leaves out 0; errors "
             "want negative differences, δ positive ones; a cell drawn over fewer, where a "
             "method left some unscored, says over how many):", "",
             "| against | " + " | ".join(COLUMNS[k] for k in INTERVAL_KEYS) + " |",
             "|---|" + "---|" * len(INTERVAL_KEYS)]
    for name, cells in found.items():
        shown = []
        for key in INTERVAL_KEYS:
            if cells[key] is None:
                shown.append("–")
                continue
            diff, low, high, drawn_from = cells[key]
            text = f"{diff:+.3g} [{low:+.3g}, {high:+.3g}]"
            text = f"**{text}**" if low > 0 or high < 0 else text
            shown.append(f"{text} (over {drawn_from})" if drawn_from < count else text)
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    # Rounding's residue of an exact zero (a tilt swapped for the truth's, a plane's detail).
    return "0" if abs(value) < ROUNDING_ZERO else f"{value:.3g}"


def bar_checks(results: dict, model: str) -> tuple[int, list[str]]:
    """The bar: on each metric of ``INTERVAL_KEYS`` in every set with truth, ``model`` beats
    both flat and SFS (errors lower, δ higher, as averaged in the tables). Returns the number of
    checks (set and metric) and a line for each one failed."""
    checks, failed = 0, []
    for set_name, metrics in results["sets"].items():
        if "rmse_m" not in metrics.get(model, {}):
            continue  # no truth: re-shading consistency is reported, not checked
        for key in INTERVAL_KEYS:
            checks += 1
            ours = metrics[model].get(key, math.nan)
            theirs = {name: metrics[name].get(key, math.nan) for name in BASELINES}
            lost = [name for name, value in theirs.items()
                    if not (ours > value if key.startswith("delta") else ours < value)]
            if lost:
                against = " and ".join(f"{name}'s {theirs[name]:.4g}" for name in lost)
                sure = _how_sure(results, model, set_name, key, lost)
                failed.append(f"{set_name} {COLUMNS[key]} ({ours:.4g} against {against}"
                              + (f"; {sure}" if sure else "") + ")")
    return checks, failed


def _how_sure(results: dict, model: str, set_name: str, key: str, lost: list[str]) -> str:
    """Whether the draw of scenes alone could explain a failed check: the 95 % intervals of the
    differences where the set has them (for the first model, whose they are), else why not."""
    count = results.get("scenes", {}).get(set_name)
    if count is None:
        return ""
    unit = "pair(s)" if set_name == "pairs" else "scene(s)"
    if count < INTERVAL_MIN_SCENES:
        return f"{count} {unit}: too few for an interval"
    first = results.get("interval_model")
    if first != model:
        return f"intervals are computed for {first} alone"
    found = results.get("intervals", {}).get(set_name, {}).get("against", {})
    said = []
    for name in lost:
        if cell := found.get(name, {}).get(key):
            difference, low, high, _ = cell
            said.append(f"difference from {name} {difference:+.3g} [{low:+.3g}, {high:+.3g}]"
                        + (", which holds 0" if low <= 0 <= high else ""))
        else:
            said.append(f"no paired interval against {name}")
    return "; ".join(said)


def _bar_section(results: dict, models: list[str]) -> list[str]:
    lines = []
    for model in models:
        checks, failed = bar_checks(results, model)
        if checks:
            lines.append(f"- `{model}` passes {checks - len(failed)} of {checks}"
                         + (f"; fails {', '.join(failed)}" if failed else ""))
    if not lines:
        return []
    return ["## The bar", "", "A check is one metric of one set with truth (RMSE, MAE, slope "
            "error, the three δ); a model passes it where it beats both flat and SFS there "
            "(errors lower, δ higher, as averaged in the tables). A failed check says whether "
            "the draw of scenes alone could explain it: the 95 % interval of the first model's "
            "difference where the set has one, else why it has none.", "", *lines, ""]


def write_report(results: dict, models: list[str], out: Path, command: str) -> Path:
    order = [*models, *results.get("controls", []), *BASELINES]
    lines = ["# Evaluation report", "",
             f"Produced by `python -m training.evaluate {command}`.", "",
             "Heights are compared per evaluation tile after removing each tile's mean; "
             "metrics are averaged over tiles (RMSE, MAE in metres; slope error in degrees; "
             "δ on depth below the tile's highest point; relief ratio: standard deviation "
             "of the prediction over the truth's; tilt and detrended RMSE: the error's "
             "best-fit plane over the tile and the rest; in each tile RMSE² is the sum of "
             "their squares; scene tilt error: the slope of the plane by which the "
             "prediction's best-fit plane over the whole scene differs from the truth's, "
             "in degrees, averaged over scenes weighted by their tiles; flat's is the "
             "truth's regional slope). `flat` is the mean surface, `sfs` "
             "linear Fourier-domain shape from shading given the sun azimuth and elevation the "
             "models are given. Models run through the plugin's engine.", ""]
    if DETILTED_TRUTH in order:
        lines += [f"`{DETILTED_TRUTH}` is the truth less its best-fit plane over the whole "
                  "scene: what a method right about everything but that tilt would score. "
                  f"`{TILT_SUFFIX}` rows swap a method's own plane over the scene for the "
                  "truth's.", ""]
    if factor := results.get("reference_factor"):
        lines += [f"`{models[0]}{REFERENCE_SUFFIX.format(factor)}` is `{models[0]}` given a "
                  f"reference DTM, the truth averaged over {factor} x {factor} of its cells, for "
                  f"its long wavelengths and datum; `{REFERENCE_ALONE.format(factor)}` is that "
                  "DTM alone, bilinear on the image's grid.", ""]
    lines += _bar_section(results, models)
    for set_name, metrics in results["sets"].items():
        lines += [f"## {SET_TITLES[set_name]}", "", results["notes"].get(set_name, ""), "",
                  table(metrics, order), ""]
        if found := results.get("intervals", {}).get(set_name):
            lines += [interval_table(found["against"], models[0], found["drawn"],
                                     found["count"]), ""]
        lines += [f"![{set_name}]({set_name}.png)", ""]
    skipped = {k: v for k, v in results["notes"].items() if k not in results["sets"]}
    for set_name, note in skipped.items():
        lines += [f"## {SET_TITLES[set_name]}", "", note, ""]
    if results.get("speed"):
        sp = results["speed"]
        lines += ["## Speed", "", f"`{models[0]}` through the engine on CPU, 2 threads: "
                  f"{sp['megapixels']:.1f} MP in {sp['seconds']:.1f} s = "
                  f"**{sp['mp_per_s']:.2f} MP/s** (best of two runs). The network alone "
                  f"(onnxruntime, batches of four 256 x 256 tiles, best of five): "
                  f"{sp['network_mp_per_s']:.2f} MP/s.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# -- running -------------------------------------------------------------------------------
def predict(model: Path, scene: Scene, workdir: Path, threads: int = 2,
            reference: Path | None = None) -> tuple[np.ndarray, float]:
    """The engine's DTM for ``scene`` (metres), given ``reference`` as its reference DTM, and
    its run time in seconds."""
    from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
    from mars_dtm_plugin.core.errors import DtmError
    from mars_dtm_plugin.core.raster import InputRaster

    out = workdir / f"{scene.name}_dtm.tif"
    georef = scene.image_path.suffix.lower() == ".tif"
    # The engine takes the azimuth from true north, which in a polar stereographic scene
    # (Louth crater, 70 N) lies some 100 degrees from image up.
    azimuth = InputRaster(str(scene.image_path)).georef.north_azimuth(scene.sun[0]) if georef \
        else scene.sun[0]
    options = PredictOptions(model_path=str(model), sun_azimuth=azimuth,
                             sun_elevation=scene.sun[1], provider="cpu", threads=threads,
                             pixel_size=None if georef else scene.pixel_size_m,
                             reference_dtm=reference and str(reference))
    try:
        report = predict_dtm(str(scene.image_path), str(out), options)
    except DtmError as exc:  # the whole evaluation stops: a model that fails is not scored
        raise ModelFailed(f"{model.name} on the scene {scene.name}: {exc}") from exc
    dtm, *_ = read_band(out)
    out.unlink()  # a test split has thousands of scenes
    return dtm.astype(np.float32), report.seconds


def coarser_truth(scene: Scene, factor: int) -> np.ndarray:
    """The truth averaged over ``factor`` x ``factor`` of its cells: a coarser DTM of the same
    ground, such as an analyst may have."""
    from mars_dtm_plugin.core.coarse import block_mean as nan_block_mean

    return nan_block_mean(np.where(scene.scored(), scene.truth, np.nan), factor)


def write_reference(scene: Scene, heights: np.ndarray, factor: int, folder: Path) -> Path:
    """``coarser_truth`` (``heights``) placed as the image is."""
    from osgeo import gdal

    image = gdal.Open(str(scene.image_path))
    step = scene.factor * factor
    gt = [value * (step if i not in (0, 3) else 1)
          for i, value in enumerate(image.GetGeoTransform())]
    return write_geotiff(folder / f"{scene.name}_reference.tif", heights.astype(np.float32),
                         gt, image.GetProjection(), nodata=float("nan"))


def reference_alone(scene: Scene, heights: np.ndarray, factor: int) -> np.ndarray:
    """``coarser_truth`` (``heights``) on the image's grid, bilinear between its cells'
    centres."""
    from mars_dtm_plugin.core.coarse import upsample_rows

    heights = np.where(np.isfinite(heights), heights, np.nanmean(heights))
    rows, cols = scene.image.shape
    return upsample_rows(heights, factor * scene.factor, 0, rows, cols)


def baseline(name: str, scene: Scene) -> np.ndarray:
    if name == "flat":
        return flat(scene.image)
    image = np.where(scene.valid, scene.image, np.median(scene.image[scene.valid]))
    return sfs_fourier(image, scene.pixel_size_m, *scene.sun, scene.valid)


def score(scene: Scene, heights: np.ndarray) -> dict[str, float]:
    """Metrics on the truth grid, or re-shading consistency where there is no truth."""
    if scene.truth is not None:
        return score_on_truth_grid(scene, scene.on_truth_grid(heights))
    heights = np.where(scene.valid, heights, np.nan)
    return {"reshade_r": reshading_correlation(scene.image, heights, scene.pixel_size_m,
                                               *scene.sun, scene.valid),
            "mean_slope_deg": float(np.nanmean(slope_deg(heights, scene.pixel_size_m)))}


def score_on_truth_grid(scene: Scene, pred: np.ndarray) -> dict[str, float]:
    rows = scene_metrics(pred, scene.truth, scene.truth_pixel_m, scene.tile, scene.scored())
    if not rows:
        return {"tiles": 0}
    tilt = scene_tilt_error_deg(pred, scene.truth, scene.scored(), scene.truth_pixel_m)
    return {"tiles": len(rows), **{k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]},
            "scene_tilt_err_deg": tilt}


def scene_tilt_error_deg(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray,
                         pixel_size_m: float) -> float:
    """Slope (degrees) of the plane by which ``pred``'s best-fit plane over the whole scene
    differs from ``truth``'s; for a flat prediction, the truth's own regional slope."""
    fitted = valid & np.isfinite(pred) & np.isfinite(truth)
    rows, cols = np.nonzero(fitted)
    if rows.size < 3 or np.linalg.det(np.cov(cols, rows)) <= 1e-9:
        return math.nan  # no plane through pixels on one line
    _, d_col, d_row = plane_fit(pred, fitted) - plane_fit(truth, fitted)
    return math.degrees(math.atan(math.hypot(d_col, d_row) / pixel_size_m))


def truth_without_scene_tilt(scene: Scene) -> np.ndarray:
    """The truth less its best-fit plane over the whole scene: what a method that is right
    about everything but the scene's tilt, which the image does not show, would return."""
    return scene.truth - _plane(scene.truth, scene.scored())


def with_true_scene_tilt(heights: np.ndarray, scene: Scene) -> np.ndarray:
    """``heights`` with their best-fit plane over the whole scene swapped for the truth's.

    A control, not a method: a tilt shared by the whole scene changes every pixel's brightness
    alike, so in an image scaled by its own mean it looks, to first order, like a brighter or
    darker surface; this row shows what each method gets right apart from it.
    """
    pred = scene.on_truth_grid(heights)
    fitted = scene.scored() & np.isfinite(pred)
    a, b, c = plane_fit(scene.truth, fitted) - plane_fit(pred, fitted)
    # Image pixel (row, col) lies at ((row, col) - (factor - 1) / 2) / factor on the truth grid.
    rows, cols = (np.indices(heights.shape) - (scene.factor - 1) / 2) / scene.factor
    return heights + a + b * cols + c * rows


def average(rows: list[dict]) -> dict[str, float]:
    """Mean over scenes, weighting metrics by each scene's number of tiles; a scene without a
    value for a metric (a relief ratio of flat truth, say) is left out of that metric."""
    keys = dict.fromkeys(k for r in rows for k in r if k != "tiles")
    weights = np.array([r.get("tiles", 1) for r in rows], float)
    out = {}
    for key in keys:
        values = np.array([r.get(key, np.nan) for r in rows], float)
        kept = np.isfinite(values) & (weights > 0)
        out[key] = float(np.average(values[kept], weights=weights[kept])) if kept.any() \
            else math.nan
    if any("tiles" in r for r in rows):
        out["tiles"] = int(weights.sum())
    return out


def difference_interval(rows: list[dict], other_rows: list[dict], key: str, seed: int,
                        groups: list | None = None,
                        resamples: int = 2000) -> tuple[float, float, float, int] | None:
    """Mean of ``key`` in ``rows`` less in ``other_rows`` (a baseline's or another model's;
    scene by scene, weighted by tiles as ``average`` does), its 95 % paired bootstrap
    interval, and how many scenes (or groups) were drawn from.

    What is drawn with replacement is each scene, or each of ``groups`` (one label per scene:
    the scenes that share one are drawn together); None with fewer than
    ``INTERVAL_MIN_SCENES`` of them scored by both.
    """
    a, b = (np.array([r.get(key, np.nan) for r in x], float) for x in (rows, other_rows))
    weights, other_weights = (np.array([r.get("tiles", 1) for r in x], float)
                                 for x in (rows, other_rows))
    # Paired: a scene counts where both were scored on the same number of its tiles.
    kept = np.isfinite(a) & np.isfinite(b) & (weights > 0) & (weights == other_weights)
    group = np.arange(kept.sum()) if groups is None else \
        np.unique(np.asarray(groups, str)[kept], return_inverse=True)[1]
    if group.size == 0 or group.max() + 1 < INTERVAL_MIN_SCENES:
        return None
    weighted = np.bincount(group, ((a - b) * weights)[kept])  # per drawn unit
    weights = np.bincount(group, weights[kept])
    picks = np.random.default_rng(seed).integers(0, len(weights), (resamples, len(weights)))
    means = weighted[picks].sum(1) / weights[picks].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(weighted.sum() / weights.sum()), float(low), float(high), len(weights)


def intervals(by_method: dict[str, list[dict]], model: str, seed: int,
              groups: list | None, against: Iterable[str]) -> dict:
    """{other method: {metric: (difference, low, high, count drawn)}} for ``model`` against
    each of ``against``, where there are enough scenes (or ``groups``)."""
    found = {}
    for name in against:
        cells = {key: difference_interval(by_method[model], by_method[name], key, seed, groups)
                 for key in INTERVAL_KEYS}
        if any(cells.values()):
            found[name] = cells
    return found


def evaluate(models: dict[str, Path], data: Path, out: Path, seed: int,
             sets: list[str], speed: bool = True, roughness_px: float = 0.0,
             tilt_control: bool = False, test_shards: Path | None = None,
             louth_suns: int = 1, reference_factor: int = 0) -> dict:
    """All metrics: {set: {method: averaged metrics}} plus per-scene details and figures.

    ``roughness_px`` > 0 adds a control row: the first model's heights plus white noise of
    that many pixel sizes (seeded), to show which metrics reward mere roughness.
    ``tilt_control`` adds rows for the first model and both baselines with the true scene
    tilt (``with_true_scene_tilt``) on the sets with truth, and one for the truth without its
    scene tilt (``truth_without_scene_tilt``): what being right but for that tilt scores.
    ``test_shards`` is the folder the ``pairs`` set reads; ``louth_suns`` how many suns each
    Louth crop is rendered under. ``reference_factor`` > 0 adds a row for the first model given
    a reference DTM: the truth averaged over that many of its cells on a side.
    """
    first, *more = models
    others = [*BASELINES, *more]  # what the first model's lead is measured against
    control = f"{first}+noise{roughness_px:g}px" if roughness_px > 0 else None
    tilted = [first, *BASELINES] if tilt_control else []
    referenced = f"{first}{REFERENCE_SUFFIX.format(reference_factor)}" \
        if reference_factor > 0 else None
    controls = ([control] if control else []) + [f"{name}{TILT_SUFFIX}" for name in tilted] \
        + ([DETILTED_TRUTH] if tilt_control else []) \
        + ([referenced, REFERENCE_ALONE.format(reference_factor)] if referenced else [])
    results: dict = {"sets": {}, "notes": {}, "speed": {}, "controls": controls,
                     "intervals": {}, "interval_model": first, "reference_factor": reference_factor,
                     "scenes": {}}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        drawn_figures = Path(tmp) / "figures"
        drawn_figures.mkdir()
        for set_name in sets:
            if set_name == "pairs":
                scenes = pair_scenes(test_shards, Path(tmp))
            elif set_name == "louth":
                scenes = louth_scenes(data, seed, louth_suns)
            else:
                scenes = TEST_SETS[set_name](data, seed)
            by_method: dict[str, list[dict]] = {}
            figure_rows, notes = [], []
            for index, scene in enumerate(scenes):
                row = {"scene": scene}
                for name, heights in _methods(scene, models, Path(tmp)):
                    by_method.setdefault(name, []).append(score(scene, heights))
                    row[name] = heights
                if control:
                    rng = np.random.default_rng([seed, index])
                    noise = rng.normal(0.0, roughness_px * scene.pixel_size_m, row[first].shape)
                    by_method.setdefault(control, []).append(score(scene, row[first] + noise))
                for name, scores in _tilt_controls(scene, row, tilted):
                    by_method.setdefault(name, []).append(scores)
                if referenced and scene.truth is not None:
                    coarser = coarser_truth(scene, reference_factor)
                    reference = write_reference(scene, coarser, reference_factor, Path(tmp))
                    heights, _ = predict(models[first], scene, Path(tmp), reference=reference)
                    reference.unlink()
                    by_method.setdefault(referenced, []).append(score(scene, heights))
                    by_method.setdefault(REFERENCE_ALONE.format(reference_factor), []).append(
                        score(scene, reference_alone(scene, coarser, reference_factor)))
                if index < FIGURE_SCENES:
                    figure_rows.append(row)
                notes.append(scene.notes)
            if not notes:
                note = f"skipped: its data in {set_source(set_name)} is absent or incomplete"
                print(f"{set_name}: {note}", file=sys.stderr)
                results["notes"][set_name] = note
                continue
            results["sets"][set_name] = {m: average(r) for m, r in by_method.items()}
            pairs = [n["pair"] for n in notes] if set_name == "pairs" else None
            count = results["scenes"][set_name] = len(set(pairs)) if pairs else len(notes)
            if found := intervals(by_method, first, seed, pairs, others):
                drawn = f"{count} {'pairs' if pairs else 'scenes'}"
                results["intervals"][set_name] = {"drawn": drawn, "count": count,
                                                  "against": found}
            results["notes"][set_name] = _set_note(notes)
            figures(set_name, figure_rows, first, drawn_figures)
        if speed and results["sets"]:
            results["speed"] = measure_speed(models[first], Path(tmp))
        if results["sets"]:
            _replace_figures(drawn_figures, out)
    return results


def _replace_figures(drawn: Path, out: Path) -> None:
    """Swaps the figures of an earlier report in ``out`` for this run's, so that none of a set
    left out this time stays beside the new report; a run that fails touches none."""
    for set_name in ALL_SETS:
        (out / f"{set_name}.png").unlink(missing_ok=True)
    for figure in drawn.iterdir():
        figure.replace(out / figure.name)


def _tilt_controls(scene: Scene, row: dict[str, np.ndarray],
                   tilted: list[str]) -> Iterator[tuple[str, dict]]:
    """Scores of the ``tilted`` methods with the true scene tilt, and of the truth without it."""
    if scene.truth is None or not tilted:
        return
    for name in tilted:
        yield f"{name}{TILT_SUFFIX}", score(scene, with_true_scene_tilt(row[name], scene))
    yield DETILTED_TRUTH, score_on_truth_grid(scene, truth_without_scene_tilt(scene))


def _methods(scene: Scene, models: dict[str, Path],
             workdir: Path) -> Iterable[tuple[str, np.ndarray]]:
    """(name, heights) of the baselines and of each model on ``scene``."""
    for name in BASELINES:
        yield name, baseline(name, scene)
    for name, path in models.items():
        yield name, predict(path, scene, workdir)[0]


def _set_note(notes: list[dict]) -> str:
    if pairs := {n["pair"] for n in notes if "pair" in n}:
        sizes = " or ".join(sorted({n["size"] for n in notes}))
        tiles = " or ".join(sorted({str(n["tile"]) for n in notes}))
        return (f"{len(notes)} patch(es) of {sizes} px from {len(pairs)} pair(s) in "
                f"{notes[0]['shards']}, each scored on tiles of {tiles} px from its top-left "
                "corner")
    suns = [n["sun"] for n in notes if "sun" in n]
    return f"{len(notes)} scene(s)" + (f"; sun {suns[0]}" if suns else "")


def measure_speed(model: Path, workdir: Path, side: int = 2048) -> dict[str, float]:
    """Engine throughput on a synthetic ``side`` x ``side`` scene, CPU, 2 threads."""
    from training import synth

    rng = np.random.default_rng(0)
    dem = synth.synthetic_dem(rng, side)
    image = synth.render(dem, 1.0, 270.0, 30.0, rng)
    path = write_geotiff(workdir / "speed.tif", image, (0, 1.0, 0, 0, 0, -1.0))
    scene = Scene("speed", path, image, np.ones(image.shape, bool), 1.0, (270.0, 30.0))
    seconds = min(predict(model, scene, workdir)[1] for _ in range(2))
    return {"megapixels": side * side / 1e6, "seconds": seconds,
            "mp_per_s": side * side / 1e6 / seconds, "network_mp_per_s": network_speed(model)}


def network_speed(model: Path, threads: int = 2, repeats: int = 5) -> float:
    """Megapixels per second of the bare network: batches of four 256 x 256 tiles."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).normal(size=(4, 1, 256, 256)).astype(np.float32)
    session.run(None, {"image": batch})
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {"image": batch})
        best = min(best, time.perf_counter() - started)
    return batch.size / 1e6 / best


def _model_argument(value: str) -> tuple[str, Path]:
    """NAME=FILE, or FILE; either may hold "=" (a sweep's lr=0.001/model.onnx): the first "="
    after which a file lies splits them."""
    if Path(value).exists():
        return "", Path(value)
    for at in (i for i, char in enumerate(value) if char == "="):
        if Path(value[at + 1:]).is_file():
            return value[:at], Path(value[at + 1:])
    name, _, path = value.rpartition("=")
    return name, Path(path)


def _parse_models(values: list[str]) -> dict[str, Path]:
    from mars_dtm_plugin.core.errors import DtmError
    from mars_dtm_plugin.core.model import load_contract

    models = {}
    for value in values:
        name, path = _model_argument(value)
        name = name or path.stem
        if path.is_dir():
            raise ValueError(f"the model file {path} is a folder")
        if not path.is_file():  # where it splits is a guess: the whole value is said
            raise ValueError(f"the model file {value} does not exist (give FILE or NAME=FILE)")
        if name in models or name in (*BASELINES, DETILTED_TRUTH):
            raise ValueError(f"the model name '{name}' is taken; name each model NAME=FILE")
        try:  # before any test data is made: a checkpoint given for its ONNX export, say
            load_contract(path)
        except DtmError as exc:
            raise ValueError(f"{path} is not a model the engine can run: {exc}") from exc
        models[name] = path
    return models


PAIR_KEYS = ("pair_id", "geotransform", "crs_wkt", "pixel_size_m", "north_deg",
             "sun_azimuth_deg", "sun_elevation_deg")
"""What ``pair_scenes`` reads from each patch's provenance (``training.tiles`` writes them)."""


def _check_test_shards(folder: Path | None, wanted: bool) -> None:
    """Refuse, before anything runs, a shard folder the pairs set could not score through."""
    from mars_dtm_plugin.core.engine import MIN_SIDE_PX

    if wanted != (folder is not None):
        raise ValueError("the pairs set needs --test-shards DIR (training.tiles' test split)"
                         if wanted else "--test-shards is given but --sets leaves out pairs")
    if folder is None:
        return
    if not folder.is_dir():
        raise ValueError(f"the test shard folder {folder} does not exist")
    # The first patch of every shard: splits are cut whole, one patch size to a run.
    firsts = [(shard, next(read_shard(shard), None)) for shard in sorted(folder.glob("*.tar"))]
    if not firsts or any(patch is None for _, patch in firsts):
        raise ValueError(f"{folder} holds no patches in shards (*.tar); give the folder of a "
                         "split that training.tiles wrote, such as data/patches/test")
    for shard, patch in firsts:
        if missing := [key for key in PAIR_KEYS if key not in patch.meta]:
            raise ValueError(f"the patches in {shard} lack {', '.join(missing)}: give shards "
                             "that training.tiles cut from georeferenced pairs, not a training "
                             "pool")
        if min(patch.image.shape) < MIN_SIDE_PX:
            raise ValueError(f"the patches in {shard} are {patch.image.shape[1]} x "
                             f"{patch.image.shape[0]} px; the engine takes at least "
                             f"{MIN_SIDE_PX} px on a side")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="ONNX model, optionally NAME=PATH; repeat to compare models")
    parser.add_argument("--data", required=True,
                        help="folder for the generated test inputs (made when missing)")
    parser.add_argument("--out", default="runs/eval", help="report folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated test sets")
    parser.add_argument("--sets", help="comma-separated subset of " + ",".join(TEST_SETS)
                        + ",pairs (default: all of them; pairs only with --test-shards)")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the throughput measurement (a 2048 x 2048 scene)")
    parser.add_argument("--roughness-control", type=float, default=0.0, metavar="PX",
                        help="also score the first model plus white noise of PX pixel sizes")
    parser.add_argument("--tilt-control", action="store_true",
                        help="also score the first model and the baselines with each scene's "
                             "tilt taken from the truth (which a mean-scaled image does not show), "
                             "and the truth without that tilt")
    parser.add_argument("--reference-control", type=int, default=0, metavar="N",
                        help="also score the first model given a reference DTM: the truth "
                             "averaged over N x N of its cells")
    parser.add_argument("--louth-suns", type=int, default=1, metavar="N",
                        help="render each of the three Louth crops under N random suns "
                             "(default 1: three scenes)")
    parser.add_argument("--test-shards", type=Path, metavar="DIR",
                        help="shards of held-out real pairs from training.tiles (e.g. "
                             "data/patches/test), scored as the 'pairs' set")
    args = parser.parse_args(argv)
    sets = args.sets.split(",") if args.sets else \
        [*TEST_SETS, *(["pairs"] if args.test_shards else [])]
    try:
        models = _parse_models(args.model)
        if unknown := [s for s in sets if s not in ALL_SETS]:
            raise ValueError(f"unknown test set(s) {', '.join(unknown)}")
        if args.louth_suns < 1:
            raise ValueError(f"--louth-suns {args.louth_suns}: give at least 1 sun per crop")
        _check_test_shards(args.test_shards, "pairs" in sets)
        check_data_folder(Path(args.data), args.seed, sets)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} is a file; give a folder for the report")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started, out_is_new = time.monotonic(), not Path(args.out).exists()
    try:
        results = evaluate(models, Path(args.data), Path(args.out), args.seed, sets,
                           not args.no_speed, args.roughness_control, args.tilt_control,
                           args.test_shards, args.louth_suns, args.reference_control)
    except (UnreadableShard, ModelFailed) as exc:  # found part-way
        print(f"error: {exc}; no report was written", file=sys.stderr)
        return 1
    finally:  # a run that writes no report leaves no empty report folder behind
        if out_is_new and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()
    if not results["sets"]:
        print(f"error: no test set could be evaluated: the data of {', '.join(sets)} is absent "
              "(see above); choose --sets whose data exists", file=sys.stderr)
        return 1
    (Path(args.out) / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    command = " ".join(sys.argv[1:] if argv is None else argv)
    path = write_report(results, list(models), Path(args.out), command)
    print(f"wrote {path} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
