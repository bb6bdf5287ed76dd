"""The plugin installed from its zip into a fresh profile, driven by qgis_process."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

from .conftest import (
    GROUND_PIXEL_M,
    expected_identity_heights,
    read_raster,
    same_crs,
    terrain_image,
    write_geotiff,
)

QGIS_PROCESS = shutil.which("qgis_process.bin")
pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin is not installed")

BUNDLED_MODEL = ROOT / "mars_dtm_plugin" / "models" / "mars_dtm_generator.onnx"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    """`make zip`, staged outside build/ so that it does not disturb anyone's build."""
    work = tmp_path_factory.mktemp("zip")
    target = work / "mars_dtm_plugin.zip"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "zip", f"BUILD={work / 'stage' / 'mars_dtm_plugin'}",
         f"ZIP={target}", f"ALLOW_NO_MODEL={0 if BUNDLED_MODEL.is_file() else 1}"],
        check=True, capture_output=True, text=True)
    return target


@pytest.fixture(scope="module")
def qgis_env(plugin_zip, tmp_path_factory) -> dict[str, str]:
    """A fresh QGIS settings folder with only this plugin installed and enabled."""
    config = tmp_path_factory.mktemp("qgis-config")
    profile = config / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nmars_dtm_plugin=true\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "QGIS_OPTIONS_PATH")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config),
               # onnxruntime as a user would have it: installed beside QGIS's own packages.
               PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    return env


def qgis_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=env["QGIS_CUSTOM_CONFIG_PATH"])


def test_zip_holds_what_ships_and_nothing_else(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {"mars_dtm_plugin/metadata.txt", "mars_dtm_plugin/LICENSE",
            "mars_dtm_plugin/__init__.py", "mars_dtm_plugin/plugin.py",
            "mars_dtm_plugin/processing/predict_algorithm.py",
            "mars_dtm_plugin/core/engine.py", "mars_dtm_plugin/icons/mars_dtm.svg",
            "mars_dtm_plugin/resources.qrc", "mars_dtm_plugin/models/NOTICE.md"} <= set(names)
    assert all(name.startswith("mars_dtm_plugin/") for name in names)
    assert not [n for n in names if "/training/" in n or "/tests/" in n or "__pycache__" in n]
    if BUNDLED_MODEL.is_file():
        assert "mars_dtm_plugin/models/mars_dtm_generator.onnx" in names


def _checkout_without_model(checkout: Path) -> Path:
    """The files `make zip` reads, less the model."""
    shutil.copytree(ROOT / "mars_dtm_plugin", checkout / "mars_dtm_plugin",
                    ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    shutil.copytree(ROOT / "icons", checkout / "icons")
    for name in ("Makefile", "metadata.txt", "LICENSE", "resources.qrc"):
        shutil.copy(ROOT / name, checkout)
    return checkout


def test_make_zip_refuses_to_ship_without_the_model(tmp_path):
    checkout = _checkout_without_model(tmp_path / "checkout")
    done = subprocess.run(["make", "-s", "-C", str(checkout), "zip",
                           f"BUILD={tmp_path / 'mars_dtm_plugin'}", f"ZIP={tmp_path / 'p.zip'}"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "mars_dtm_generator.onnx" in done.stderr
    assert not (tmp_path / "p.zip").exists()


def test_make_zip_leaves_out_stray_compiled_and_hidden_files(tmp_path):
    checkout = _checkout_without_model(tmp_path / "checkout")
    for stray in ("core/engine.pyc", ".DS_Store", "processing/.engine.py.swp"):
        (checkout / "mars_dtm_plugin" / stray).write_bytes(b"stray")
    subprocess.run(["make", "-s", "-C", str(checkout), "zip", "ALLOW_NO_MODEL=1",
                    f"BUILD={tmp_path / 'mars_dtm_plugin'}", f"ZIP={tmp_path / 'p.zip'}"],
                   check=True, capture_output=True, text=True)
    names = zipfile.ZipFile(tmp_path / "p.zip").namelist()
    assert "mars_dtm_plugin/core/engine.py" in names
    assert not [n for n in names if n.endswith((".pyc", ".DS_Store", ".swp"))], names


def test_qgis_process_lists_the_algorithm(qgis_env):
    plugins = qgis_process(qgis_env, "plugins")
    assert "* mars_dtm_plugin" in plugins.stdout, plugins.stdout + plugins.stderr
    listing = qgis_process(qgis_env, "list")
    assert "marsdtm:predictdtm\tPredict DTM from image" in listing.stdout


def test_qgis_process_runs_the_algorithm(qgis_env, identity_model, tmp_path):
    image = write_geotiff(tmp_path / "scene.tif", terrain_image(130, 90))
    output = tmp_path / "dtm.tif"
    done = qgis_process(qgis_env, "--json", "run", "marsdtm:predictdtm", "--",
                        f"INPUT={image}", f"MODEL={identity_model}", "PROVIDER=1",
                        f"OUTPUT={output}")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["results"]["OUTPUT"] == str(output)
    assert "Execution provider: CPUExecutionProvider" in report["log"]["info"]
    heights, geotransform, wkt, _ = read_raster(output)
    source, source_gt, source_wkt, _ = read_raster(image)
    assert geotransform == pytest.approx(source_gt) and same_crs(wkt, source_wkt)
    expected = expected_identity_heights(source, GROUND_PIXEL_M)
    np.testing.assert_allclose(heights - heights.mean(), expected - expected.mean(), atol=1e-3)


def test_qgis_process_reports_bad_input(qgis_env, identity_model, tmp_path):
    image = write_geotiff(tmp_path / "scene.tif", terrain_image(70, 70))
    output = tmp_path / "dtm.tif"
    done = qgis_process(qgis_env, "run", "marsdtm:predictdtm", "--", f"INPUT={image}",
                        "BAND=4", f"MODEL={identity_model}", f"OUTPUT={output}")
    assert done.returncode != 0
    assert "Band 4 does not exist" in done.stdout + done.stderr
    assert not output.exists()


def test_qgis_process_names_an_unreadable_input(qgis_env, identity_model, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    output = tmp_path / "dtm.tif"
    done = qgis_process(qgis_env, "run", "marsdtm:predictdtm", "--", f"INPUT={text}",
                        "SUN_AZIMUTH=45", f"MODEL={identity_model}", f"OUTPUT={output}")
    assert done.returncode != 0
    assert f"GDAL cannot read '{text}' as a raster" in done.stdout + done.stderr
    assert not output.exists()


def test_qgis_process_without_onnxruntime_explains(qgis_env, identity_model, tmp_path):
    # QGIS's own Python without the virtual environment: the real absence of the package.
    env = {key: value for key, value in qgis_env.items() if key != "PYTHONPATH"}
    system_python = Path(sys.base_prefix) / "bin" / "python3"
    if subprocess.run([system_python, "-c", "import onnxruntime"], env=env,
                      capture_output=True).returncode == 0:
        pytest.skip("onnxruntime is installed in QGIS's own Python")
    assert "marsdtm:predictdtm" in qgis_process(env, "list").stdout
    image = write_geotiff(tmp_path / "scene.tif", terrain_image(70, 70))
    done = qgis_process(env, "run", "marsdtm:predictdtm", "--", f"INPUT={image}",
                        f"MODEL={identity_model}", f"OUTPUT={tmp_path / 'dtm.tif'}")
    assert done.returncode != 0
    assert "pip install onnxruntime" in done.stdout + done.stderr
    assert not (tmp_path / "dtm.tif").exists()
