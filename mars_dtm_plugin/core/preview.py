"""A PNG preview of a run: the image, the DTM's hillshade and its colour relief, side by side.

    python -m mars_dtm_plugin.core.preview IMAGE DTM OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from osgeo import gdal

from .errors import DtmError
from .raster import InputRaster

PREVIEW_SIDE = 768
# A terrain ramp from low (blue-green) to high (white), in RGB.
RAMP = np.array([[44, 123, 182], [171, 217, 233], [255, 255, 191], [253, 174, 97],
                 [215, 25, 28], [255, 255, 255]], np.float32)


def _read_small(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        ds = gdal.OpenEx(path, gdal.OF_RASTER)
    except RuntimeError:  # where GDAL's exceptions are on
        ds = None
    if ds is None:
        raise DtmError(f"{path} is not a raster GDAL can read.")
    band = ds.GetRasterBand(1)
    scale = max(ds.RasterXSize, ds.RasterYSize) / PREVIEW_SIDE
    width, height = (max(1, round(n / max(scale, 1))) for n in (ds.RasterXSize, ds.RasterYSize))
    # Averaged, not sampled: GDAL's average leaves nodata out, so sparse data still shows.
    average = {"buf_xsize": width, "buf_ysize": height, "resample_alg": gdal.GRIORA_Average}
    values = band.ReadAsArray(**average).astype(np.float32)
    mask = band.GetMaskBand().ReadAsArray(**average)
    valid = (mask > 0) & np.isfinite(values)  # NaN is nodata, as in the engine
    return values, valid


def _stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    return np.where(valid, np.clip((values - low) / max(high - low, 1e-9), 0, 1), 0)


def _hillshade(heights: np.ndarray, pixel: float) -> np.ndarray:
    """GDAL's hillshade (sun at azimuth 315, elevation 45), scaled to 0..1."""
    memory = gdal.GetDriverByName("MEM").Create("", heights.shape[1], heights.shape[0], 1,
                                                gdal.GDT_Float32)
    memory.SetGeoTransform((0.0, pixel, 0.0, 0.0, 0.0, -pixel))
    memory.GetRasterBand(1).WriteArray(heights)
    shaded = gdal.DEMProcessing("", memory, "hillshade", format="MEM", azimuth=315,
                                altitude=45, computeEdges=True)
    return shaded.GetRasterBand(1).ReadAsArray().astype(np.float32) / 255


def _pixel_metres(path: str) -> float:
    """The DTM's pixel size in metres (heights are metres), measured, also in a lon/lat CRS;
    without a CRS, the one its run recorded (``--pixel-size``), else the geotransform's."""
    try:
        return InputRaster(path).georef.pixel_size_m
    except DtmError:  # a recorded size outlives a resampling: trusted only where none is left
        recorded = gdal.Open(path).GetMetadataItem("MARSDTM_PIXEL_SIZE_M")
        return float(recorded) if recorded else abs(gdal.Open(path).GetGeoTransform()[1])


def _colour(fraction: np.ndarray) -> np.ndarray:
    position = fraction * (len(RAMP) - 1)
    index = np.clip(position.astype(int), 0, len(RAMP) - 2)
    t = (position - index)[..., None]
    return RAMP[index] * (1 - t) + RAMP[index + 1] * t


def make_preview(image_path: str, dtm_path: str, png_path: str) -> None:
    image, image_valid = _read_small(image_path)
    heights, valid = _read_small(dtm_path)
    if image.shape != heights.shape:
        raise DtmError(f"{image_path} and {dtm_path} are not the same size: give the DTM made "
                       "from that image.")
    pixel = _pixel_metres(dtm_path) * gdal.Open(dtm_path).RasterXSize / heights.shape[1]
    filled = np.where(valid, heights, np.median(heights[valid]) if valid.any() else 0)
    shade = _hillshade(filled, pixel)
    grey = np.repeat(_stretch(image, image_valid)[..., None] * 255, 3, axis=2)
    relief = _colour(_stretch(heights, valid)) * (0.35 + 0.65 * shade[..., None])
    panels = [grey, np.repeat(shade[..., None] * 255, 3, axis=2), relief]
    for panel, mask in zip(panels, (image_valid, valid, valid)):
        panel[~mask] = 0
    gap = np.full((heights.shape[0], 8, 3), 255, np.float32)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    _write_png(np.clip(strip, 0, 255).astype(np.uint8), png_path)


def _write_png(rgb: np.ndarray, path: str) -> None:
    memory = gdal.GetDriverByName("MEM").Create("", rgb.shape[1], rgb.shape[0], 3, gdal.GDT_Byte)
    for i in range(3):
        memory.GetRasterBand(i + 1).WriteArray(rgb[..., i])
    try:
        written = gdal.GetDriverByName("PNG").CreateCopy(path, memory)
    except RuntimeError:  # where GDAL's exceptions are on
        written = None
    if written is None:
        raise DtmError(f"The preview {path} cannot be written.")
    written = None  # closed: on disk
    Path(path + ".aux.xml").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m mars_dtm_plugin.core.preview IMAGE DTM OUT.png", file=sys.stderr)
        return 2
    try:
        make_preview(*argv)
    except DtmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
