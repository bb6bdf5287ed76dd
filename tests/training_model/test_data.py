import itertools
import math

import numpy as np
import pytest

from training.data import (
    LOW_RELIEF,
    Normalisation,
    ShardPatches,
    flattened,
    list_shards,
    load_dem_shapes,
    pixel_size_metres,
    to_canonical,
)
from training.shards import Patch
from training.synth import cos_incidence


def _hill(size: int = 65) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    return (20.0 * np.exp(-(x**2 + 2 * y**2) / 200.0) + 0.1 * x).astype(np.float32)


@pytest.mark.parametrize("sun", [0.0, 90.0, 180.0, 300.0])
def test_to_canonical_brings_the_sun_to_the_canonical_azimuth(sun):
    dem = _hill()
    image = cos_incidence(dem, 1.0, sun, 35.0)
    turned_image, turned_dem = to_canonical(image, dem, sun, 270.0)
    expected = cos_incidence(turned_dem, 1.0, 270.0, 35.0)
    inner = (slice(4, -4), slice(4, -4))
    corr = np.corrcoef(turned_image[inner].ravel(), expected[inner].ravel())[0, 1]
    assert corr > 0.97


def test_normalisation_maps_percentiles_to_zero_and_one():
    image = np.arange(101, dtype=np.uint8).reshape(1, -1)
    out = Normalisation((0.0, 100.0), mean=0.5, std=0.25).apply(image)
    assert np.isclose(out.min(), -2.0) and np.isclose(out.max(), 2.0)


def test_mean_ratio_normalisation_is_the_linearised_slope_toward_the_sun():
    image = np.array([[50.0, 100.0, 150.0]])
    out = Normalisation(mean=0.0, std=0.5, scaling="mean_ratio").apply(image, 60.0)
    np.testing.assert_allclose(out, np.array([[-0.5, 0.0, 0.5]]) * np.sqrt(3) / 0.5, rtol=1e-6)
    # A level twice the patch's mean (a patch darker than its scene): ratios halve, minus one.
    darker = Normalisation(mean=0.0, std=0.5, scaling="mean_ratio").apply(image, 60.0, 2.0)
    np.testing.assert_allclose(darker, (image / 200.0 - 1) * np.sqrt(3) / 0.5, rtol=1e-6)


@pytest.mark.parametrize("scene_mean", [False, True])
def test_a_crop_can_be_scaled_by_the_mean_of_its_whole_patch(pool, scene_mean):
    image = np.full((128, 128), 100.0, np.float32)
    image[32:96, 32:96] = 150.0  # the centre crop is brighter than the patch around it
    meta = {"sun_azimuth_deg": 270.0, "sun_elevation_deg": 45.0, "pixel_size_m": 1.0}
    patch = Patch("p", image, np.zeros_like(image), meta)
    norm = Normalisation(mean=0.0, std=0.5, scaling="mean_ratio")
    data = ShardPatches(list_shards(pool), norm=norm, augment=False, size=64,
                        scene_mean=scene_mean)
    x, _ = data._sample(patch, np.random.default_rng(0))
    whole = (150.0 * 64**2 + 100.0 * (128**2 - 64**2)) / 128**2  # 112.5
    expected = (150.0 / whole - 1.0) / 0.5 if scene_mean else 0.0  # tan(45°) = 1
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)


def test_ranks_read_disjoint_shares_of_the_shards(pool, monkeypatch):
    keys = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = ShardPatches(list_shards(pool), seed=1, augment=False)
        keys.append({p.key for p in data._patches()})
    assert not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 24


def _damaged(pool, tmp_path, how: str):
    import shutil
    import tarfile

    shard = tmp_path / "shard.tar"
    shutil.copy(sorted(pool.glob("*.tar"))[0], shard)
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    data = bytearray(shard.read_bytes())
    if how == "cut between files":  # four files: one whole patch and a third of the next
        shard.write_bytes(data[:members[4].offset])
    elif how == "cut between patches":  # three files: one whole patch
        shard.write_bytes(data[:members[3].offset])
    elif how == "changed bytes":
        data[members[0].offset_data:members[0].offset_data + 6] = b"NOTNPY"
        shard.write_bytes(data)
    else:
        shard.unlink()
    return shard


@pytest.mark.parametrize("how, reason", [("cut between files", "it ends inside patch"),
                                         ("cut between patches", "it lacks the end of a tar"),
                                         ("changed bytes", "pickled data"),
                                         ("gone", "No such file")])
