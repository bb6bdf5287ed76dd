"""How much a DTM depends on where the tiles fall.

    python -m bench.crop_consistency [--model M.onnx] [--shift PX] [--overlap PX]

Mosaics the 24 real HiRISE tiles of ``../shared/data/hirise_tiles`` (6 x 4 tiles, 3072 x 2048
px, placed at 1 m; sun 270 degrees, elevation 40), predicts it once as it is and once cropped by
``--shift`` pixels at the top and left, and compares the two DTMs where both have them, more
than 300 px from every edge. A pixel's height should not depend on how the scene was cropped;
each line gives, for one band of scales (what a Gaussian of the smaller width keeps and one of
the larger smooths away), the correlation of the two DTMs there. A shift of one tile stride
(the tile less the overlap) lays the grid onto itself: that line is the control, near 1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal
from scipy import ndimage

from mars_dtm_plugin.core.engine import PredictOptions, default_model_path, predict_dtm
from mars_dtm_plugin.core.model import Generator
from tests.rasters import write_raster

TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hirise_tiles"
BANDS_PX = ((1, 4), (4, 16), (16, 64), (64, 256))
BORDER_PX = 300


def mosaic(path: Path) -> Path:
    tiles = [gdal.Open(str(p)).ReadAsArray() for p in sorted(TILES.glob("hirise_tile_*.jpg"))]
    rows = [np.hstack(tiles[i : i + 6]) for i in range(0, 24, 6)]
    return write_raster(path, np.vstack(rows).astype(np.uint8), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def band(heights: np.ndarray, fine: float, coarse: float) -> np.ndarray:
    return ndimage.gaussian_filter(heights, fine) - ndimage.gaussian_filter(heights, coarse)


def predict(source: Path, out: Path, model: str, overlap: int | None,
            crop: int = 0) -> np.ndarray:
    if crop:
        cropped = out.with_name(f"crop{crop}.vrt")
        gdal.Translate(str(cropped), str(source), format="VRT", srcWin=[
            crop, crop, gdal.Open(str(source)).RasterXSize - crop,
            gdal.Open(str(source)).RasterYSize - crop])
        source = cropped
    predict_dtm(str(source), str(out), PredictOptions(
        model_path=model, overlap_px=overlap, sun_azimuth=270.0, sun_elevation=40.0))
    return gdal.Open(str(out)).ReadAsArray().astype(np.float64)


def correlations(whole: np.ndarray, cropped: np.ndarray, shift: int) -> list[float]:
    a = whole[shift:, shift:]
    inside = (slice(BORDER_PX, -BORDER_PX),) * 2
    return [float(np.corrcoef(band(a, *scales)[inside].ravel(),
                              band(cropped, *scales)[inside].ravel())[0, 1])
            for scales in BANDS_PX]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crop_consistency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--shift", type=int, help="default: half a tile stride")
    parser.add_argument("--overlap", type=int, help="tile overlap in px (default: the model's)")
    args = parser.parse_args(argv)
    if not TILES.is_dir():
        print(f"skipped: {TILES} is absent")
        return 0
    contract = Generator(args.model).contract
    overlap = args.overlap if args.overlap is not None else round(
        contract.tile_size * contract.tiles_overlap / 100)
    stride = contract.tile_size - overlap
    shifts = [args.shift or stride // 2, stride]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = mosaic(work / "mosaic.tif")
        whole = predict(source, work / "whole.tif", args.model, args.overlap)
        print(f"tiles of {contract.tile_size} px, overlap {overlap} px, stride {stride} px")
        print("shift (px) | " + " | ".join(f"{a}-{b} px" for a, b in BANDS_PX))
        for shift in shifts:
            cropped = predict(source, work / f"shift{shift}.tif", args.model, args.overlap,
                              shift)
            label = f"{shift} (control)" if shift == stride else str(shift)
            print(f"{label} | " + " | ".join(f"{r:.2f}" for r in
                                             correlations(whole, cropped, shift)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
