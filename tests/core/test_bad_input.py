"""Bad input: one clear sentence, a non-zero exit, and no file that looks like a result."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from mars_dtm_plugin.core.contract import REQUIRED_KEYS
from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm
from mars_dtm_plugin.core.errors import DtmError
from tests.conftest import PLUGIN_HOME, plugin_env
from tests.conftest import predict_command as cli
from tests.models import contract_for_tests, write_test_model
from tests.rasters import RPC, ramp, write_raster, write_rpc_only

GT = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", ramp(100, 100), GT)


@pytest.fixture
def model(tmp_path):
    return write_test_model(tmp_path / "model.onnx", "conv")


def assert_refused(result: subprocess.CompletedProcess, output: Path, words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not output.exists()
    if output.parent.is_dir():
        leftovers = [p for p in output.parent.iterdir() if "partial" in p.name
                     or "marsdtm" in p.name]
        assert not leftovers


def test_no_georeferencing_without_pixel_size(tmp_path, model):
    source = write_raster(tmp_path / "plain.tif", ramp(50, 50), None, wkt="")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model)), out, "georeferencing")
    assert cli(str(source), str(out), "--model", str(model), "--pixel-size", "0.25",
               "--quiet").returncode == 0
    assert out.exists()


def test_quiet_keeps_the_warnings(tmp_path, model):
    collared = write_raster(tmp_path / "collared.tif", np.pad(ramp(60, 60) + 20, 8), GT)
    out = tmp_path / "out.tif"
    result = cli(str(collared), str(out), "--model", str(model), "--quiet")
    assert result.returncode == 0 and out.exists() and not result.stderr
    (line,) = result.stdout.splitlines()  # no progress, no report: the warning alone
    assert line.startswith("warning: 100% of the image's outermost pixels are 0")


def test_band_out_of_range(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model), "--band", "3"), out,
                   "Band 3 does not exist")


def test_all_nodata(tmp_path, model):
    source = write_raster(tmp_path / "empty.tif", np.zeros((60, 60), np.uint8), GT, nodata=0)
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model)), out, "all nodata")


def test_a_web_service_is_refused_before_it_is_read(tmp_path, model):
    """A tiled basemap is 67 million pixels square: reading it would exhaust the memory."""
    service = tmp_path / "basemap.xml"
    service.write_text(
        "<GDAL_WMS><Service name=\"TMS\"><ServerUrl>http://127.0.0.1:9/${z}/${x}/${y}.png"
        "</ServerUrl></Service><DataWindow><UpperLeftX>-20037508.34</UpperLeftX><UpperLeftY>"
        "20037508.34</UpperLeftY><LowerRightX>20037508.34</LowerRightX><LowerRightY>"
        "-20037508.34</LowerRightY><TileLevel>18</TileLevel><TileCountX>1</TileCountX>"
        "<TileCountY>1</TileCountY><YOrigin>top</YOrigin></DataWindow><Projection>EPSG:3857"
        "</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>1"
        "</BandsCount></GDAL_WMS>")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(service), str(out), "--model", str(model), "--sun-azimuth", "90"),
                   out, "'basemap.xml' is a web service (WMS), not an image: save the area you "
                   "want as a GeoTIFF first")


def test_a_basemap_is_refused_before_its_tiles_are_laid_out(tmp_path, model):
    """A local map pyramid (MBTiles, a tile cache) can be millions of pixels square too."""
    basemap = tmp_path / "basemap.vrt"
    basemap.write_text('<VRTDataset rasterXSize="400000" rasterYSize="400000">'
                       '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>')
    out = tmp_path / "out.tif"
    assert_refused(cli(str(basemap), str(out), "--model", str(model), "--pixel-size", "1"), out,
                   "'basemap.vrt' is 400000 x 400000 pixels, a basemap rather than an image")


def test_a_file_of_several_rasters_names_them(tmp_path, model):
    package = tmp_path / "scenes.gpkg"
    for table in ("north", "south"):
        gdal.Translate(str(package), str(write_raster(tmp_path / f"{table}.tif", ramp(40, 40),
                                                      GT)),
                       format="GPKG", outputType=gdal.GDT_Float32,
                       creationOptions=[f"RASTER_TABLE={table}", "APPEND_SUBDATASET=YES"])
    out = tmp_path / "out.tif"
    assert_refused(cli(str(package), str(out), "--model", str(model)), out,
                   f"'scenes.gpkg' holds 2 rasters; name the one to use, such as "
                   f"GPKG:{package}:north or GPKG:{package}:south.")
    assert cli(f"GPKG:{package}:south", str(out), "--model", str(model), "--sun-azimuth", "270",
               "--quiet").returncode == 0


def test_an_image_of_one_value_is_refused(tmp_path, model):
    source = write_raster(tmp_path / "blank.tif", np.full((60, 60), 128, np.uint8), GT)
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model)), out,
                   "The image is 128 wherever it has data: there is no shading to read heights "
                   "from.")


def test_an_unmarked_fill_value_is_refused_by_value(tmp_path, model):
    image = (np.arange(60 * 60, dtype=np.float32).reshape(60, 60) % 97) + 10
    image[30, 30] = -3.4028226550889045e38  # HiRISE's MISSING_CONSTANT, not marked nodata
    source = write_raster(tmp_path / "float.tif", image, GT)
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model)), out,
                   "The image holds the value -3.4028226550889045e+38, a fill value rather than "
                   "a brightness; give it as nodata (--nodata=-3.4028226550889045e+38, or the "
                   "layer's no data values in QGIS), or set the file's nodata value.")
    # As gdalinfo prints it: rounded to the band's float32, it is that value.
    assert cli(str(source), str(out), "--model", str(model), "--nodata=-3.4028227e+38",
               "--sun-azimuth", "270").returncode == 0


def test_a_fill_value_the_scene_s_sample_steps_over_is_refused_by_value(tmp_path, model):
    # 2050 columns are sampled as 1025, every second one: column 1000 is not among them.
    from mars_dtm_plugin.core.raster import InputRaster

    image = (np.arange(64 * 2050, dtype=np.float32).reshape(64, 2050) % 97) + 10
    image[:, 1000] = -3.4028226550889045e38
    source = write_raster(tmp_path / "float.tif", image, GT)
    assert (InputRaster(str(source)).sample() > 0).all()  # the sample holds no fill value
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model), "--sun-azimuth", "270"),
                   out, "The image holds the value -3.4028226550889045e+38, a fill value")


def test_float64_values_past_float32_s_range_are_nodata_as_infinity_is(tmp_path, model):
    # The engine works in float32, where -DBL_MAX (a float64 fill) is minus infinity.
    image = ramp(100, 100).astype(np.float64)
    image[40:60, 10:90] = -np.finfo(np.float64).max
    image[5, 5] = np.inf
    source = write_raster(tmp_path / "double.tif", image, GT)
    out = tmp_path / "out.tif"
    assert cli(str(source), str(out), "--model", str(model), "--sun-azimuth", "270",
               "--quiet").returncode == 0
    dataset = gdal.Open(str(out))
    band = dataset.GetRasterBand(1)
    nodata = band.ReadAsArray() == band.GetNoDataValue()
    np.testing.assert_array_equal(nodata, ~np.isfinite(image.astype(np.float32)))


def test_unreadable_and_truncated_input(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not an image at all")
    assert_refused(cli(str(garbage), str(out), "--model", str(model)), out, "cannot read")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    assert_refused(cli(str(truncated), str(out), "--model", str(model)), out, "GDAL")


def test_missing_input_and_model(tmp_path, scene):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(tmp_path / "nope.tif"), str(out)), out, "does not exist")
    assert_refused(cli(str(scene), str(out), "--model", str(tmp_path / "nope.onnx")), out,
                   "does not exist")
    # A name GDAL resolves itself: GDAL's own reason, not "does not exist".
    assert_refused(cli(f"GTIFF_DIR:3:{scene}", str(out)), out,
                   "scene.tif: Requested directory 3 not found")


def test_corrupt_model(tmp_path, scene):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(3000))
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(corrupt)), out, "not a valid ONNX")


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_model_lacking_a_contract_key_is_refused_naming_it(tmp_path, scene, key):
    props = contract_for_tests().to_metadata()
    del props[key]
    model = write_test_model(tmp_path / "partial.onnx", metadata=props)
    with pytest.raises(DtmError, match=f"lacks the required metadata key '{key}'"):
        predict_dtm(str(scene), str(tmp_path / "o.tif"), PredictOptions(model_path=str(model)))


def test_model_breaking_the_contract(tmp_path, scene):
    model = write_test_model(tmp_path / "bad.onnx", height_units="furlongs")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out, "'marsdtm:height_units'")


def test_output_equal_to_input(scene, model):
    before = scene.read_bytes()
    result = cli(str(scene), str(scene), "--model", str(model))
    assert result.returncode != 0 and "the input path" in result.stderr
    assert scene.read_bytes() == before


def test_output_that_the_input_is_read_from(tmp_path, scene, model):
    vrt = tmp_path / "scene.vrt"
    gdal.Translate(str(vrt), str(scene), format="VRT")  # reads scene.tif
    before = scene.read_bytes()
    result = cli(str(vrt), str(scene), "--model", str(model))
    assert result.returncode != 0 and "which this run reads from" in result.stderr
    assert scene.read_bytes() == before
    outer = tmp_path / "outer.vrt"
    gdal.BuildVRT(str(outer), [str(vrt)])  # reads scene.vrt, which reads scene.tif
    inner_xml = tmp_path / "inner.xml"  # a VRT under another extension
    inner_xml.write_text(vrt.read_text())
    of_xml = tmp_path / "of_xml.vrt"
    gdal.BuildVRT(str(of_xml), [str(inner_xml)])
    by_name = tmp_path / "by_name.vrt"  # a source only GDAL resolves
    gdal.BuildVRT(str(by_name), [f"GTIFF_DIR:1:{scene}"])
    for source in (outer, of_xml, by_name):
        result = cli(str(source), str(scene), "--model", str(model))
        assert result.returncode != 0 and "which this run reads from" in result.stderr
        assert scene.read_bytes() == before
    link = tmp_path / "link.tif"
    link.symlink_to(scene)  # the same file under another name
    result = cli(str(link), str(scene), "--model", str(model))
    assert result.returncode != 0 and "the input path" in result.stderr
    assert scene.read_bytes() == before


def test_output_folder_not_writable_or_missing(tmp_path, scene, model):
    out = tmp_path / "missing" / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out, "does not exist")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # Root may write anywhere on disk, but not into /proc.
    target = Path("/proc") if os.access(locked, os.W_OK) else locked
    try:
        result = cli(str(scene), str(target / "out.tif"), "--model", str(model))
    finally:
        locked.chmod(0o700)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (target / "out.tif").exists()


def test_sun_needed_but_unknown(tmp_path, scene):
    model = write_test_model(tmp_path / "sun.onnx", sun_mode="rotate")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out, "sun azimuth")


def test_non_numeric_sun_azimuth(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model), "--sun-azimuth", "nan"),
                   out, "sun azimuth must be a number")


def test_north_unknown_for_a_model_that_rotates(tmp_path):
    ortho = "+proj=ortho +lat_0=0 +lon_0=0 +R=3396190 +units=m"
    wkt = osr.SpatialReference()
    wkt.ImportFromProj4(ortho)
    source = write_raster(tmp_path / "o.tif", ramp(100, 100), (1e7, 1.0, 0, 1e7, 0, -1.0),
                          wkt.ExportToWkt())  # the scene's centre is off the globe
    model = write_test_model(tmp_path / "rotate.onnx", sun_mode="rotate")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model), "--sun-azimuth", "100"),
                   out, "Where north points cannot be found")


def test_output_that_is_a_folder(tmp_path, scene, model):
    folder = tmp_path / "dtm.tif"
    folder.mkdir()
    result = cli(str(scene), str(folder), "--model", str(model))
    assert result.returncode == 1 and "disk full" not in result.stderr
    assert folder.is_dir() and not any(folder.iterdir())


def test_cuda_forced_without_cuda(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model), "--provider", "cuda"), out,
                   "CUDA was requested")


DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from mars_dtm_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_mid_run_leaves_nothing(tmp_path, model):
    noisy = np.random.default_rng(1).integers(0, 255, (1500, 1500)).astype(np.uint8)
    source = write_raster(tmp_path / "big.tif", noisy, GT)
    out = tmp_path / "out.tif"
    env = plugin_env()
    result = subprocess.run([sys.executable, "-c", DISK_FULL, "predict", str(source), str(out),
                             "--model", str(model)], capture_output=True, text=True, env=env,
                            cwd=PLUGIN_HOME, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "model.onnx"]


CLOSE_UNDER_LIMIT = """
import resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from osgeo import gdal
gdal.UseExceptions()
from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.writer import DtmWriter
writer = DtmWriter(sys.argv[1], 600, 600, (0, 1, 0, 0, 0, -1), "")
rows = np.random.default_rng(0).normal(size=(600, 600)).astype(np.float32)
try:
    for y0 in range(0, 600, 256):
        writer.write_rows(y0, rows[y0 : y0 + 256].copy())
    writer.finish((0.0, 1.0, 0.0, 1.0))
