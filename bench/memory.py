"""Peak memory against raster size: it must stay flat.

    python -m bench.memory [--sizes 2000 20000]

Each size runs the command line in a fresh process on a generated 8-bit GeoTIFF and reads
that process's own peak resident memory (VmHWM on Linux). The smallest size is the baseline;
the target is that a 20000 x 20000 input stays under 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

from mars_dtm_plugin.core.contract import coarse_pass_arg
from tests.models import write_test_model

from . import at_least, existing_file

ROOT = Path(__file__).resolve().parents[1]
# The run's own peak: Linux's ru_maxrss also keeps the peak of the process it was started
# from (here, the bench, which has just written a scene), so VmHWM is read where it exists.
CHILD = """
import resource, sys
from mars_dtm_plugin.cli import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak_rss_kb", kb)
sys.exit(code)
"""


def write_scene(path: Path, size: int) -> Path:
    """A tiled, compressed 8-bit scene written strip by strip (never whole in memory)."""
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), size, size, 1, gdal.GDT_Byte,
        ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=YES", "NUM_THREADS=ALL_CPUS"])
    ds.SetGeoTransform((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    ds.SetProjection('LOCAL_CS["metres",UNIT["metre",1]]')
    band, rng = ds.GetRasterBand(1), np.random.default_rng(0)
    x = np.arange(size)
    for y0 in range(0, size, 1024):
        y = np.arange(y0, min(size, y0 + 1024))[:, None]
        strip = 128 + 60 * np.sin(x / 53.0) * np.cos(y / 31.0)
        strip += rng.normal(0, 8, strip.shape)
        band.WriteArray(np.clip(strip, 0, 255).astype(np.uint8), 0, y0)
    ds = None
    return path


def peak_rss_mib(scene: Path, model: Path, output: Path, sun_azimuth: float
                 ) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, str(ROOT)])}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "predict", str(scene), str(output), "--model", str(model),
         "--provider", "cpu", "--sun-azimuth", f"{sun_azimuth:g}", "--sun-elevation", "30",
         "--quiet"],
        capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"the run failed: {result.stderr.strip()}")
    kb = int(result.stdout.split("peak_rss_kb")[-1])
    return kb / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=at_least(16), nargs="+", default=[2000, 20000])
    parser.add_argument("--tile-size", type=at_least(16), default=512)
    parser.add_argument("--model", type=existing_file,
                        help="ONNX model to run (default: a 3x3 convolution, fast)")
    parser.add_argument("--coarse-pass", type=coarse_pass_arg, metavar="FACTORxSIGMA",
                        help="the 3x3 convolution asks for this coarse pass (e.g. 2x48, the "
                             "bundled model's)")
    parser.add_argument("--sun-azimuth", type=float, default=270.0, metavar="DEG",
                        help="the scene's sun (default 270, the stand-in model's, which needs "
                             "no turn; 315 turns the scene whole by 45 degrees)")
    args = parser.parse_args()
    if args.model and args.coarse_pass:
        parser.error("--coarse-pass is the stand-in model's; a --model has its own")
    with tempfile.TemporaryDirectory(dir=ROOT / "build" if (ROOT / "build").is_dir() else None
                                     ) as tmp:
        work = Path(tmp)
        model = args.model or write_test_model(work / "conv.onnx", "conv",
                                               tile_size=args.tile_size,
                                               coarse_pass=args.coarse_pass,
                                               sun_mode="rotate", sun_azimuth=270.0)
        rows = []
        for size in sorted(args.sizes):
            scene = write_scene(work / f"scene_{size}.tif", size)
            rss, seconds = peak_rss_mib(scene, model, work / f"dtm_{size}.tif",
                                        args.sun_azimuth)
            rows.append((size, rss, seconds))
            made = gdal.Open(str(work / f"dtm_{size}.tif"))
            passes, sun = (made.GetMetadataItem(f"MARSDTM_{key}")
                           for key in ("COARSE_PASS", "SUN_AZIMUTH"))
            made = None
            scene.unlink()
            (work / f"dtm_{size}.tif").unlink()
    base = rows[0][1]
    print(f"model: {args.model}" if args.model else
          f"model: 3x3 convolution, tiles of {args.tile_size} px (memory, not speed, is "
          "measured)" + (", coarse pass of {factor} x {factor} blocks beyond {sigma_px:g} px"
                          .format(**args.coarse_pass) if args.coarse_pass else ""))
    print(f"coarse pass, as the last DTM records it: {passes}")
    print(f"sun azimuth, as the last DTM records it: {sun}"
          + ("" if args.model else " (the stand-in model's own: 270)"))
    print(f"{'size':>12} {'peak RSS':>10} {'vs smallest':>12} {'time':>8}")
    for size, rss, seconds in rows:
        print(f"{size:>5} x {size:<5} {rss:7.0f} MiB {rss / base:11.2f}x {seconds:7.1f} s")
    print("own process peak (driver, not the run):",
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "MiB")


if __name__ == "__main__":
    main()
