"""How much a DTM depends on where the tiles fall.

    python -m bench.crop_consistency [--model M.onnx] [--shift PX] [--overlap PX]

Mosaics the 24 real HiRISE tiles of the real-data folder's ``hirise_tiles`` (docs/data.md; 6 x 4
tiles of 512 px, placed at 1 m; sun 270 degrees, elevation 40), trimmed so that the engine's tiles
fall a whole stride (the tile less the overlap) apart, predicts it once as it is and once cropped
by ``--shift`` pixels at the top and left, and compares the two DTMs where both have them, more
than 300 px from every edge. A pixel's height should not depend on how the scene was cropped; each
line gives, for one band of scales (what a Gaussian of the smaller width keeps and one of the
larger smooths away), the correlation of the two DTMs there. A shift of one stride lays the grid
onto itself: that line is the control, near 1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal
from scipy import ndimage

from mars_dtm_plugin.core.engine import (
    EDGE_MARGIN,
    PredictOptions,
    default_model_path,
    predict_dtm,
)
from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.model import Generator
from mars_dtm_plugin.core.tiling import axis_spans
from tests.rasters import write_raster
from training.evaluate import DATA_DIR

from . import at_least, existing_file

TILES = DATA_DIR / "hirise_tiles"
BANDS_PX = ((1, 4), (4, 16), (16, 64), (64, 256))
BORDER_PX = 300


def mosaic(path: Path, size: int, overlap: int) -> Path:
    tiles = [gdal.Open(str(p)).ReadAsArray() for p in sorted(TILES.glob("hirise_tile_*.jpg"))]
    image = np.vstack([np.hstack(tiles[i : i + 6]) for i in range(0, 24, 6)])
    rows, cols = (on_whole_strides(n, size, overlap) for n in image.shape)
    return write_raster(path, image[:rows, :cols].astype(np.uint8),
                        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def on_whole_strides(length: int, size: int, overlap: int) -> int:
    """The longest side up to ``length`` whose tiles lie a whole stride apart, so that a crop
    of one stride gives the same tiles, one fewer (the engine spreads any slack between them)."""
    margin = round(size * EDGE_MARGIN)
    edge, stride = size - margin, size - overlap
    return length - (length - 2 * edge + overlap) % stride


def band(heights: np.ndarray, fine: float, coarse: float) -> np.ndarray:
    return ndimage.gaussian_filter(heights, fine) - ndimage.gaussian_filter(heights, coarse)


def predict(source: Path, out: Path, model: str, overlap: int | None,
            crop: int = 0) -> np.ndarray:
    if crop:
        image, cropped = gdal.Open(str(source)), out.with_name(f"crop{crop}.vrt")
        gdal.Translate(str(cropped), image, format="VRT",
                       srcWin=[crop, crop, image.RasterXSize - crop, image.RasterYSize - crop])
        source = cropped
    predict_dtm(str(source), str(out), PredictOptions(
        model_path=model, overlap_px=overlap, sun_azimuth=270.0, sun_elevation=40.0))
    return gdal.Open(str(out)).ReadAsArray().astype(np.float64)


def same_grid(length: int, size: int, overlap: int, shift: int) -> bool:
    margin = round(size * EDGE_MARGIN)
    whole = axis_spans(length, size, overlap, margin)
    cropped = axis_spans(length - shift, size, overlap, margin)
    return [(start - shift, width) for start, width in whole[2:-1]] == cropped[1:-1]


def correlations(whole: np.ndarray, cropped: np.ndarray, shift: int) -> list[float]:
    a = whole[shift:, shift:]
    inside = (slice(BORDER_PX, -BORDER_PX),) * 2
    return [float(np.corrcoef(band(a, *scales)[inside].ravel(),
                              band(cropped, *scales)[inside].ravel())[0, 1])
            for scales in BANDS_PX]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crop_consistency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=existing_file, default=default_model_path())
    parser.add_argument("--shift", type=at_least(1), help="default: half a tile stride")
    parser.add_argument("--overlap", type=at_least(1),
                        help="tile overlap in px (default: the model's)")
    args = parser.parse_args(argv)
    if not TILES.is_dir():
        print(f"skipped: {TILES} is absent")
        return 0
    contract = Generator(args.model).contract
    overlap = args.overlap if args.overlap is not None else round(
        contract.tile_size * contract.tiles_overlap / 100)
    stride = contract.tile_size - overlap
    if args.shift is not None and args.shift >= contract.tile_size:
        parser.error(f"--shift must be below the model's tile size, {contract.tile_size} px")
    shifts = [stride // 2 if args.shift is None else args.shift, stride]
    try:
        measure(args, contract.tile_size, overlap, shifts)
    except DtmError as exc:  # an overlap the engine refuses for this model, say
        parser.exit(1, f"error: {exc}\n")
    return 0


def measure(args: argparse.Namespace, tile_size: int, overlap: int, shifts: list[int]) -> None:
    """Print the correlations of the whole mosaic's DTM with each shifted crop's."""
    stride = tile_size - overlap
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = mosaic(work / "mosaic.tif", tile_size, overlap)
        side = gdal.Open(str(source))
        sides = (side.RasterXSize, side.RasterYSize)
        assert all(same_grid(n, tile_size, overlap, stride) for n in sides)
        whole = predict(source, work / "whole.tif", args.model, args.overlap)
        print(f"{sides[0]} x {sides[1]} px; tiles of {tile_size} px, overlap "
              f"{overlap} px, stride {stride} px")
        print("shift (px) | " + " | ".join(f"{a}-{b} px" for a, b in BANDS_PX))
        for shift in shifts:
            cropped = predict(source, work / f"shift{shift}.tif", args.model, args.overlap,
                              shift)
            label = f"{shift} (control)" if shift == stride else str(shift)
            print(f"{label} | " + " | ".join(f"{r:.2f}" for r in
                                             correlations(whole, cropped, shift)))


if __name__ == "__main__":
    raise SystemExit(main())