except DtmError as exc:
    print(exc)
    sys.exit(1)
"""


@pytest.mark.parametrize("short_by", [64, 5000])
def test_disk_full_while_closing_the_output_leaves_nothing(tmp_path, short_by):
    """GDAL writes the last blocks and the directory on closing and cannot raise there."""
    env = plugin_env()

    def write(path: Path, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CLOSE_UNDER_LIMIT, str(path), str(limit)],
                              capture_output=True, text=True, env=env, timeout=120)

    assert write(tmp_path / "full.tif", 0).returncode == 0
    size = (tmp_path / "full.tif").stat().st_size
    folder = tmp_path / "short"
    folder.mkdir()
    result = write(folder / "out.tif", size - short_by)
    assert result.returncode == 1 and "is the disk full?" in result.stdout, result.stderr
    assert result.stderr == ""  # GDAL's complaints while closing are in the one message
    assert list(folder.iterdir()) == []


INTERLEAVED_CLOSES = """
import resource, signal, sys, threading
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from osgeo import gdal
gdal.UseExceptions()
from mars_dtm_plugin.core.writer import _closing_errors

a_inside, b_inside, a_out = threading.Event(), threading.Event(), threading.Event()
errors = {}

def run_a():  # a run that closes its file well, and is done first
    with _closing_errors() as errors["a"]:
        a_inside.set()
        b_inside.wait()
    a_out.set()

