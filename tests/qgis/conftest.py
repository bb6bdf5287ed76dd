"""Fixtures for the QGIS tests: the provider from the assembled plugin, test rasters, models."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import QgsApplication
from qgis.gui import QgsBrowserGuiModel

from tests.conftest import BUILT

# pytest puts the repository root back at the front of sys.path for every test package, so
# pin the assembled plugin now, before anything imports the package from the source tree.
if (BUILT / "mars_dtm_plugin").is_dir() and "mars_dtm_plugin" not in sys.modules:
    sys.path.insert(0, str(BUILT))

from mars_dtm_plugin.processing.provider import MarsDtmProvider
from tests.models import write_test_model

ALGORITHM_ID = "marsdtm:predictdtm"

# A Mars CRS with no EPSG code, as HiRISE products have: the output must keep it as WKT.
MARS_EQC_WKT = """PROJCS["Equirectangular Mars",
    GEOGCS["GCS_Mars_2000_Sphere",
        DATUM["D_Mars_2000_Sphere", SPHEROID["Mars_2000_Sphere_IAU_IAG", 3396190.0, 0.0]],
        PRIMEM["Reference_Meridian", 0.0], UNIT["Degree", 0.0174532925199433]],
    PROJECTION["Equirectangular"], PARAMETER["False_Easting", 0.0],
    PARAMETER["False_Northing", 0.0], PARAMETER["Central_Meridian", 180.0],
    PARAMETER["Standard_Parallel_1", 0.0], UNIT["Meter", 1.0]]"""
GEOTRANSFORM = (1_250_000.0, 2.0, 0.0, -280_000.0, 0.0, -2.0)
# Its pixels are 2 m of map; on the ground (equirectangular, true at the equator) they are
# cos(latitude) as wide, and the engine's pixel size is the mean of the two sides.
GROUND_PIXEL_M = 2.0 * math.sqrt(math.cos(-280_000.0 / 3_396_190.0))


def terrain_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth relief plus texture, so that tile borders and scaling errors would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    relief = 300 * np.sin(x / 17.0) * np.cos(y / 23.0) + 2.0 * x + y
    return (1000 + relief + rng.normal(0, 5, (height, width))).astype(np.float32)


def write_geotiff(path: Path, data: np.ndarray, wkt: str | None = MARS_EQC_WKT,
                  geotransform: tuple[float, ...] | None = GEOTRANSFORM,
                  nodata: float | None = None) -> Path:
    bands = 1 if data.ndim == 2 else data.shape[0]
    planes = [data] if data.ndim == 2 else list(data)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), planes[0].shape[1], planes[0].shape[0],
                                              bands, gdal.GDT_Float32)
    if geotransform is not None:
        ds.SetGeoTransform(geotransform)
    if wkt is not None:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(wkt)
        ds.SetProjection(srs.ExportToWkt())
    for number, plane in enumerate(planes, start=1):
        band = ds.GetRasterBand(number)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(plane)
    ds = None
    return path


def read_raster(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], str, float | None]:
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    return band.ReadAsArray(), ds.GetGeoTransform(), ds.GetProjection(), band.GetNoDataValue()


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def expected_identity_heights(image: np.ndarray, pixel_size: float) -> np.ndarray:
    """What the identity model gives up to a constant: the image stretched to 0..1, in GSD."""
    stretched = (image - image.min()) / (image.max() - image.min())
    return (stretched * pixel_size).astype(np.float64)


# Python references to the providers registered here: without one, the registry keeps a C++
# object whose Python overrides (loadAlgorithms) are gone.
_REGISTERED: list[MarsDtmProvider] = []


@pytest.fixture
def provider(qgis_processing) -> MarsDtmProvider:
    """The plugin's provider, registered as QGIS's initProcessing() does (again if a plugin
    test has unloaded it)."""
    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("marsdtm")
    if existing is not None:
        return existing
    provider = MarsDtmProvider()
    assert registry.addProvider(provider)
    _REGISTERED.append(provider)
    return provider


@pytest.fixture(scope="session")
def browser_model(qgis_iface) -> QgsBrowserGuiModel:
    """Processing dialogs ask iface for QGIS's browser model, which the stub iface lacks."""
    model = QgsBrowserGuiModel()
    qgis_iface.browserModel = lambda: model
    return model


@pytest.fixture(scope="session")
def identity_model(tmp_path_factory) -> Path:
    return write_test_model(tmp_path_factory.mktemp("models") / "identity.onnx", "identity")


@pytest.fixture
def image_factory(tmp_path) -> Callable[..., Path]:
    def make(name: str = "scene.tif", width: int = 150, height: int = 110, seed: int = 0,
             **kwargs) -> Path:
        return write_geotiff(tmp_path / name, terrain_image(width, height, seed), **kwargs)

    return make
