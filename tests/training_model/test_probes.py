"""The probes, checked on models whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from tests.models import write_test_model
from tests.rasters import write_raster
from training.probes.low_contrast import main


def test_low_contrast_probe_measures_the_slope_up_towards_the_sun(tmp_path, capsys):
    # Brightness rising eastwards by 1 a pixel about a mean of 148, lit from the east at 45
    # degrees: the identity model's heights are 2 m x (I / mean - 1), a slope of atan(1 / 148)
    # up towards the sun, which falls with the contrast.
    image = np.tile(np.arange(100, 197, dtype=np.float32), (96, 1)).astype(np.uint8)
    source = write_raster(tmp_path / "east.tif", image, (0.0, 2.0, 0.0, 0.0, 0.0, -2.0))
    model = write_test_model(tmp_path / "m.onnx", "identity", input_scaling="mean_ratio",
                             sun_mode="rotate")
    assert main(["--image", str(source), "--model", str(model), "--sun", "90", "45"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    table = {float(r[0]): r[1:] for r in rows}
    assert list(table) == [1.0, 0.5, 0.3, 0.2, 0.1, 0.03, 0.01]
    # A hundredth of 97 levels rounds to one: the run refuses it, the probe says so.
    assert table.pop(0.01)[0] == " refused: The image is 148 wherever it has data: there is no " \
        "shading to read heights from. "
    table = {factor: [float(v) for v in row] for factor, row in table.items()}
    contrast, _, slope, about_plane = table[1.0]
    assert contrast == pytest.approx(np.std(image) / np.mean(image), abs=1e-4)
    assert slope == pytest.approx(math.degrees(math.atan(1 / 148.0)), rel=1e-2)
    assert about_plane < 0.1  # a plane and nothing else
    assert table[0.5][2] == pytest.approx(slope / 2, rel=0.05)


def test_an_image_other_than_karoo_needs_its_sun(tmp_path, capsys):
    source = write_raster(tmp_path / "other.tif", np.full((32, 32), 9, np.uint8),
                          (0.0, 2.0, 0.0, 0.0, 0.0, -2.0))
    with pytest.raises(SystemExit) as exit_info:
        main(["--image", str(source)])
    assert exit_info.value.code == 2
    assert "give --sun AZ EL for an image other than the Karoo scene" in capsys.readouterr().err


def test_the_coarse_pass_probe_writes_each_pass_into_a_copy_of_the_model(tmp_path):
    from mars_dtm_plugin.core.model import load_contract
    from training.probes.coarse_pass import model_copies

    model = write_test_model(tmp_path / "m.onnx", coarse_pass={"factor": 4, "sigma_px": 8.0})
    copies = model_copies(model, ["2x24", "3x48"], tmp_path)
    assert list(copies) == ["one_pass", "k2s24", "k3s48"]
    assert load_contract(copies["one_pass"]).coarse_pass is None  # the model's own is gone
    assert load_contract(copies["k2s24"]).coarse_pass == {"factor": 2, "sigma_px": 24.0}
    assert load_contract(copies["k3s48"]).coarse_pass == {"factor": 3, "sigma_px": 48.0}
    assert load_contract(copies["k3s48"]).version == load_contract(model).version


def _run(path, image):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


def test_the_model_less_its_blank_response_is_flat_on_a_blank_image(tmp_path, capsys):
    from mars_dtm_plugin.core.model import load_contract
    from training.probes.doubled import main as doubled_main

    image = np.random.default_rng(0).normal(size=(2, 1, 64, 96)).astype(np.float32)
    ramp = write_test_model(tmp_path / "ramp.onnx", "ramp", sun_mode="rotate",
                            sun_azimuth=270.0, tile_size=64)
    assert doubled_main(["less-blank", str(ramp), str(tmp_path / "ramp_less.onnx")]) == 0
    # Height = column number whatever the image: all of it is the blank response, rising by a
    # pixel per pixel away from a sun at the frame's left.
    assert ("over a 64 px tile: standard deviation 18.473; rise away from the sun 1.00000 per "
            "pixel (45.000 degrees") in capsys.readouterr().out
    np.testing.assert_array_equal(_run(ramp, image)[0, 0, 0, :3], [1, 2, 3])
    np.testing.assert_array_equal(_run(tmp_path / "ramp_less.onnx", image), 0)
    identity = write_test_model(tmp_path / "identity.onnx")  # blank in, blank out: kept
    doubled_main(["less-blank", str(identity), str(tmp_path / "identity_less.onnx")])
    np.testing.assert_array_equal(_run(tmp_path / "identity_less.onnx", image), image)
    assert load_contract(tmp_path / "identity_less.onnx") == load_contract(identity)


def test_the_flip_mean_averages_each_tile_with_its_mirror_flipped_back(tmp_path):
    from training.probes.doubled import main as doubled_main

    image = np.random.default_rng(0).normal(size=(2, 1, 64, 96)).astype(np.float32)
    # A model that sees the rows' order: each row's heights are the running sum down the rows.
    model = write_test_model(tmp_path / "m.onnx", "ramp", sun_mode="rotate", sun_azimuth=90.0)
    proto = onnx.load(str(model))
    proto.graph.node[0].input[1] = "one"  # image * 1 (not * 0): heights follow the image
    proto.graph.node[2].input[1] = "rows"
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2, np.int64), "rows"))
    onnx.save(proto, str(model))
    assert doubled_main(["flip-mean", str(model), str(tmp_path / "mean.onnx")]) == 0
    down = np.cumsum(image + 1, axis=2)
    up = np.cumsum((image + 1)[:, :, ::-1], axis=2)[:, :, ::-1]
    np.testing.assert_allclose(_run(model, image), down, rtol=1e-5)
    np.testing.assert_allclose(_run(tmp_path / "mean.onnx", image), (down + up) / 2, rtol=1e-5)


def test_the_flip_mean_needs_the_sun_at_the_left_or_right(tmp_path, capsys):
    from training.probes.doubled import main as doubled_main

    model = write_test_model(tmp_path / "m.onnx", sun_mode="rotate", sun_azimuth=180.0)
    with pytest.raises(SystemExit) as exit_info:
        doubled_main(["flip-mean", str(model), str(tmp_path / "out.onnx")])
    assert exit_info.value.code == 2 and "(azimuth 90 or 270), not 180" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_the_doubled_probe_refuses_tensor_names_it_would_clash_with(tmp_path, capsys):
    from training.probes.doubled import main as doubled_main

    model = write_test_model(tmp_path / "m.onnx", "ramp")
    proto = onnx.load(str(model))
    proto.graph.node[0].output[0] = proto.graph.node[1].input[0] = "second/zeros"
    onnx.save(proto, str(model))
    with pytest.raises(SystemExit) as exit_info:
        doubled_main(["less-blank", str(model), str(tmp_path / "out.onnx")])
    assert exit_info.value.code == 2
    assert "m.onnx: the model already has tensors named first/... or second/..." in \
        capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_the_doubled_probe_will_not_overwrite_its_model(tmp_path, capsys):
    from training.probes.doubled import main as doubled_main

    model = write_test_model(tmp_path / "m.onnx")
    before = model.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        doubled_main(["less-blank", str(model), str(model)])
    assert exit_info.value.code == 2 and "OUT must not be MODEL" in capsys.readouterr().err
    assert model.read_bytes() == before
    with pytest.raises(SystemExit) as exit_info:
        doubled_main(["flip-mean", str(tmp_path / "none.onnx"), str(tmp_path / "out.onnx")])
    assert exit_info.value.code == 2 and "none.onnx is not a file" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()