def run_b():  # a run whose file fails as it closes, after run a is done
    a_inside.wait()
    with _closing_errors() as errors["b"]:
        b_inside.set()
        a_out.wait()
        ds = gdal.GetDriverByName("GTiff").Create(f"{sys.argv[1]}/b.tif", 400, 400, 1,
                                                  gdal.GDT_Float32)
        try:
            ds.GetRasterBand(1).WriteArray(np.ones((400, 400), np.float32))
        except RuntimeError:
            pass
        ds = None

runs = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
for t in runs:
    t.start()
for t in runs:
    t.join()
print(len(errors["a"]), len(errors["b"]) > 0, sys.unraisablehook is sys.__unraisablehook__)

class Unrelated:
    def __del__(self):
        raise ValueError("not a closing error")

Unrelated()  # still reported as Python reports it
"""


def test_closing_errors_stay_with_their_run(tmp_path):
    # Runs in a QGIS batch close their files at once: a file that fails to close is its own
    # run's error, whichever run started or ended first.
    result = subprocess.run([sys.executable, "-c", INTERLEAVED_CLOSES, str(tmp_path)],
                            capture_output=True, text=True, env=plugin_env(),
                            cwd=PLUGIN_HOME, timeout=120)
    assert result.stdout.split() == ["0", "True", "True"], result.stderr  # hook gone after
    assert "Exception ignored" in result.stderr and "not a closing error" in result.stderr
    assert "delete_Dataset" not in result.stderr


def test_the_closing_hook_never_takes_itself_for_the_one_it_stands_in_for(monkeypatch):
    from mars_dtm_plugin.core import writer

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    with writer._closing_errors():
        pass
    # Left installed by another copy of the plugin, reloaded while this one was closing a file.
    sys.unraisablehook = writer._collect_closing_error
    with writer._closing_errors():
        pass
    assert sys.unraisablehook is sys.__unraisablehook__  # not itself: that would recurse


def test_a_model_with_a_fixed_batch_gets_full_batches(tmp_path):
    image = np.random.default_rng(3).integers(1, 255, (64, 150)).astype(np.uint8)
    source = write_raster(tmp_path / "scene.tif", image, GT)  # 8 tiles: batches of 3, 3 and 2
    heights = {}
    for name, dims in (("dynamic", ["n", 1, "h", "w"]), ("fixed", [3, 1, "h", "w"])):
        model = write_test_model(tmp_path / f"{name}.onnx", dims=dims)
        out = tmp_path / f"{name}.tif"
        predict_dtm(str(source), str(out), PredictOptions(model_path=str(model)))
        heights[name] = gdal.Open(str(out)).ReadAsArray()
    np.testing.assert_array_equal(heights["fixed"], heights["dynamic"])


def test_a_model_whose_input_size_contradicts_its_tile_size(tmp_path, scene):
    model = write_test_model(tmp_path / "m.onnx", dims=["n", 1, 32, 32])  # contract: 64
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out,
                   "takes 32 x 32 px input, but its metadata says tile_size 64")


def test_a_model_failing_while_it_runs(tmp_path, scene):
    model = write_test_model(tmp_path / "m.onnx", "one_tile")  # refuses a batch of two
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out, "failed on a batch")


def test_output_that_is_not_a_geotiff(tmp_path, scene, model):
    out = tmp_path / "out.png"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out,
                   "must be a GeoTIFF (.tif) file, not 'out.png'")
    out = tmp_path / ".tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out,
                   "The output '.tif' needs a name before its extension.")


def test_batch_size_below_one(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model), "--batch-size", "0"), out,
                   "batch size must be at least 1 tile, not 0")


def test_a_model_returning_nan(tmp_path, scene):
    model = write_test_model(tmp_path / "nan.onnx", "nan")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model)), out,
                   "returned heights that are not numbers")


def test_a_model_of_more_than_one_channel(tmp_path, scene):
    out = tmp_path / "out.tif"
    two = write_test_model(tmp_path / "two.onnx", "two_channels")
    rgb = write_test_model(tmp_path / "rgb.onnx", dims=["batch", 3, "height_px", "width_px"])
    for model in (two, rgb):  # refused as loaded, before any tile is read
        assert_refused(cli(str(scene), str(out), "--model", str(model)), out,
                       "must have one input and one output of shape [batch, 1, height, width]")


def test_a_folder_given_as_output_or_model_is_named_as_such(tmp_path, scene, model):
    folder = tmp_path / "dtm.tif"
    folder.mkdir()
    result = cli(str(scene), str(folder), "--model", str(model))
    assert result.returncode == 1
    assert result.stderr == f"error: The output '{folder}' is a folder; give a file name " \
                            "ending in .tif.\n"
    assert not list(folder.iterdir())
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(tmp_path)), out,
                   f"The model file '{tmp_path}' is a folder.")


def test_without_onnxruntime_the_command_says_how_to_install_it_in_its_python(tmp_path, scene):
    blocked = ("import sys; sys.modules['onnxruntime'] = None; "
               "from mars_dtm_plugin.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out.tif"
    env = plugin_env()
    result = subprocess.run([sys.executable, "-c", blocked, "predict", str(scene), str(out),
                             "--sun-azimuth", "270"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert_refused(result, out, f"install it there, without upgrading numpy: "
                                f"{shlex.quote(sys.executable)} -m pip install onnxruntime ")
    assert "QGIS" not in result.stderr


def test_write_protected_output_is_kept(tmp_path, scene, model):
    out = tmp_path / "kept.tif"
    out.write_bytes(b"an earlier result")
    out.chmod(0o444)
    result = cli(str(scene), str(out), "--model", str(model))
    assert result.returncode == 1 and "write-protected" in result.stderr
    assert out.read_bytes() == b"an earlier result"


@pytest.mark.parametrize("sticky", [True, False])
def test_another_users_output_in_a_sticky_folder_is_refused_before_the_run(
        tmp_path, monkeypatch, sticky):
    """In /tmp and shared scratch folders only a file's owner may replace it: the run would
    end, after all its work, failing to rename the new DTM over it."""
    from mars_dtm_plugin.core.writer import check_output_path

    folder = tmp_path / "scratch"
    folder.mkdir()
    folder.chmod(0o1777 if sticky else 0o777)
    out = folder / "dtm.tif"
    out.write_bytes(b"another user's DTM")
    monkeypatch.setattr(os, "geteuid", lambda: out.stat().st_uid + 4242)  # someone else
    if sticky:
        with pytest.raises(DtmError, match="belongs to another user in a folder where only"):
            check_output_path(str(tmp_path / "in.tif"), str(out))
    else:
        check_output_path(str(tmp_path / "in.tif"), str(out))


@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 981), (15, 40)])
def test_an_image_too_small_to_show_relief_is_refused(tmp_path, model, rows, cols):
    path = write_raster(tmp_path / "tiny.tif", ramp(rows, cols), GT)
    out = tmp_path / "out.tif"
    assert_refused(cli(str(path), str(out), "--model", str(model)), out,
                   f"The input is {cols} x {rows} pixels, too small to read relief from")


def test_palette_image_is_refused(tmp_path, model):
    path = write_raster(tmp_path / "palette.tif", ramp(50, 50).astype(np.uint8), GT)
    ds = gdal.Open(str(path), gdal.GA_Update)
    table = gdal.ColorTable()
    for index in range(256):
        table.SetColorEntry(index, (255 - index, index, 0, 255))
    ds.GetRasterBand(1).SetColorTable(table)
    ds = None
    out = tmp_path / "out.tif"
    assert_refused(cli(str(path), str(out), "--model", str(model)), out, "colour-table")


def test_an_alpha_band_is_refused(tmp_path, model):
    planes = np.stack([ramp(50, 50)] * 2)
    path = write_raster(tmp_path / "grey_alpha.tif", planes, GT,
                        colour=[gdal.GCI_GrayIndex, gdal.GCI_AlphaBand])
    out = tmp_path / "out.tif"
    assert_refused(cli(str(path), str(out), "--model", str(model), "--band", "2"), out,
                   "Band 2 is the alpha (transparency) band, not brightness")


def test_a_complex_band_is_refused(tmp_path, model):
    source = write_raster(tmp_path / "real.tif", ramp(50, 50), GT)
    path = tmp_path / "complex.tif"
    gdal.Translate(str(path), str(source), outputType=gdal.GDT_CFloat32)
    out = tmp_path / "out.tif"
    assert_refused(cli(str(path), str(out), "--model", str(model)), out,
                   "Band 1 holds complex numbers (as radar data do), not brightness")


def test_degenerate_geotransform_and_gcps_alone_without_pixel_size(tmp_path, model):
    source = write_raster(tmp_path / "source.tif", ramp(50, 50), GT)
    flat = tmp_path / "flat.vrt"  # a grid whose pixels have no size
    gdal.Translate(str(flat), str(source), format="VRT")
    flat.write_text(re.sub(r"<GeoTransform>.*</GeoTransform>",
                           "<GeoTransform>0,0,0,0,0,0</GeoTransform>", flat.read_text()))
    out = tmp_path / "out.tif"
    assert_refused(cli(str(flat), str(out), "--model", str(model)), out, "degenerate")
    tiny = write_raster(tmp_path / "tiny.tif", ramp(50, 50), (0, 1e-300, 0, 0, 0, -1e-300))
    assert_refused(cli(str(tiny), str(out), "--model", str(model)), out, "degenerate")
    gcps = write_raster(tmp_path / "gcps.tif", ramp(50, 50), None)
    ds = gdal.Open(str(gcps), gdal.GA_Update)
    srs = ds.GetSpatialRef()
    points = [gdal.GCP(100 + x, 900 - 2 * y, 0, x, y) for x, y in ((0, 0), (50, 0), (0, 50))]
    ds.SetGCPs(points, srs)
    ds = None
    assert_refused(cli(str(gcps), str(out), "--model", str(model)), out,
                   "ground control points")
    # With its pixel size it runs, and the DTM keeps the points, so it warps as the image does.
    assert cli(str(gcps), str(out), "--model", str(model), "--pixel-size", "1",
               "--quiet").returncode == 0
    dtm = gdal.Open(str(out))
    assert dtm.GetGeoTransform(can_return_null=True) is None
    assert [(p.GCPPixel, p.GCPLine, p.GCPX, p.GCPY) for p in dtm.GetGCPs()] == \
        [(p.GCPPixel, p.GCPLine, p.GCPX, p.GCPY) for p in points]
    assert dtm.GetGCPSpatialRef().IsSame(srs)


def test_an_image_placed_by_rpcs_alone_needs_its_pixel_size_and_keeps_them(tmp_path, model):
    source = write_rpc_only(tmp_path / "raw.tif")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model)), out, "RPCs")
    assert cli(str(source), str(out), "--model", str(model), "--pixel-size", "0.5",
               "--quiet").returncode == 0
    dtm = gdal.Open(str(out))
    assert dtm.GetGeoTransform(can_return_null=True) is None
    kept = dtm.GetMetadata("RPC")
    assert {k: float(kept[k]) for k in RPC if "COEFF" not in k} == \
        {k: float(v) for k, v in RPC.items() if "COEFF" not in k}
    assert [float(c) for c in kept["SAMP_NUM_COEFF"].split()] == \
        [float(c) for c in RPC["SAMP_NUM_COEFF"].split()]


@pytest.mark.parametrize("size", ["inf", "1e400", "-2"])
def test_pixel_size_that_is_not_a_positive_number(tmp_path, model, size):
    source = write_raster(tmp_path / "plain.tif", ramp(50, 50), None, wkt="")
    out = tmp_path / "out.tif"
    assert_refused(cli(str(source), str(out), "--model", str(model), "--pixel-size", size),
                   out, "positive number")


@pytest.mark.parametrize("sent, ignored", [(signal.SIGTERM, False), (signal.SIGHUP, True)])
def test_sigterm_cancels_like_ctrl_c_and_nohup_is_respected(tmp_path, model, sent, ignored):
    source = write_raster(tmp_path / "big.tif", (ramp(5000, 5000) % 200).astype(np.uint8), GT)
    out = tmp_path / "out" / "dtm.tif"
    out.parent.mkdir()
    env = plugin_env()
    # As nohup starts a program: SIGHUP ignored, which the run must leave as it is.
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignored else None
    run = subprocess.Popen([sys.executable, "-m", "mars_dtm_plugin", "predict", str(source),
                            str(out), "--model", str(model)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=PLUGIN_HOME, preexec_fn=ignore)
    deadline = time.monotonic() + 120
    while not any(out.parent.iterdir()) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the run writes its partial output
    run.send_signal(sent)
    stdout, stderr = run.communicate(timeout=120)
    if ignored:
        assert run.returncode == 0, stderr
        assert [p.name for p in out.parent.iterdir()] == ["dtm.tif"]
    else:
        assert run.returncode == 130, stderr
        assert not any(out.parent.iterdir())
        # What the run was doing was said as it started, not kept for an end it never had.
        assert "Execution provider: CPUExecutionProvider" in stdout


def test_an_onnxruntime_that_fails_to_load_is_not_called_missing(tmp_path, scene, model):
    broken = tmp_path / "site" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise ImportError("numpy.core.multiarray failed to import")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken.parent), *sys.path])}
    out = tmp_path / "out.tif"
    result = subprocess.run([sys.executable, "-m", "mars_dtm_plugin", "predict", str(scene),
                             str(out), "--model", str(model)],
                            capture_output=True, text=True, env=env, cwd=PLUGIN_HOME, timeout=120)
    assert_refused(result, out, "installed but does not load (numpy.core.multiarray")


def test_threads_below_one(tmp_path, scene, model):
    out = tmp_path / "out.tif"
    assert_refused(cli(str(scene), str(out), "--model", str(model), "--threads", "0"), out,
                   "threads must be at least 1")
    assert cli(str(scene), str(out), "--model", str(model), "--threads", "1",
               "--quiet").returncode == 0


def test_an_image_one_value_only_in_its_sample_is_not_refused(tmp_path, model):
    """The scene sample reads every fourth row of this one: all 100 there, texture between."""
    image = np.full((4096, 600), 100, np.uint8)
    image[1::2] = np.random.default_rng(0).integers(60, 200, (2048, 600), dtype=np.uint8)
    source = write_raster(tmp_path / "rows.tif", image, GT)
    from mars_dtm_plugin.core.raster import InputRaster

    raster = InputRaster(str(source))
    assert np.ptp(raster.sample()) == 0 and not raster.one_value()
    out = tmp_path / "out.tif"
    assert cli(str(source), str(out), "--model", str(model), "--quiet").returncode == 0
