"""The 8-bit model: its contract, its heights beside the original's, a run through the engine."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mars_dtm_plugin.core.contract import parse_contract
from training import synth
from training.evaluate import read_band
from training.export_onnx import main as export_main
from training.quantize import calibration_tiles, heights
from training.quantize import main as quantize_main
from training.synth import write_geotiff


@pytest.fixture(scope="module")
def exported(train_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize")
    assert export_main([str(train_tiny(out, 6).save()), str(out / "g.onnx"), "--version", "9.9",
                        "--coarse-pass", "2x16"]) == 0
    return out / "g.onnx"


@pytest.fixture(scope="module")
def quantised(exported, pool):
    out = exported.with_name("g8.onnx")
    assert quantize_main([str(exported), str(out), "--data", str(pool), "--samples", "16"]) == 0
    return out


def _contract(path):
    return parse_contract({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def _float_convs(path):
    """Convolutions whose weights are stored in floating point."""
    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in floats]


def test_the_8_bit_model_keeps_the_contract_under_its_own_version(exported, quantised):
    source, eight = _contract(exported), _contract(quantised)
    assert eight.version == "9.9+int8"
    assert {**vars(eight), "version": "9.9"} == vars(source)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(quantised)).graph.initializer]
    assert any(w.dtype == np.int8 and w.ndim == 4 for w in weights)  # convolution kernels
    # Standard operators only, in the exported model's operator set: what any runtime loads.
    model = onnx.load(str(quantised))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert {n.domain for n in model.graph.node} == {""}
    # The head (the heights) and the one convolution chosen stay in floating point.
    convs = [n.name for n in onnx.load(str(exported)).graph.node if n.op_type == "Conv"]
    kept = _float_convs(quantised)
    assert len(kept) == 2 and kept[-1] == convs[-1]


def test_a_version_given_is_carried_as_written(exported, pool, tmp_path):
    out = tmp_path / "q.onnx"
    version = '1.0 "rc1" C:\\x'
    assert quantize_main([str(exported), str(out), "--data", str(pool), "--samples", "4",
                          "--version", version]) == 0
    assert _contract(out).version == version


def test_the_upsampling_reads_no_shape(exported, quantised):
    """A factor read from a tensor's shape made onnxruntime dequantise and transpose the whole
    8-bit tensor only to read it."""
    for path in (exported, quantised):
        graph = onnx.load(str(path)).graph
        assert [n.op_type for n in graph.node].count("Resize") == 2
        assert not [n for n in graph.node if n.op_type == "Shape"]


def test_the_8_bit_heights_stay_near_the_originals(exported, quantised, pool):
    tiles = calibration_tiles(_contract(exported), pool, 24, seed=5)  # not the calibration's
    original, eight = heights(exported, tiles), heights(quantised, tiles)
    gap = np.sqrt(np.mean((eight - original) ** 2))
    assert 0 < gap < 0.1 * np.sqrt(np.mean(original**2))
    assert np.corrcoef(eight.ravel(), original.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("count", [0, 2])
def test_float_convs_says_how_many_besides_the_head(exported, pool, tmp_path, count):
    out = tmp_path / "g8.onnx"
    assert quantize_main([str(exported), str(out), "--data", str(pool), "--samples", "8",
                          "--float-convs", str(count)]) == 0
    assert len(_float_convs(out)) == count + 1


def test_the_engine_runs_the_8_bit_model_as_it_runs_the_original(exported, quantised, tmp_path):
    from mars_dtm_plugin.core.engine import PredictOptions, predict_dtm

    rng = np.random.default_rng(2)
    dem = synth.synthetic_dem(rng, 160)[:150, :140]
    source = write_geotiff(tmp_path / "scene.tif", synth.render(dem, 1.0, 300.0, 30.0, rng),
                           (0, 1.0, 0, 0, 0, -1.0))
    dtms = []
    for model in (exported, quantised):
        options = PredictOptions(model_path=str(model), sun_azimuth=300.0, sun_elevation=30.0,
                                 provider="cpu", threads=1)
        predict_dtm(str(source), str(tmp_path / f"{model.stem}.tif"), options)
        dtms.append(read_band(tmp_path / f"{model.stem}.tif")[0])
    assert dtms[1].shape == (150, 140) and np.isfinite(dtms[1]).all()
    assert np.corrcoef(dtms[0].ravel(), dtms[1].ravel())[0, 1] > 0.99


def test_the_model_itself_as_out_is_refused(exported, pool, capsys):
    before = exported.read_bytes()
    with pytest.raises(SystemExit):
        quantize_main([str(exported), str(exported), "--data", str(pool)])
    assert "OUT must not be the model it quantises" in capsys.readouterr().err
    assert exported.read_bytes() == before


def test_a_pool_without_shards_is_one_sentence_and_no_file(exported, tmp_path, capsys):
    out = tmp_path / "g8.onnx"
    assert quantize_main([str(exported), str(out), "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: no shard files (*.tar) in {tmp_path}"]
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_a_folder_as_out_or_a_checkpoint_as_model_is_one_sentence(exported, pool, tmp_path,
                                                                   capsys):
    with pytest.raises(SystemExit):
        quantize_main([str(exported), str(tmp_path), "--data", str(pool)])
    assert f"OUT {tmp_path} is a folder; give the file to write" in capsys.readouterr().err
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"PK\x03\x04 a torch checkpoint, not ONNX")
    out = tmp_path / "g8.onnx"
    assert quantize_main([str(checkpoint), str(out), "--data", str(pool)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {checkpoint} is not an ONNX model"]
    assert not out.exists()


def test_out_in_a_folder_not_made_yet_is_written_there(exported, quantised, pool, tmp_path):
    out = tmp_path / "new" / "g8.onnx"
    assert quantize_main([str(exported), str(out), "--data", str(pool), "--samples", "16"]) == 0
    assert out.read_bytes() == quantised.read_bytes()
