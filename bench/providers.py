"""Model calls on each execution provider, against the CPU in the same run.

    python -m bench.providers [--model M.onnx] [--batches 4 16 64] [--tiles 64] [--repeats 3]

Times ``Generator.run``, the engine's model calls, on the same tiles with the CPU and, where
this onnxruntime has CUDA and it starts, the GPU. Reading, stitching and writing are left
out (``bench.throughput`` measures the whole pipeline on the CPU). Prints megapixels per
second for each tile batch size, the GPU's speed over the CPU's, and the largest difference
between their heights, in the model's units (pixel sizes) and against the heights' spread: a
GPU's convolutions round differently.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.model import Generator

from . import at_least, existing_file
from .models import benchmark_model


def tiles(count: int, size: int) -> np.ndarray:
    """Tiles of smooth shading and noise around 0, of the model's input size (made up, not
    an image's)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((count, size, size), np.float32)
    for i in range(count):
        fx, fy, phase = rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(0, 6)
        out[i] = np.sin(xx / fx + phase) * np.cos(yy / fy) + rng.normal(0, 0.3, (size, size))
    return out


def heights(generator: Generator, data: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([generator.run(data[start : start + batch])
                           for start in range(0, len(data), batch)])


def seconds(generator: Generator, data: np.ndarray, batch: int, repeats: int) -> float:
    """Best time of ``repeats`` passes over ``data`` in calls of ``batch`` tiles."""
    heights(generator, data, batch)  # outside the clock: warm, with every shape's kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        heights(generator, data, batch)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=existing_file,
                        help="ONNX model (default: bundled or stand-in)")
    parser.add_argument("--batches", type=at_least(1), nargs="+", default=[4, 16, 64],
                        help="tiles per model call")
    parser.add_argument("--tiles", type=at_least(1), default=64, help="tiles per pass")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    args = parser.parse_args()
    if max(args.batches) > args.tiles:
        parser.error(f"--tiles {args.tiles} is fewer than a batch of {max(args.batches)}")
    with tempfile.TemporaryDirectory() as tmp:
        model, label = (args.model, str(args.model)) if args.model else benchmark_model(Path(tmp))
        generators = {"cpu": Generator(model, "cpu")}
        try:
            generators["cuda"] = Generator(model, "cuda")
        except DtmError as exc:
            print(f"no GPU run: {exc}")
        size = generators["cpu"].contract.tile_size
        data = tiles(args.tiles, size)
        megapixels = data.size / 1e6
        print(f"model: {label}; {args.tiles} tiles of {size} px; best of {args.repeats}")
        for batch in args.batches:
            rates = {name: megapixels / seconds(g, data, batch, args.repeats)
                     for name, g in generators.items()}
            print(f"batch {batch:3d}: " + ", ".join(f"{name} {rate:7.2f} tile MP/s"
                                                   for name, rate in rates.items())
                  + (f"; cuda / cpu {rates['cuda'] / rates['cpu']:.1f}x" if "cuda" in rates
                     else ""))
        if "cuda" in generators:
            cpu, gpu = (heights(generators[name], data, args.batches[0])
                        for name in ("cpu", "cuda"))
            largest = float(np.abs(gpu - cpu).max())
            print(f"largest |cuda - cpu| height: {largest:.3g} pixel sizes "
                  f"({largest / float(cpu.std()):.2g} of the heights' standard deviation)")


if __name__ == "__main__":
    main()