def test_a_damaged_shard_is_never_read_as_a_shorter_one(pool, tmp_path, how, reason):
    from training.shards import UnreadableShard, read_shard

    shard = _damaged(pool, tmp_path, how)
    with pytest.raises(UnreadableShard, match=f"the shard {shard} cannot be read .*{reason}"):
        list(read_shard(shard))


def test_geographic_pixels_are_converted_to_metres_on_their_body(tmp_path):
    from osgeo import gdal, osr

    gt = (0.0, 1 / 1200, 0.0, 0.0, 0.0, -1 / 1200)  # 3 arc-seconds at the equator
    for name, radius in (("earth", 6_378_137.0), ("mars", 3_396_190.0)):
        srs = osr.SpatialReference()
        srs.SetGeogCS(name, name, name, radius, 0.0)
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / f"{name}.tif"), 8, 8, 1,
                                                  gdal.GDT_Float32)
        ds.SetGeoTransform(gt)
        ds.SetSpatialRef(srs)
        ds.GetRasterBand(1).Fill(1.0)
        ds = None
    sizes = {s.name: s.pixel_size_m for s in load_dem_shapes(tmp_path)}
    # A degree is 2 pi r / 360 long: 111.3 km on the Earth, 59.3 km on Mars.
    assert sizes["earth"] == pytest.approx(92.77, abs=0.01)
    assert sizes["mars"] == pytest.approx(49.40, abs=0.01)
    # On an Earth datum exactly the metres per degree the bundled model's pool was made with.
    width = gt[1] * 111_320.0 * math.cos(math.radians(gt[5] * 8 / 2))  # at the centre row
    assert sizes["earth"] == math.sqrt(width * (-gt[5] * 111_320.0))
    assert pixel_size_metres((0, 2.0, 0, 0, 0, -2.0), None, 45.0) == 2.0


def test_shard_patches_turn_the_sun_from_north_into_the_grid(pool):
    """A polar stereographic patch says where north lies; its sun is turned from there."""
    import dataclasses

    data = ShardPatches(list_shards(pool), seed=1, augment=False, size=32)
    patch = next(iter(data._patches()))

    def sample(sun: float, north: float | None):
        meta = {**patch.meta, "sun_azimuth_deg": sun}
        if north is not None:
            meta["north_deg"] = north
        image, _ = data._sample(dataclasses.replace(patch, meta=meta), np.random.default_rng(0))
        return image.numpy()

    canonical = sample(270.0, None)
    np.testing.assert_array_equal(sample(200.0, 70.0), canonical)  # 200 + 70 = 270 on the grid
    assert not np.array_equal(sample(200.0, None), canonical)


def test_low_relief_patches_scale_heights_and_contrast_together(pool):
    """--low-relief: the same ground with k times its relief, its image k times the contrast
    about its mean (shading is linear in small slopes)."""
    patch = next(iter(ShardPatches(list_shards(pool), size=32)._patches()))
    image, height = patch.image.astype(np.float32), patch.height
    low_image, low_height = flattened(image, height, np.random.default_rng(5))
    k = float(np.exp(np.random.default_rng(5).uniform(*np.log(LOW_RELIEF))))
    assert LOW_RELIEF[0] <= k < 0.5  # this draw flattens a lot
    np.testing.assert_allclose(low_height, k * height, rtol=1e-6)
    np.testing.assert_allclose(low_image - image.mean(), k * (image - image.mean()),
                               rtol=1e-4, atol=1e-4)

    def samples(share: float) -> list[np.ndarray]:
        data = ShardPatches(list_shards(pool), seed=1, size=32, low_relief=share)
        return [y.numpy() for _, y in itertools.islice(iter(data), 6)]

    plain, every = samples(0.0), samples(1.0)
    assert sum(float(np.std(y)) for y in every) < 0.5 * sum(float(np.std(y)) for y in plain)


def test_a_crop_scaled_by_its_whole_patch_mean_sees_the_patch_stretched_alike():
    from training.data import scene_level

    whole = np.concatenate([np.full((64, 32), 50.0), np.full((64, 32), 150.0)], axis=1)
    crop = whole[:, :32]  # the dark half: the patch's mean is twice the crop's

    def stretch(values: np.ndarray) -> np.ndarray:  # a gamma of 0.5
        return np.sqrt(values / 150.0)

    assert scene_level(whole, crop, None) == pytest.approx(2.0)
    # Stretched, the dark half is sqrt(1/3) of the bright: the means' ratio is no longer 2.
    expected = (np.sqrt(50 / 150) + 1.0) / 2 / np.sqrt(50 / 150)
    assert scene_level(whole, stretch(crop), stretch) == pytest.approx(expected)
