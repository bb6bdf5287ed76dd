"""The command line passes what it is given to the engine."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

from tests.conftest import PLUGIN_HOME, plugin_env, predict_command
from tests.models import write_test_model
from tests.rasters import ramp, read_raster, write_raster

GT = (0.0, 2.0, 0.0, 0.0, 0.0, -2.0)


def test_the_sun_elevation_and_the_overlap_given_are_used(tmp_path):
    # Identity with mean-ratio scaling: heights = (I / mean - 1) x tan(elevation) x 2 m.
    model = write_test_model(tmp_path / "model.onnx", input_scaling="mean_ratio")
    image = ramp(90, 100) + 20
    scene = write_raster(tmp_path / "scene.tif", image, GT)
    out = tmp_path / "dtm.tif"
    done = predict_command(str(scene), str(out), "--model", str(model), "--sun-elevation", "30",
                           "--overlap", "10", "--quiet")
    assert done.returncode == 0, done.stderr
    heights, ds = read_raster(out)
    expected = 2.0 * (image / image.mean(dtype=np.float64) - 1) * math.tan(math.radians(30.0))
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-4)
    assert ds.GetMetadataItem("MARSDTM_TILES").endswith("overlap 10 px")


def test_nodata_values_given_are_masked(tmp_path):
    model = write_test_model(tmp_path / "model.onnx")
    image = np.pad(ramp(70, 80) + 20, 5)  # a black collar, unmarked
    scene = write_raster(tmp_path / "scene.tif", image, GT)
    out = tmp_path / "dtm.tif"
    done = predict_command(str(scene), str(out), "--model", str(model), "--nodata", "0",
                           "--nodata", "255")
    assert done.returncode == 0, done.stderr
    assert "0 as nodata, 255 as nodata" in done.stdout and "black collar" not in done.stderr
    heights, ds = read_raster(out)
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    assert ((heights == nodata) == (image == 0)).all()


def test_a_reference_dtm_given_sets_the_datum_and_a_bad_one_is_one_sentence(tmp_path):
    model = write_test_model(tmp_path / "model.onnx")
    scene = write_raster(tmp_path / "scene.tif", ramp(90, 100) + 20, GT)
    flat = write_raster(tmp_path / "ctx.tif", np.full((20, 20), -2500.0, np.float32),
                        (-40.0, 16.0, 0.0, 40.0, 0.0, -16.0))
    out = tmp_path / "dtm.tif"
    done = predict_command(str(scene), str(out), "--model", str(model), "--reference-dtm",
                           str(flat))
    assert done.returncode == 0, done.stderr
    assert "from the reference DTM ctx.tif" in done.stdout
    # The ramp is the model's long wavelengths, the reference's level replaces them.
    heights, _ = read_raster(out)
    assert abs(heights.mean() + 2500) < 0.05
    smoother = predict_command(str(scene), str(tmp_path / "smoother.tif"), "--model",
                               str(model), "--reference-dtm", str(flat),
                               "--reference-resolution", "64")
    sigma = [float(re.search(r"beyond ([0-9.]+) px", run.stdout)[1]) for run in (done, smoother)]
    assert sigma[1] / sigma[0] == pytest.approx(4.0, rel=0.01)  # 64 m against its 16 m pixels
    alone = predict_command(str(scene), str(tmp_path / "alone.tif"), "--model", str(model),
                            "--reference-resolution", "64")
    assert alone.returncode != 0 and not (tmp_path / "alone.tif").exists()
    assert "A reference resolution is given without a reference DTM." in alone.stderr
    done = predict_command(str(scene), str(tmp_path / "other.tif"), "--model", str(model),
                           "--reference-dtm", str(tmp_path / "missing.tif"))
    assert done.returncode != 0 and not (tmp_path / "other.tif").exists()
    assert "The reference DTM" in done.stderr and "cannot be read" in done.stderr


def test_reference_nodata_values_given_are_holes(tmp_path):
    model = write_test_model(tmp_path / "model.onnx")
    scene = write_raster(tmp_path / "scene.tif", ramp(90, 100) + 20, GT)
    heights = np.full((20, 20), -2500.0, np.float32)
    heights[9:12, 9:12] = -9999  # under the image, marked nowhere in the file
    ctx = write_raster(tmp_path / "ctx.tif", heights, (-40.0, 16.0, 0.0, 40.0, 0.0, -16.0))
    out = tmp_path / "dtm.tif"
    done = predict_command(str(scene), str(out), "--model", str(model), "--reference-dtm",
                           str(ctx), "--reference-nodata=-9999")
    assert done.returncode == 0, done.stderr
    assert "from the reference DTM ctx.tif, -9999 as nodata" in done.stdout
    assert abs(read_raster(out)[0].mean() + 2500) < 0.05
    twice = predict_command(str(scene), str(tmp_path / "twice.tif"), "--model", str(model),
                            "--reference-dtm", str(ctx), "--reference-nodata=-9999",
                            "--reference-nodata=0")
    assert twice.returncode == 2 and "--reference-nodata takes one value" in twice.stderr
    assert not (tmp_path / "twice.tif").exists()


def test_the_cli_module_runs_as_the_package_does(tmp_path):
    """``python -m mars_dtm_plugin.cli`` is not a silent no-op."""
    done = predict_command(str(tmp_path / "missing.tif"), str(tmp_path / "out.tif"),
                           module="mars_dtm_plugin.cli")
    assert done.returncode == 1 and "missing.tif" in done.stderr
    assert not (tmp_path / "out.tif").exists()


def test_a_reader_that_stops_reading_does_not_stop_the_run(tmp_path):
    # As `mars-dtm predict ... | head -1`: the pipe is closed before the first message.
    source = write_raster(tmp_path / "scene.tif", ramp(100, 100), GT)
    out = tmp_path / "dtm.tif"
    model = write_test_model(tmp_path / "model.onnx", "conv")
    run = subprocess.Popen([sys.executable, "-m", "mars_dtm_plugin", "predict", str(source),
                            str(out), "--model", str(model), "--sun-azimuth", "270"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=plugin_env(),
                           cwd=PLUGIN_HOME)
    run.stdout.close()
    errors = run.stderr.read().decode()
    assert run.wait(timeout=120) == 0 and "Traceback" not in errors
    assert gdal.Open(str(out)).RasterXSize == 100
