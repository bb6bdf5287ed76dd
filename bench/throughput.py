"""Pipeline throughput against bare onnxruntime on the same model and as many tiles (random input).

    python -m bench.throughput [--size 2048] [--model M.onnx] [--reference-pixels 64]
        [--sun-azimuth 315] [--jp2]

The ratio (bare time / pipeline time) is what counts: both are measured in the same run, so
the machine's speed and noise cancel. The target is at least 0.85. Runs after the first reuse
the loaded model, as a batch of scenes does; the first run, which also loads it, is reported
on its own line. ``--jp2`` also times the same scene as a lossless GeoJP2, the format of HiRISE
orthoimages, in turn with the GeoTIFF, and gives the ratio of their times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

from mars_dtm_plugin.core.engine import (
    MIN_SIDE_PX,
    PredictOptions,
    default_batch_size,
    predict_dtm,
)
from mars_dtm_plugin.core.model import Generator
from tests.rasters import write_raster

from . import at_least, existing_file
from .models import benchmark_model


def scene(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    image = 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 10, (size, size))
    return write_raster(path, np.clip(image, 0, 255).astype(np.uint8),
                        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def as_jp2(source: Path, path: Path) -> Path:
    """``source`` as a lossless GeoJP2 (GDAL's default tiles of 1024 px)."""
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        str(path), gdal.Open(str(source)), options=["REVERSIBLE=YES", "QUALITY=100"])
    return path


def reference(path: Path, size: int, pixels: int) -> Path:
    """A plane on a grid of ``pixels`` times the scene's pixel, a pixel beyond it all round."""
    cells = -(-size // pixels) + 2
    yy, xx = np.mgrid[0:cells, 0:cells]
    return write_raster(path, (500 + 3.0 * xx - 2.0 * yy).astype(np.float32),
                        (-pixels, pixels, 0.0, pixels, 0.0, -pixels))


def bare_seconds(model: Path, tiles: int, batch: int, threads: int | None) -> float:
    generator = Generator(model, "cpu", threads)
    size = generator.contract.tile_size
    data = np.random.default_rng(1).normal(size=(batch, size, size)).astype(np.float32)
    generator.run(data)  # outside the clock: a warm session, as in later pipeline runs
    started = time.perf_counter()
    for start in range(0, tiles, batch):
        generator.run(data[: min(batch, tiles - start)])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=at_least(MIN_SIDE_PX), default=2048,
                        help="scene side in pixels")
    parser.add_argument("--model", type=existing_file,
                        help="ONNX model (default: bundled or stand-in)")
    parser.add_argument("--batch", type=at_least(1), default=None,
                        help="tiles per model call (default: the engine's)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="onnxruntime threads")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--reference-pixels", type=at_least(1), default=None, metavar="N",
                        help="give the run a reference DTM with pixels N times the scene's")
    parser.add_argument("--sun-azimuth", type=float, default=None, metavar="DEG",
                        help="sun azimuth of the scene (default: the model's canonical one, "
                             "which needs no turn; 315 turns the scene by the most)")
    parser.add_argument("--jp2", action="store_true",
                        help="also time the scene as a lossless GeoJP2, in turn with the GeoTIFF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, label = (args.model, str(args.model)) if args.model else benchmark_model(work)
        source = scene(work / "scene.tif", args.size)
        contract = Generator(model, "cpu").contract
        batch = args.batch or default_batch_size(contract.tile_size)
        given = args.reference_pixels and reference(work / "reference.tif", args.size,
                                                    args.reference_pixels)
        sun = contract.sun_azimuth if args.sun_azimuth is None else args.sun_azimuth
        options = PredictOptions(model_path=str(model), provider="cpu", sun_azimuth=sun,
                                 batch_size=batch, threads=args.threads,
                                 reference_dtm=given and str(given))
        jp2 = args.jp2 and as_jp2(source, work / "scene.jp2")
        pipeline, bare, from_jp2, stages = [], [], [], {}
        for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit both
            started = time.perf_counter()
            report = predict_dtm(str(source), str(work / "dtm.tif"), options)
            pipeline.append(time.perf_counter() - started)
            if jp2:
                started = time.perf_counter()
                predict_dtm(str(jp2), str(work / "dtm.tif"), options)
                from_jp2.append(time.perf_counter() - started)
            if pipeline[-1] == min(pipeline):
                stages = report.timings
            # As many tiles as the run laid out (more where it turned the scene to the sun).
            tiles = report.tiles
            bare.append(bare_seconds(model, tiles, batch, args.threads))
    megapixels = args.size**2 / 1e6
    best_pipeline, best_bare = min(pipeline), min(bare)
    print(f"model: {label} (version {contract.version}); scene {args.size} x {args.size}; "
          f"sun azimuth {sun:g} degrees; {tiles} tiles of {contract.tile_size} px; "
          f"batch {batch}; best of {args.repeats}")
    print(f"bare onnxruntime: {best_bare:7.2f} s  {megapixels / best_bare:6.2f} MP/s")
    print(f"full pipeline:    {best_pipeline:7.2f} s  {megapixels / best_pipeline:6.2f} MP/s")
    print(f"first pipeline run, loading the model too: {pipeline[0]:.2f} s "
          f"({megapixels / pipeline[0]:.2f} MP/s)")
    print(f"pipeline / bare throughput: {best_bare / best_pipeline:.3f} (target >= 0.85)")
    if from_jp2:
        print(f"lossless GeoJP2 input: {min(from_jp2):7.2f} s  "
              f"{megapixels / min(from_jp2):6.2f} MP/s; GeoTIFF time / GeoJP2 time: "
              f"{best_pipeline / min(from_jp2):.3f}")
    print("stages of the best pipeline run: "
          + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items()))


if __name__ == "__main__":
    main()
