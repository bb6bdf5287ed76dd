"""`pip install .` gives the engine, the bundled model and the `mars-dtm` command, no QGIS."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from tests.rasters import write_raster

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "mars_dtm_plugin" / "models" / "mars_dtm_generator.onnx"


def test_the_package_version_is_the_plugins():
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "metadata.txt")
    version = re.search(r'^version = "(.+?)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and version[1] == metadata["general"]["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of what the build needs, so the checkout gets no build files."""
    if not MODEL.exists():
        pytest.skip("the bundled model is missing: run make model")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "mars_dtm_plugin", source / "mars_dtm_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(dist), str(source)], check=True, timeout=300)
    return next(dist.glob("*.whl"))


@pytest.mark.slow
def test_the_wheel_holds_the_engine_the_model_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        model = archive.read("mars_dtm_plugin/models/mars_dtm_generator.onnx")
        scripts = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert model == MODEL.read_bytes()
    assert "mars_dtm_plugin/models/NOTICE.md" in names  # the model's data credits travel with it
    assert "mars_dtm_plugin/core/engine.py" in names
    assert not [n for n in names if n.startswith(("training/", "tests/", "bench/"))]
    assert "mars-dtm = mars_dtm_plugin.cli:main" in scripts


@pytest.mark.slow
def test_the_installed_command_predicts_a_dtm_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    rng = np.random.default_rng(0)
    image = (120 + 20 * rng.standard_normal((96, 96))).clip(1, 255).astype(np.uint8)
    scene = write_raster(tmp_path / "scene.tif", image, (1000.0, 1.0, 0.0, 2000.0, 0.0, -1.0))
    result = subprocess.run(
        [sys.executable, str(site / "bin" / "mars-dtm"), "predict", str(scene),
         str(tmp_path / "dtm.tif"), "--sun-azimuth", "270", "--sun-elevation", "30", "--quiet"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    usage = subprocess.run([sys.executable, str(site / "bin" / "mars-dtm"), "--help"],
                           env={"PYTHONPATH": str(site)}, capture_output=True, text=True).stdout
    assert usage.startswith("usage: mars-dtm ")
    where = subprocess.run([sys.executable, "-c", "import mars_dtm_plugin as m; print(m.__file__)"],
                           cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True,
                           text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(site)  # the installed copy, not the checkout's
    dtm = gdal.Open(str(tmp_path / "dtm.tif"))
    assert dtm.GetGeoTransform() == (1000.0, 1.0, 0.0, 2000.0, 0.0, -1.0)
    assert np.isfinite(dtm.ReadAsArray()).all()


@pytest.mark.slow
def test_without_gdal_the_command_says_what_to_install(wheel, tmp_path):
    env = tmp_path / "env"  # no system packages: no GDAL (nor numpy)
    venv.create(env, with_pip=False)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    result = subprocess.run([str(env / "bin" / "python"), str(site / "bin" / "mars-dtm"),
                             "predict", "a.tif", "b.tif"], cwd=tmp_path,
                            env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("error: GDAL's Python bindings (osgeo) are missing; install them "
                             "with the system's GDAL (python3-gdal on Debian and Ubuntu, gdal "
                             "from conda-forge).\n")
