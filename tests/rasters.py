"""Real GeoTIFFs for tests, written with GDAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, osr

# Mars 2000 sphere, equirectangular: a CRS with no EPSG code, as Mars products have.
MARS_EQC_PROJ4 = "+proj=eqc +lat_ts=0 +lat_0=0 +lon_0=0 +x_0=0 +y_0=0 +R=3396190 +units=m"


def mars_eqc_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromProj4(MARS_EQC_PROJ4)
    return srs.ExportToWkt()


def write_raster(path: str | Path, bands: np.ndarray, geotransform=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                 wkt: str | None = None, nodata: float | None = None,
                 colour: list[int] | None = None, metadata: dict | None = None) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF; wkt='' leaves no CRS."""
    data = bands if bands.ndim == 3 else bands[None]
    dtype = gdal.GetDataTypeByName({"uint8": "Byte", "uint16": "UInt16", "float32": "Float32",
                                    "float64": "Float64", "int16": "Int16"}[data.dtype.name])
    ds = gdal.GetDriverByName("GTiff").Create(str(path), data.shape[2], data.shape[1],
                                              data.shape[0], dtype)
    if geotransform is not None:
        ds.SetGeoTransform(geotransform)
    ds.SetProjection(mars_eqc_wkt() if wkt is None else wkt)
    for i, array in enumerate(data):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(array)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if colour:
            band.SetColorInterpretation(colour[i])
    if metadata:
        ds.SetMetadata(metadata)
    ds = None
    return Path(path)


def read_raster(path: str | Path) -> tuple[np.ndarray, gdal.Dataset]:
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray(), ds


def ramp(rows: int, cols: int, a: float = 1.0, b: float = 0.5) -> np.ndarray:
    """A brightness plane ``a * col + b * row`` (float32)."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (a * xx + b * yy).astype(np.float32)


def plane_fit(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least-squares plane z = c0 * col + c1 * row + c2; returns coefficients, max residual."""
    rows, cols = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
    keep = np.ones(values.shape, bool) if valid is None else valid
    design = np.c_[cols[keep], rows[keep], np.ones(keep.sum())]
    coef, *_ = np.linalg.lstsq(design, values[keep], rcond=None)
    return coef, float(np.abs(design @ coef - values[keep]).max())


# A raw satellite product's RPCs: no grid, (lon, lat) near 7 E, 45 N mapped to 50 x 50 pixels.
RPC = {"LINE_OFF": "25", "SAMP_OFF": "25", "LAT_OFF": "45", "LONG_OFF": "7", "HEIGHT_OFF": "0",
       "LINE_SCALE": "25", "SAMP_SCALE": "25", "LAT_SCALE": "0.001", "LONG_SCALE": "0.001",
       "HEIGHT_SCALE": "100", "LINE_NUM_COEFF": " ".join(["0", "0", "-1"] + ["0"] * 17),
       "SAMP_NUM_COEFF": " ".join(["0", "1"] + ["0"] * 18),
       "LINE_DEN_COEFF": " ".join(["1"] + ["0"] * 19),
       "SAMP_DEN_COEFF": " ".join(["1"] + ["0"] * 19)}


def write_rpc_only(path: str | Path) -> Path:
    """A 50 x 50 image placed by :data:`RPC` alone."""
    path = write_raster(path, ramp(50, 50) + 10, None, wkt="")
    dataset = gdal.Open(str(path), gdal.GA_Update)
    dataset.SetMetadata(RPC, "RPC")
    dataset = None
    return path
