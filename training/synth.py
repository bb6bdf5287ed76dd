"""Synthetic Mars terrain and its rendered images, for training where no real DTM can be had.

    python -m training.synth --out DIR --count N [--seed S] [--size 256] [--pixel-size 1.0]
        [--sun-azimuth DEG] [--azimuth-jitter DEG] [--geotiff]
    python -m training.synth --demo-scene PATH.tif [--seed S]

The first writes WebDataset shards (training.shards) and, with --geotiff, georeferenced image and
DEM pairs; the second writes the built-in sample scene and its true DEM (``<stem>_truth.tif``).
Output is deterministic for a seed. See docs/synthetic-terrain.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.labels import MISSING_CONSTANT
from training.shards import Patch, ShardWriter
from training.synth_render import cast_shadows, cos_incidence, render
from training.synth_terrain import Recipe, build_terrain, random_recipe

__all__ = [
    "MARS_EQUIRECTANGULAR_WKT", "Recipe", "cast_shadows", "cos_incidence", "demo_scene",
    "make_patch", "render", "synthetic_dem",
]

MARS_EQUIRECTANGULAR_WKT = (
    'PROJCS["Mars2000 Equirectangular",'
    'GEOGCS["GCS_Mars_2000_Sphere",'
    'DATUM["D_Mars_2000_Sphere",SPHEROID["Mars_2000_Sphere_IAU_IAG",3396190,0]],'
    'PRIMEM["Reference_Meridian",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Equirectangular"],PARAMETER["standard_parallel_1",0],'
    'PARAMETER["central_meridian",0],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1]]'
)
SUN_ELEVATION_RANGE = (10.0, 60.0)  # HiRISE incidence angles are mostly 30-80 deg
DEMO_SHAPE = (1024, 1536)
DEMO_DATUM_M = -2500.0  # a plausible height above the Mars areoid for the demo truth


def synthetic_dem(rng: np.random.Generator, size: int, pixel_size_m: float = 1.0
                  ) -> np.ndarray:
    """A random Mars-like DEM, float32 (size, size), heights in metres.

    Shapes are drawn in pixel units, so slopes do not depend on ``pixel_size_m``; the mixture
    of landforms (craters, dunes, layers, gullies, ridges, scarps) changes with every call.
    """
    recipe = random_recipe(rng, size)
    return (build_terrain(rng, (size, size), recipe) * pixel_size_m).astype(np.float32)


def _sun(rng: np.random.Generator, azimuth: float | None, jitter: float) -> tuple[float, float]:
    if azimuth is None:
        az = rng.uniform(0.0, 360.0)
    else:
        az = (azimuth + rng.uniform(-jitter, jitter)) % 360.0
    return float(az), float(rng.uniform(*SUN_ELEVATION_RANGE))


def make_patch(seed: int, index: int, size: int = 256, pixel_size_m: float = 1.0,
               sun_azimuth_deg: float | None = None, azimuth_jitter_deg: float = 0.0
               ) -> tuple[Patch, np.ndarray]:
    """Scene ``index`` of the family of ``seed``: its patch and its absolute DEM.

    Each scene has its own generator, seeded by (seed, index), so scenes do not depend on how
    many are made or in which order: shards can be written by parallel workers.
    """
    rng = np.random.default_rng([seed, index])
    az, el = _sun(rng, sun_azimuth_deg, azimuth_jitter_deg)
    dem = synthetic_dem(rng, size, pixel_size_m)
    image = render(dem, pixel_size_m, az, el, rng)
    meta = {
        "pair_id": f"synth-{seed}-{index}", "source": "synthetic", "window": [0, 0, size, size],
        "pixel_size_m": pixel_size_m, "sun_azimuth_deg": az, "sun_elevation_deg": el,
        "crs_wkt": MARS_EQUIRECTANGULAR_WKT, "seed": seed,
    }
    height = (dem - dem.mean(dtype=np.float64)).astype(np.float32)
    return Patch(f"synth-{seed}-{index:07d}", image, height, meta), dem


def write_geotiff(path: Path, array: np.ndarray, geotransform: Sequence[float],
                  wkt: str = MARS_EQUIRECTANGULAR_WKT, metadata: dict | None = None,
                  nodata: float | None = None) -> Path:
    """A one-band GeoTIFF: Byte for uint8 arrays, else Float32."""
    from osgeo import gdal

    kind = gdal.GDT_Byte if array.dtype == np.uint8 else gdal.GDT_Float32
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(str(path), array.shape[1], array.shape[0], 1, kind,
                       options=["COMPRESS=DEFLATE", "TILED=YES"])
    ds.SetGeoTransform(list(geotransform))
    ds.SetProjection(wkt)
    if metadata:
        ds.SetMetadata({k: str(v) for k, v in metadata.items()})
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(array)
    ds = None
    return path


def _patch_geotransform(index: int, size: int, pixel_size_m: float) -> tuple[float, ...]:
    """Scenes on a grid of tiles starting at (0 E, 0 N), so all lie near the equator where the
    equirectangular scale is true."""
    step = size * pixel_size_m
    x0 = (index % 256) * step
    y0 = -(index // 256) * step
    return (x0, pixel_size_m, 0.0, y0, 0.0, -pixel_size_m)


def write_geotiff_pair(directory: Path, patch: Patch, dem: np.ndarray, index: int) -> None:
    meta = patch.meta
    size, pixel = patch.image.shape[0], meta["pixel_size_m"]
    gt = _patch_geotransform(index, size, pixel)
    sun = {"SUN_AZIMUTH": f"{meta['sun_azimuth_deg']:.3f}",
           "SUN_ELEVATION": f"{meta['sun_elevation_deg']:.3f}"}
    write_geotiff(directory / f"{patch.key}_image.tif", patch.image, gt, metadata=sun)
    write_geotiff(directory / f"{patch.key}_dem.tif", dem.astype(np.float32), gt,
                  metadata=sun)


def write_dataset(out: Path, count: int, seed: int = 0, size: int = 256,
                  pixel_size_m: float = 1.0, sun_azimuth_deg: float | None = None,
                  azimuth_jitter_deg: float = 0.0, geotiff: bool = False) -> list[Path]:
    """Write ``count`` scenes as shards under ``out`` (and GeoTIFF pairs under out/geotiff)."""
    out = Path(out)
    pairs = out / "geotiff"
    if geotiff:
        pairs.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, prefix=f"synth-{seed}") as writer:
        for index in range(count):
            patch, dem = make_patch(seed, index, size, pixel_size_m, sun_azimuth_deg,
                                    azimuth_jitter_deg)
            writer.write(patch)
            if geotiff:
                write_geotiff_pair(pairs, patch, dem, index)
    return writer.paths


def demo_recipe() -> Recipe:
    """A scene with something of everything, for the README demo."""
    return Recipe(hurst=0.75, roughness=0.08, regional_slope=0.05, layer_thickness=6.0,
                  layer_riser=0.3, crater_density=0.02, crater_epochs=3, diffusion=2.5,
                  dune_wavelength=30.0, dune_lee_fraction=0.25, dune_cover=0.35,
                  fine_roughness=0.04, max_slope_deg=38.0)


def demo_scene(path: str | Path, seed: int = 7) -> tuple[Path, Path]:
    """Write the sample scene (8-bit GeoTIFF, 1 m) and its true DEM ``<stem>_truth.tif``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2**31])
    az, el = 250.0, 35.0
    dem = build_terrain(rng, DEMO_SHAPE, demo_recipe()).astype(np.float32)
    image = render(dem, 1.0, az, el, rng)
    image = np.maximum(image, 1)  # 0 is reserved for nodata
    rows, cols = np.ogrid[0:DEMO_SHAPE[0], 0:DEMO_SHAPE[1]]
    corner = rows + cols < 24  # a few unimaged pixels at the north-west corner
    image[corner] = 0
    truth = dem + np.float32(DEMO_DATUM_M)
    truth[corner] = MISSING_CONSTANT
    width = DEMO_SHAPE[1]
    gt = (-width / 2.0, 1.0, 0.0, DEMO_SHAPE[0] / 2.0, 0.0, -1.0)  # centred on 0 N, 0 E
    sun = {"SUN_AZIMUTH": f"{az:.1f}", "SUN_ELEVATION": f"{el:.1f}"}
    write_geotiff(path, image, gt, metadata=sun, nodata=0)
    truth_path = path.with_name(f"{path.stem}_truth.tif")
    write_geotiff(truth_path, truth, gt, metadata=sun, nodata=MISSING_CONSTANT)
    return path, truth_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for the shards")
    p.add_argument("--count", type=int, default=0, help="number of scenes")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0; demo 7)")
    p.add_argument("--size", type=int, default=256, help="patch side in pixels")
    p.add_argument("--pixel-size", type=float, default=1.0, help="metres per pixel")
    p.add_argument("--sun-azimuth", type=float, default=None,
                   help="centre of the sun azimuth (deg from north, clockwise); default random")
    p.add_argument("--azimuth-jitter", type=float, default=0.0,
                   help="uniform jitter (deg) around --sun-azimuth")
    p.add_argument("--geotiff", action="store_true",
                   help="also write GeoTIFF image/DEM pairs under OUT/geotiff")
    p.add_argument("--demo-scene", type=Path, help="write the sample scene to this GeoTIFF")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.demo_scene:
        image, truth = demo_scene(args.demo_scene, 7 if args.seed is None else args.seed)
        print(f"wrote {image} and {truth}")
        return 0
    if args.out is None or args.count <= 0:
        _parser().error("give --out and a positive --count, or --demo-scene")
    paths = write_dataset(args.out, args.count, args.seed or 0, args.size, args.pixel_size,
                          args.sun_azimuth, args.azimuth_jitter, args.geotiff)
    print(f"wrote {args.count} scenes in {len(paths)} shard(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
