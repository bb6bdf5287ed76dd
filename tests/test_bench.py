"""The benchmarks' arguments and what they compare (not their timings)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.model import load_contract
from tests.models import write_test_model
from tests.rasters import write_raster

ROOT = Path(__file__).parents[1]


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'build'}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, said", [
    (["bench.throughput", "--size", "10"], "argument --size: must be at least 16, not 10"),
    (["bench.providers", "--batches", "0"], "argument --batches: must be at least 1, not 0"),
    (["bench.memory", "--model", "none.onnx"], "argument --model: none.onnx is not a file"),
    (["bench.reproducibility", "--steps", "1"], "argument --steps: must be at least 2, not 1"),
    (["bench.memory", "--coarse-pass", "two"],
     "argument --coarse-pass: expected FACTORxSIGMA, such as 3x24, not 'two'"),
    (["bench.memory", "--model", "pyproject.toml", "--coarse-pass", "2x48"],
     "--coarse-pass is the stand-in model's; a --model has its own"),
])
def test_bad_arguments_are_one_sentence(args, said):
    result = bench(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert said in result.stderr


def test_bare_onnxruntime_runs_as_many_tiles_as_a_turned_scene_needs(tmp_path):
    # The model's sun at 225, the scene's at 270: the engine turns the scene, whose turned grid
    # then needs more tiles than one the model's sun lights (the bench's default).
    model = write_test_model(tmp_path / "turned.onnx", "conv", tile_size=64,
                             tiles_overlap=25.0, sun_mode="rotate", sun_azimuth=225.0)
    result = bench("bench.throughput", "--size", "200", "--repeats", "1", "--model", str(model),
                   "--sun-azimuth", "270")
    assert result.returncode == 0, result.stderr
    unturned = bench("bench.throughput", "--size", "200", "--repeats", "1", "--model", str(model))
    assert "sun azimuth 225 degrees;" in unturned.stdout
    assert f"(version {load_contract(model).version});" in unturned.stdout  # which model ran
    assert int(re.search(r"(\d+) tiles", unturned.stdout)[1]) < int(
        re.search(r"(\d+) tiles", result.stdout)[1])

    image = np.random.default_rng(0).integers(50, 200, (200, 200)).astype(np.uint8)
    source = write_raster(tmp_path / "s.tif", image, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    report = predict_dtm(str(source), str(tmp_path / "d.tif"),
                         PredictOptions(model_path=str(model), sun_azimuth=270.0))
    assert f"; {report.tiles} tiles of 64 px;" in result.stdout


def test_the_memory_bench_runs_its_stand_in_with_a_coarse_pass(tmp_path):
    result = bench("bench.memory", "--sizes", "64", "--tile-size", "32", "--coarse-pass", "2x8")
    assert result.returncode == 0, result.stderr
    assert "coarse pass of 2 x 2 blocks beyond 8 px" in result.stdout
    # What the run did, not only what the bench asked for.
    assert ("coarse pass, as the last DTM records it: Long wavelengths: beyond 8 px, from a "
            "second pass over the image averaged in 2 x 2 blocks") in result.stdout


def test_the_memory_bench_reads_the_run_s_own_peak_not_its_own(tmp_path):
    # The bench holds some 800 MiB (as when it has written a 20000 px scene) when it starts the
    # run: a 64 px run's peak is far below that.
    script = f"""
import numpy as np
from pathlib import Path
from bench.memory import peak_rss_mib, write_scene
from tests.models import write_test_model
held = np.ones(100_000_000)  # 800 MB, touched
work = Path({str(tmp_path)!r})
model = write_test_model(work / "conv.onnx", "conv", tile_size=32)
print("run", peak_rss_mib(write_scene(work / "s.tif", 64), model, work / "d.tif", 270.0)[0])
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'build'}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 20 < float(result.stdout.split("run")[-1]) < 500


def test_the_memory_bench_turns_the_scene_for_another_sun(tmp_path):
    result = bench("bench.memory", "--sizes", "64", "--tile-size", "32", "--sun-azimuth", "315")
    assert result.returncode == 0, result.stderr
    assert "sun azimuth, as the last DTM records it: 315.0 (user)" in result.stdout


def test_the_throughput_bench_times_a_reference_dtm_when_given_one(tmp_path):
    model = write_test_model(tmp_path / "m.onnx", "conv", tile_size=64)
    result = bench("bench.throughput", "--size", "200", "--repeats", "1", "--model", str(model),
                   "--reference-pixels", "16")
    assert result.returncode == 0, result.stderr
    assert re.search(r"stages of the best pipeline run: .*, reference DTM [0-9.]+ s", result.stdout)


@pytest.mark.skipif(gdal.GetDriverByName("JP2OpenJPEG") is None,
                    reason="this GDAL has no JPEG 2000 driver (JP2OpenJPEG)")
def test_the_throughput_bench_times_the_scene_as_a_geojp2_too(tmp_path):
    model = write_test_model(tmp_path / "m.onnx", "conv", tile_size=64)
    result = bench("bench.throughput", "--size", "400", "--repeats", "2", "--model", str(model),
                   "--jp2")
    assert result.returncode == 0, result.stderr
    geotiff = float(re.search(r"full pipeline: +([0-9.]+) s", result.stdout)[1])
    jp2, rate, ratio = map(float, re.search(
        r"lossless GeoJP2 input: +([0-9.]+) s +([0-9.]+) MP/s; GeoTIFF time / GeoJP2 time: "
        r"([0-9.]+)", result.stdout).groups())
    # The JP2 line's figures are of its own runs, on the scene's 400 x 400 pixels; its seconds
    # are printed to 0.01, so each figure lies within what that rounding allows.
    fastest, slowest = jp2 - 0.005, jp2 + 0.005
    assert 0.16 / slowest - 0.005 <= rate <= 0.16 / fastest + 0.005
    assert (geotiff - 0.005) / slowest - 0.0005 <= ratio <= (geotiff + 0.005) / fastest + 0.0005
