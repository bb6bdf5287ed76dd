"""Synthetic terrain and rendering: physics, conventions, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from training.shards import read_shard
from training.synth import (
    MARS_EQUIRECTANGULAR_WKT,
    cast_shadows,
    cos_incidence,
    demo_scene,
    make_patch,
    render,
    synthetic_dem,
    write_dataset,
)
from training.synth_render import albedo_map
from training.synth_terrain import fractal_surface, stamp_crater

gdal.UseExceptions()


def slope_deg(dem: np.ndarray, pixel: float = 1.0) -> np.ndarray:
    gy, gx = np.gradient(dem, pixel)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def ramp_ridge(size: int = 64) -> np.ndarray:
    """West half rises eastward (faces west), east half falls eastward (faces east)."""
    cols = np.arange(size, dtype=np.float32)
    profile = np.where(cols < size / 2, cols, size - cols) * 0.5
    return np.tile(profile, (size, 1))


def test_same_seed_same_scene_and_different_seed_differs():
    a, dem_a = make_patch(3, 5, size=96)
    b, dem_b = make_patch(3, 5, size=96)
    c, _ = make_patch(4, 5, size=96)
    assert np.array_equal(a.image, b.image) and np.array_equal(dem_a, dem_b)
    assert a.meta == b.meta
    assert not np.array_equal(a.height, c.height)


def test_shards_are_byte_identical_for_a_seed(tmp_path):
    first = write_dataset(tmp_path / "a", 3, seed=11, size=64)
    second = write_dataset(tmp_path / "b", 3, seed=11, size=64)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_fresh_crater_depth_diameter_rim_and_wall_slope():
    z = np.zeros((200, 200), np.float32)
    stamp_crater(z, 100.0, 100.0, 60.0, depth_ratio=0.2, rim_ratio=0.04)
    floor, rim = z.min(), z.max()
    assert (rim - floor) / 60.0 == pytest.approx(0.2, abs=0.01)
    assert rim / 60.0 == pytest.approx(0.04, abs=0.005)
    assert z[0, 0] == pytest.approx(0.0, abs=1e-3)  # beyond the ejecta the plain is untouched
    wall = slope_deg(z).max()
    assert 30.0 < wall < 42.0


def test_slopes_reach_hirise_maxima_but_stay_mostly_gentle():
    slopes = np.concatenate([
        slope_deg(synthetic_dem(np.random.default_rng(seed), 128)).ravel() for seed in range(8)
    ])
    assert np.percentile(slopes, 99.9) > 30.0
    assert np.median(slopes) < 20.0
    assert slopes.max() < 60.0  # loose slopes relax; only small cliffs stand steeper


def test_heights_scale_with_pixel_size():
    small = synthetic_dem(np.random.default_rng(1), 64, pixel_size_m=0.25)
    large = synthetic_dem(np.random.default_rng(1), 64, pixel_size_m=1.0)
    np.testing.assert_allclose(small * 4.0, large, rtol=1e-5, atol=1e-4)


def test_fractal_surface_spectrum_follows_the_hurst_exponent():
    z = fractal_surface(np.random.default_rng(0), (256, 256), hurst=0.7)
    rows = (z - z.mean(axis=1, keepdims=True)) * np.hanning(256)  # the field is not periodic
    power = np.mean(np.abs(np.fft.rfft(rows, axis=1)) ** 2, axis=0)
    k = np.arange(power.size)
    band = (k >= 4) & (k <= 64)
    slope = np.polyfit(np.log(k[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-(1 + 2 * 0.7), abs=0.35)


def test_west_facing_slope_is_bright_with_sun_from_west():
    dem = ramp_ridge()
    mu = cos_incidence(dem, 1.0, 270.0, 30.0)
    assert mu[:, 5:25].mean() > mu[:, 40:60].mean() + 0.3
    image = render(dem, 1.0, 270.0, 30.0, np.random.default_rng(0)).astype(float)
    assert image[:, 5:25].mean() > image[:, 40:60].mean() + 20
    flipped = render(dem, 1.0, 90.0, 30.0, np.random.default_rng(0)).astype(float)
    assert flipped[:, 5:25].mean() < flipped[:, 40:60].mean() - 20


def test_north_facing_slope_is_bright_with_sun_from_north():
    dem = ramp_ridge().T.copy()  # north half rises southward: it faces north
    mu = cos_incidence(dem, 1.0, 0.0, 30.0)
    assert mu[5:25].mean() > mu[40:60].mean() + 0.3


@pytest.mark.parametrize("azimuth", [0.0, 135.0, 270.0, 315.0])
def test_lambert_matches_gdaldem_hillshade(tmp_path, azimuth):
    dem = synthetic_dem(np.random.default_rng(2), 96, pixel_size_m=2.0)
    src = tmp_path / "dem.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(src), 96, 96, 1, gdal.GDT_Float32)
    ds.SetGeoTransform([1000.0, 2.0, 0.0, 500.0, 0.0, -2.0])
    ds.SetProjection(MARS_EQUIRECTANGULAR_WKT)
    ds.GetRasterBand(1).WriteArray(dem)
    ds = None
    shade = gdal.DEMProcessing(str(tmp_path / "hs.tif"), str(src), "hillshade",
                               azimuth=azimuth, altitude=40.0, computeEdges=True)
    reference = shade.GetRasterBand(1).ReadAsArray().astype(float)[2:-2, 2:-2]
    ours = np.maximum(cos_incidence(dem, 2.0, azimuth, 40.0), 0)[2:-2, 2:-2]
    assert np.corrcoef(reference.ravel(), ours.ravel())[0, 1] > 0.95
    error = np.abs(ours * 254 + 1 - reference)  # gdaldem maps cos i to 1..255
    assert np.median(error) < 5 and np.percentile(error, 99) < 25  # Horn vs central differences


def test_cast_shadow_falls_downsun_of_a_wall_at_low_sun_only():
    dem = np.zeros((80, 80), np.float32)
    dem[:, 30:34] = 10.0  # a north-south wall 10 m high
    low = cast_shadows(dem, 1.0, 270.0, 20.0)  # sun from the west: shadow to the east
    assert low[:, 35:55].mean() > 0.95  # 10 m / tan 20 deg = 27 m of shadow
    assert low[:, 65:].max() < 0.05 and low[:, :29].max() < 0.05
    east = cast_shadows(dem, 1.0, 90.0, 20.0)
    assert east[:, 10:28].mean() > 0.95 and east[:, 36:].max() < 0.05


def test_no_shadows_on_gentle_terrain_at_high_sun_but_some_at_low_sun():
    rng = np.random.default_rng(5)
    dem = fractal_surface(rng, (128, 128), 0.8) * math.tan(math.radians(5.0))
    assert cast_shadows(dem, 1.0, 200.0, 60.0).mean() < 0.001
    crater = np.zeros((128, 128), np.float32)
    stamp_crater(crater, 64.0, 64.0, 50.0, 0.2, 0.04)
    assert cast_shadows(crater, 1.0, 200.0, 15.0).mean() > 0.02


def test_render_is_uint8_with_hirise_like_contrast():
    dem = synthetic_dem(np.random.default_rng(9), 128)
    image = render(dem, 1.0, 120.0, 35.0, np.random.default_rng(9))
    assert image.dtype == np.uint8 and image.shape == dem.shape
    assert 5.0 < image.std() < 90.0


def test_a_wider_photometry_widens_the_albedo_contrast_and_keeps_the_draws():
    dem = synthetic_dem(np.random.default_rng(4), 96)
    ratios = []
    for seed in range(8):
        default = albedo_map(np.random.default_rng(seed), dem) - 1.0
        wider = albedo_map(np.random.default_rng(seed), dem, 2.0) - 1.0
        ratios.append(wider.std() / default.std())
    # The same draws at twice the contrast: to first order, twice the departure from 1.
    assert min(ratios) > 1.8 and max(ratios) < 2.4
    rng = np.random.default_rng(5)
    image = render(dem, 1.0, 270.0, 30.0, rng, photometry=2.0)
    again = np.random.default_rng(5)
    assert not np.array_equal(image, render(dem, 1.0, 270.0, 30.0, again))
    # Only the ranges change, not how many numbers are drawn: what follows draws the same.
    assert rng.random() == again.random()
    # At 0 the albedo is uniform, and the narrowest ranges still render.
    assert np.all(albedo_map(np.random.default_rng(6), dem, 0.0) == 1.0)
    image = render(dem, 1.0, 270.0, 30.0, np.random.default_rng(6), photometry=0.0)
    assert image.dtype == np.uint8 and image.std() > 5.0


def test_shards_read_back_with_provenance(tmp_path):
    paths = write_dataset(tmp_path, 3, seed=21, size=64, pixel_size_m=0.5,
                          sun_azimuth_deg=315.0, azimuth_jitter_deg=10.0)
    patches = [p for path in paths for p in read_shard(path)]
    assert len(patches) == 3
    for index, patch in enumerate(patches):
        meta = patch.meta
        assert meta["pair_id"] == f"synth-21-{index}"
        assert meta["source"] == "synthetic" and meta["seed"] == 21
        assert meta["window"] == [0, 0, 64, 64] and meta["pixel_size_m"] == 0.5
        assert 305.0 <= meta["sun_azimuth_deg"] <= 325.0
        assert 10.0 <= meta["sun_elevation_deg"] <= 60.0
        assert patch.image.dtype == np.uint8 and patch.image.shape == (64, 64)
        assert patch.height.dtype == np.float32 and abs(patch.height.mean()) < 1e-3
        assert "3396190" in meta["crs_wkt"]


def _mars_sphere(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    assert srs.GetSemiMajor() == pytest.approx(3396190.0)
    assert srs.GetInvFlattening() == 0.0  # a sphere
    assert srs.GetAttrValue("PROJECTION") == "Equirectangular"
    return srs


def test_geotiff_pairs_are_georeferenced_on_the_mars_sphere(tmp_path):
    write_dataset(tmp_path, 2, seed=4, size=64, pixel_size_m=0.5, geotiff=True)
    patch, dem = make_patch(4, 1, size=64, pixel_size_m=0.5)
    image = gdal.Open(str(tmp_path / "geotiff" / f"{patch.key}_image.tif"))
    heights = gdal.Open(str(tmp_path / "geotiff" / f"{patch.key}_dem.tif"))
    _mars_sphere(image.GetProjection())
    assert image.GetGeoTransform() == (32.0, 0.5, 0.0, 0.0, 0.0, -0.5)
    assert heights.GetGeoTransform() == image.GetGeoTransform()
    assert float(image.GetMetadataItem("SUN_AZIMUTH")) == pytest.approx(
        patch.meta["sun_azimuth_deg"], abs=1e-3)
    np.testing.assert_array_equal(image.ReadAsArray(), patch.image)
    np.testing.assert_array_equal(heights.ReadAsArray(), dem)


def test_demo_scene_and_truth_share_a_grid(tmp_path):
    image_path, truth_path = demo_scene(tmp_path / "scene.tif")
    assert truth_path == tmp_path / "scene_truth.tif"
    image, truth = gdal.Open(str(image_path)), gdal.Open(str(truth_path))
    assert (image.RasterXSize, image.RasterYSize) == (1536, 1024)
    assert (truth.RasterXSize, truth.RasterYSize) == (1536, 1024)
    assert image.GetGeoTransform() == truth.GetGeoTransform()
    _mars_sphere(image.GetProjection())
    assert image.GetProjection() == truth.GetProjection()
    assert image.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert truth.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert image.GetRasterBand(1).GetNoDataValue() == 0
    pixels = image.ReadAsArray()
    assert pixels[0, 0] == 0 and (pixels == 0).mean() < 0.001
    assert 10.0 <= float(image.GetMetadataItem("SUN_ELEVATION")) <= 60.0
    heights = truth.ReadAsArray()
    valid = heights > -1e30
    assert np.array_equal(valid, pixels > 0)
    assert np.ptp(heights[valid]) > 10.0


def test_command_line_writes_shards(tmp_path):
    from training.synth import main

    assert main(["--out", str(tmp_path), "--count", "2", "--size", "48", "--seed", "1"]) == 0
    assert sorted(p.name for p in Path(tmp_path).glob("*.tar")) == ["synth-1-000000.tar"]
