"""The model the plugin ships: its contract, its size budget, and a run through the engine."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from scipy import ndimage

from mars_dtm_plugin.core.contract import parse_contract
from training import synth
from training.evaluate import read_band
from training.synth import write_geotiff

BUNDLED = Path(__file__).resolve().parents[2] / "mars_dtm_plugin" / "models" / \
    "mars_dtm_generator.onnx"

pytestmark = pytest.mark.skipif(not BUNDLED.exists(), reason="no bundled model yet")


def test_bundled_model_fits_the_budget_and_the_contract():
    assert BUNDLED.stat().st_size <= 30e6
    model = onnx.load(str(BUNDLED))
    contract = parse_contract({p.key: p.value for p in model.metadata_props}, BUNDLED.name)
    assert contract.sun_mode == "rotate" and contract.height_units == "gsd"
    assert contract.tile_size % contract.extra["marsdtm:size_multiple"] == 0
    # Its upsampling reads no tensor's shape (test_quantize says why).
    assert "Shape" not in {node.op_type for node in model.graph.node}


def test_bundled_model_runs_through_the_engine(tmp_path):
    from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm

    rng = np.random.default_rng(5)
    dem = synth.synthetic_dem(rng, 320)[:300, :280]
    image = synth.render(dem, 2.0, 120.0, 30.0, rng)
    source = write_geotiff(tmp_path / "scene.tif", image, (0, 2.0, 0, 0, 0, -2.0))
    options = PredictOptions(model_path=str(BUNDLED), sun_azimuth=120.0, sun_elevation=30.0,
                             provider="cpu", threads=2)
    predict_dtm(str(source), str(tmp_path / "dtm.tif"), options)
    heights, *_ = read_band(tmp_path / "dtm.tif")
    assert heights.shape == (300, 280) and np.isfinite(heights).all()
    # Slopes of the truth's size (1.14 when written; pixels for metres would double it, inputs
    # not standardised shrink it), and the truth's shape at the scales shading shows.
    slope_ratio = _slope(heights).mean() / _slope(dem).mean()
    assert 0.7 < slope_ratio < 1.6
    assert np.corrcoef(_detail(heights).ravel(), _detail(dem).ravel())[0, 1] > 0.6


def _slope(heights: np.ndarray, pixel_m: float = 2.0) -> np.ndarray:
    return np.hypot(*np.gradient(heights.astype(np.float64), pixel_m))


def _detail(heights: np.ndarray) -> np.ndarray:
    """Heights less their 31-pixel running mean: what a single image can tell."""
    return heights - ndimage.uniform_filter(heights.astype(np.float64), 31)


def test_the_engine_gets_the_sun_from_true_north_in_a_polar_scene(tmp_path):
    """Renders and baselines use the image's frame; the engine wants azimuths from north."""
    from osgeo import osr

    from training.evaluate import Scene, predict

    y, x = np.mgrid[-128:128, -128:128].astype(np.float32)
    truth = 30.0 * np.exp(-(x**2 + (y + 40) ** 2) / (2 * 45.0**2))  # a hill, off centre
    sun = (120.0, 30.0)  # from the lower right of the image
    image = synth.render(truth, 1.0, *sun, np.random.default_rng(0))
    srs = osr.SpatialReference()
    srs.ImportFromProj4("+proj=stere +lat_0=90 +lon_0=0 +R=3396190 +units=m")
    # At 104 E, 70 N, true north points some 100 degrees from image up.
    path = write_geotiff(tmp_path / "polar.tif", image,
                         (1143260.0, 1.0, 0.0, 280000.0, 0.0, -1.0), srs.ExportToWkt())
    scene = Scene("polar", path, image, np.ones(image.shape, bool), 1.0, sun, truth, 1.0)
    pred, _ = predict(BUNDLED, scene, tmp_path)
    assert np.corrcoef(pred.ravel(), truth.ravel())[0, 1] > 0.6
