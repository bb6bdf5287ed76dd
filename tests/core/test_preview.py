"""The PNG preview: three panels, the hillshade lit from the north-west."""

from __future__ import annotations

import numpy as np
from osgeo import gdal

from mars_dtm_plugin.core.preview import main, make_preview
from tests.rasters import ramp, write_raster

MARS_LON_LAT = ('GEOGCS["Mars 2000",DATUM["D_Mars_2000",SPHEROID["Mars_2000_IAU_IAG",'
                '3396190.0,0.0]],PRIMEM["Reference_Meridian",0.0],'
                'UNIT["Degree",0.0174532925199433]]')


def _ridge(along_rows: bool = False) -> np.ndarray:
    """A ridge down the middle: faces west then east, or (``along_rows``) north then south."""
    if along_rows:
        profile = np.minimum(np.arange(60), 60 - np.arange(60)).astype(np.float32)
        return np.repeat(profile[:, None], 80, axis=1)
    profile = np.minimum(np.arange(80), 80 - np.arange(80)).astype(np.float32)
    return np.repeat(profile[None, :], 60, axis=0)


def _preview(tmp_path, geotransform, wkt=None, heights=None, metadata=None) -> np.ndarray:
    tmp_path.mkdir(exist_ok=True)
    image = write_raster(tmp_path / "image.tif", ramp(60, 80).astype(np.uint8), geotransform,
                         wkt)
    heights = _ridge() if heights is None else heights
    dtm = write_raster(tmp_path / "dtm.tif", heights, geotransform, wkt, metadata=metadata)
    png = tmp_path / "preview.png"
    make_preview(str(image), str(dtm), str(png))
    preview = gdal.Open(str(png))
    assert (preview.RasterCount, preview.RasterYSize, preview.RasterXSize) == (3, 60, 3 * 80 + 16)
    return preview.GetRasterBand(1).ReadAsArray()[:, 88 : 88 + 80].astype(int)


def test_preview_has_three_panels_and_lights_north_west_slopes(tmp_path):
    grid = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    shade = _preview(tmp_path / "we", grid)
    assert shade[30, 10:30].mean() > shade[30, 50:70].mean() + 50  # west-facing is lit
    shade = _preview(tmp_path / "ns", grid, heights=_ridge(along_rows=True))
    assert shade[10:20, 40].mean() > shade[40:50, 40].mean() + 50  # and north-facing


def test_preview_shades_a_lon_lat_dtm_by_its_size_in_metres(tmp_path):
    metres = _preview(tmp_path / "m", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    degree = 1.0 / (3396190.0 * np.pi / 180)  # one metre on the Mars sphere at the equator
    lon_lat = _preview(tmp_path / "d", (0.0, degree, 0.0, 0.0, 0.0, -degree), MARS_LON_LAT)
    np.testing.assert_allclose(lon_lat, metres, atol=2)


def test_an_image_with_nan_pixels_is_stretched_over_the_rest(tmp_path):
    image = ramp(60, 80)
    image[:5] = np.nan  # nodata without a nodata value
    source = write_raster(tmp_path / "image.tif", image, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    dtm = write_raster(tmp_path / "dtm.tif", _ridge(), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    make_preview(str(source), str(dtm), str(tmp_path / "preview.png"))
    panel = gdal.Open(str(tmp_path / "preview.png")).ReadAsArray()[0, 5:, :80].astype(int)
    assert panel.min() < 10 and panel.max() > 245  # stretched 1 % to 99 %, not all black


def test_an_input_that_is_not_there_is_one_sentence(tmp_path, capsys):
    dtm = write_raster(tmp_path / "dtm.tif", ramp(60, 80), (0, 1.0, 0, 0, 0, -1.0))
    missing = tmp_path / "moved.tif"
    assert main([str(missing), str(dtm), str(tmp_path / "p.png")]) == 1
    assert capsys.readouterr().err == f"error: {missing} is not a raster GDAL can read.\n"
    assert not (tmp_path / "p.png").exists()


def test_preview_of_a_dtm_without_a_crs_shades_by_the_pixel_size_its_run_recorded(tmp_path):
    # A run given --pixel-size 5 on an image without georeferencing records it; the grid's own
    # size (1) is not the ground's. With a CRS the grid is measured (it may have been resampled
    # since the run).
    recorded = _preview(tmp_path / "r", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), wkt="",
                        metadata={"MARSDTM_PIXEL_SIZE_M": "5"})
    five = _preview(tmp_path / "5", (0.0, 5.0, 0.0, 0.0, 0.0, -5.0), wkt="")
    one = _preview(tmp_path / "1", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), wkt="")
    resampled = _preview(tmp_path / "w", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                         metadata={"MARSDTM_PIXEL_SIZE_M": "5"})
    np.testing.assert_array_equal(recorded, five)
    np.testing.assert_array_equal(resampled, one)
    assert np.abs(one - five).max() > 20


def test_an_image_and_dtm_of_other_sizes_or_an_unwritable_png_are_one_sentence(tmp_path,
                                                                                 capsys):
    grid = (0, 1.0, 0, 0, 0, -1.0)
    image = write_raster(tmp_path / "image.tif", ramp(60, 80), grid)
    other = write_raster(tmp_path / "other.tif", ramp(50, 80), grid)
    png = tmp_path / "p.png"
    assert main([str(image), str(other), str(png)]) == 1
    assert capsys.readouterr().err == (f"error: {image} and {other} are not the same size: "
                                       "give the DTM made from that image.\n")
    nowhere = tmp_path / "gone" / "p.png"
    assert main([str(image), str(image), str(nowhere)]) == 1
    assert capsys.readouterr().err.endswith(f"error: The preview {nowhere} cannot be written.\n")
    assert not png.exists() and not nowhere.parent.exists()


def test_a_few_valid_pixels_of_a_large_dtm_still_show(tmp_path):
    # 2300 px, decimated to 768: a sampled read would miss single pixels.
    grid = (0, 1.0, 0, 0, 0, -1.0)
    heights = np.full((2300, 2300), -99999, np.float32)  # the engine's nodata
    heights[100, 100], heights[1000, 2000], heights[2000, 50] = 5, 7, 9
    dtm = write_raster(tmp_path / "dtm.tif", heights, grid, wkt="", nodata=-99999)
    image = write_raster(tmp_path / "image.tif", ramp(2300, 2300).astype(np.uint8), grid, wkt="")
    make_preview(str(image), str(dtm), str(tmp_path / "p.png"))
    relief = gdal.Open(str(tmp_path / "p.png")).ReadAsArray()[:, :, 2 * (768 + 8):]
    lit = relief.max(axis=0) > 0
    assert 3 <= lit.sum() <= 12  # each pixel in the one to four cells its footprint meets
    # Where they lie, at 2300 / 768 of a pixel each: (100, 100), (1000, 2000), (2000, 50).
    assert lit[32:35, 32:35].any() and lit[332:336, 666:670].any() and lit[666:670, 15:19].any()
