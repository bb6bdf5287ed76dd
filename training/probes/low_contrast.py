"""Probe: what the model makes of an image with little contrast.

    python -m training.probes.low_contrast [--image TIF] [--model ONNX] [--sun AZ EL]

Scales the image's brightness about its mean (factors 1 down to 0.01), runs each
through the engine and prints the contrast (standard deviation over mean), the DTM's height
spread, its best-fit plane's slope up towards the sun and its spread about that plane. The
default image is the Karoo pair's 8 m QuickBird scene under the sun of its acquisition time,
as `training.evaluate` scores it. Results: the model card's failure modes ("Little contrast").
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal

from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.raster import InputRaster
from training.evaluate import KAROO_ACQUIRED, plane_fit, set_source, sun_over

FACTORS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.03, 0.01)


def contrast_row(source: gdal.Dataset, factor: float, options: PredictOptions,
                 work: Path) -> dict[str, float]:
    """One scaled copy of ``source`` through the engine; figures of its DTM."""
    band = source.GetRasterBand(1)
    image = band.ReadAsArray().astype(np.float64)
    valid = band.GetMaskBand().ReadAsArray() > 0
    nodata = band.GetNoDataValue()
    mean = image[valid].mean()
    scaled = np.rint(np.clip(mean + factor * (image - mean), 0, 255)).astype(np.uint8)
    if nodata is not None:  # valid pixels stay off the nodata value, nodata ones take it
        scaled[valid & (scaled == nodata)] = nodata + (1 if nodata < 255 else -1)
        scaled[~valid] = nodata
    copy = gdal.GetDriverByName("GTiff").CreateCopy(str(work / "scaled.tif"), source)
    copy.GetRasterBand(1).WriteArray(scaled)
    copy = None
    predict_dtm(str(work / "scaled.tif"), str(work / "dtm.tif"), options)
    out = gdal.Open(str(work / "dtm.tif"))
    dtm = out.GetRasterBand(1).ReadAsArray().astype(np.float64)
    kept = out.GetRasterBand(1).GetMaskBand().ReadAsArray() > 0
    _, per_col, per_row = plane_fit(dtm, kept)
    gt = out.GetGeoTransform()  # north up: the sun's azimuth from north is from image up
    toward_sun = math.radians(options.sun_azimuth)
    rise = (per_col * math.sin(toward_sun) - per_row * math.cos(toward_sun)) / abs(gt[1])
    rows, cols = np.indices(dtm.shape)
    detrended = dtm - (per_col * cols + per_row * rows)
    stored = scaled[valid].astype(np.float64)  # the 8-bit values the run reads
    return {"factor": factor, "contrast": stored.std() / stored.mean(),
            "height_std_m": dtm[kept].std(), "slope_to_sun_deg": math.degrees(math.atan(rise)),
            "detrended_std_m": detrended[kept].std()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    karoo = set_source("karoo")
    parser.add_argument("--image", type=Path,
                        default=karoo / "image_qb2_pan_8m.tif" if karoo else None,
                        help="8-bit one-band north-up georeferenced image (default: Karoo's 8 m "
                             "scene)")
    parser.add_argument("--model", default=None, help="ONNX model (default: the bundled one)")
    parser.add_argument("--sun", type=float, nargs=2, metavar=("AZ", "EL"),
                        help="sun azimuth from north and elevation (default: Karoo's at the "
                             "image's acquisition time)")
    args = parser.parse_args(argv)
    if args.image is None or not args.image.exists():
        parser.error("give --image: the Karoo scene is not in ../shared/data")
    if args.sun is None:
        if args.image != parser.get_default("image"):
            parser.error("give --sun AZ EL for an image other than the Karoo scene")
        in_image, elevation = sun_over(args.image, KAROO_ACQUIRED)
        args.sun = (InputRaster(str(args.image)).georef.north_azimuth(in_image), elevation)
    options = PredictOptions(model_path=args.model, sun_azimuth=args.sun[0],
                             sun_elevation=args.sun[1], provider="cpu")
    source = gdal.Open(str(args.image))
    print("| brightness x | contrast (std / mean) | height std (m) | slope up towards the sun (°) "
          "| std about the plane (m) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for factor in FACTORS:
            try:
                row = contrast_row(source, factor, options, Path(work))
            except DtmError as refused:  # rounded to one value, say
                print(f"| {factor:g} | refused: {refused} | | | |")
                continue
            print(f"| {row['factor']:g} | {row['contrast']:.4f} | {row['height_std_m']:.1f} | "
                  f"{row['slope_to_sun_deg']:.2f} | {row['detrended_std_m']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
