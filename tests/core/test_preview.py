"""The PNG preview: three panels, the hillshade lit from the north-west."""

from __future__ import annotations

import numpy as np
from osgeo import gdal

from mars_dtm_plugin.core.preview import make_preview
from tests.rasters import ramp, write_raster


def test_preview_has_three_panels_and_lights_north_west_slopes(tmp_path):
    image = write_raster(tmp_path / "image.tif", ramp(60, 80).astype(np.uint8),
                         (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    heights = np.zeros((60, 80), np.float32)
    heights[:, :40] = np.arange(40, dtype=np.float32)  # rises to the east: faces west
    heights[:, 40:] = 80 - np.arange(40, 80, dtype=np.float32)  # falls to the east
    dtm = write_raster(tmp_path / "dtm.tif", heights, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    png = tmp_path / "preview.png"
    make_preview(str(image), str(dtm), str(png))
    preview = gdal.Open(str(png))
    assert (preview.RasterCount, preview.RasterYSize, preview.RasterXSize) == (3, 60, 3 * 80 + 16)
    shade = preview.GetRasterBand(1).ReadAsArray()[:, 88 : 88 + 80].astype(int)
    assert shade[30, 10:30].mean() > shade[30, 50:70].mean() + 50  # west-facing is lit
