import subprocess
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mars_dtm_plugin.core.contract import parse_contract
from training.export_onnx import code_revision, parity
from training.export_onnx import main as export_main
from training.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def exported(train_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    trainer = train_tiny(out, 2)
    checkpoint = trainer.save()
    assert export_main([str(checkpoint), str(out / "g.onnx"), "--version", "9.9"]) == 0
    return trainer.generator.cpu().eval(), out / "g.onnx"  # the GPU, if any, trained it


def test_exported_model_passes_the_engine_contract(exported):
    _, path = exported
    model = onnx.load(str(path))
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    assert contract.version == "9.9"
    assert contract.sun_mode == "rotate" and contract.height_units == "gsd"
    assert contract.sun_azimuth == 270.0  # the canonical azimuth it was trained to
    assert contract.extra["marsdtm:size_multiple"] == 4
    assert contract.extra["marsdtm:training_steps"] == 2
    assert contract.extra["marsdtm:adversarial"] is False
    assert contract.input_scaling == "mean_ratio"
    assert contract.coarse_pass is None  # one pass unless asked
    assert contract.standardization_std == [0.3]
    assert contract.extra["marsdtm:architecture"]["shading_prior"] is True
    assert contract.extra["marsdtm:architecture"]["prior_window"] == 15
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["height"]
    dims = [[d.dim_value or d.dim_param for d in io.type.tensor_type.shape.dim]
            for io in (*model.graph.input, *model.graph.output)]
    assert dims == [["batch", 1, "height_px", "width_px"]] * 2
    assert model.opset_import[0].version == 17


def test_a_fine_tune_with_the_gan_says_so_and_counts_the_steps_it_started_from(
        exported, pool, tmp_path):
    _, path = exported  # 2 steps, no GAN
    cfg = TrainConfig(data=str(pool), out=str(tmp_path), patch_size=64, batch_size=4, steps=1,
                      channels=[4, 8, 16], threads=1, checkpoint_every=1000,
                      input_scaling="mean_ratio", norm_mean=0.0, norm_std=0.3,
                      shading_prior=True, prior_window=15, gan=True,
                      init_from=str(path.parent / "last.pt"))
    tuned = Trainer(cfg)
    tuned.fit()
    assert export_main([str(tuned.save()), str(tmp_path / "tuned.onnx")]) == 0
    model = onnx.load(str(tmp_path / "tuned.onnx"))
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    assert contract.extra["marsdtm:adversarial"] is True
    assert contract.extra["marsdtm:training_steps"] == 3


def test_onnxruntime_matches_pytorch_at_another_shape(exported):
    model, path = exported
    assert parity(model, path, shape=(3, 1, 40, 72)) < 1e-4
    x = np.random.default_rng(1).normal(size=(1, 1, 48, 32)).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(["height"], {"image": x})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 1, 48, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_parity_is_the_largest_difference_not_a_typical_one(exported):
    model, path = exported

    class OnePixelOff(torch.nn.Module):
        def forward(self, x):
            y = model(x).clone()
            y[..., 5, 7] += 1.0
            return y

    assert parity(OnePixelOff(), path, shape=(1, 1, 64, 64)) == pytest.approx(1.0, abs=1e-3)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    assert export_main([str(bad), str(tmp_path / "x.onnx")]) == 2
    assert "not a training checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("options, code, words", [
    (["--tolerance", "-1"], 1, "differs from PyTorch"),  # parity can never pass
    (["--tiles-overlap", "60"], 2, "'tiles_overlap'"),
    (["--coarse-pass", "1x24"], 2, "'marsdtm:coarse_pass'"),
])
def test_a_failed_export_leaves_no_file(exported, tmp_path, capsys, options, code, words):
    checkpoint = exported[1].parent / "last.pt"
    assert checkpoint.is_file()
    assert export_main([str(checkpoint), str(tmp_path / "m.onnx"), *options]) == code
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_coarse_pass_asked_for_is_in_the_contract(exported, tmp_path, capsys):
    checkpoint = exported[1].parent / "last.pt"
    assert export_main([str(checkpoint), str(tmp_path / "m.onnx"), "--coarse-pass", "3x24"]) == 0
    model = onnx.load(str(tmp_path / "m.onnx"))
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    assert contract.coarse_pass == {"factor": 3, "sigma_px": 24.0}
    with pytest.raises(SystemExit):
        export_main([str(checkpoint), str(tmp_path / "n.onnx"), "--coarse-pass", "three"])
    assert "expected FACTORxSIGMA, such as 3x24, not 'three'" in capsys.readouterr().err


def test_without_a_version_the_export_is_a_development_build_of_its_code(exported, tmp_path):
    checkpoint = exported[1].parent / "last.pt"
    assert export_main([str(checkpoint), str(tmp_path / "m.onnx")]) == 0
    model = onnx.load(str(tmp_path / "m.onnx"))
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    assert contract.version == f"0.0.0+{code_revision()}"


@pytest.mark.parametrize("options, words", [
    (["--version", " "], "--version must not be empty"),
    ([], "is a folder; give the ONNX file's name"),
])
def test_a_bad_version_or_a_folder_as_out_is_refused_before_exporting(exported, tmp_path,
                                                                       capsys, options, words):
    checkpoint = exported[1].parent / "last.pt"
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(checkpoint), str(tmp_path), *options])  # OUT: a folder
    assert exit_info.value.code == 2 and words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_weights_without_a_training_config_are_refused(tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save({"generator": {}}, bare)
    assert export_main([str(bare), str(tmp_path / "x.onnx")]) == 2
    assert f"{bare} is not a checkpoint of training.train (it lacks config, " \
        "generator_config, step)" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_one_sentence(exported, tmp_path, capsys):
    checkpoint = exported[1].parent / "last.pt"
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "m.onnx"  # its folder would have to replace a file
    assert export_main([str(checkpoint), str(out)]) == 2
    assert f"cannot write {out}: " in capsys.readouterr().err
    assert export_main([str(checkpoint), str(tmp_path / "new" / "m.onnx")]) == 0  # made


def test_a_file_that_is_no_pickle_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("plain text, not a checkpoint")
    assert export_main([str(bad), str(tmp_path / "x.onnx")]) == 2
    assert f"cannot read the checkpoint {bad}" in capsys.readouterr().err


def test_a_patch_size_off_the_size_multiple_is_not_exported(pool, tmp_path, capsys):
    # Checkpoints from before train checked it: 48 px patches on a U-Net of 6 levels.
    cfg = TrainConfig(data=str(pool), out=str(tmp_path), patch_size=48, channels=[2] * 6,
                      threads=1)
    checkpoint = Trainer(cfg).save()
    assert export_main([str(checkpoint), str(tmp_path / "x.onnx")]) == 2
    assert "patch size 48 is not a multiple of its U-Net's size multiple 32" in \
        capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_the_code_revision_says_when_the_code_was_edited(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.py").write_text("steps = 1\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    commit = git("rev-parse", "--short=7", "HEAD")
    git("tag", "-a", "v1.0", "-m", "a release")  # a tag does not replace the commit
    assert code_revision(tmp_path) == commit
    (tmp_path / "train.py").write_text("steps = 2\n")
    assert code_revision(tmp_path) == f"{commit}-dirty"
    assert code_revision(tmp_path.parent / "nowhere") == "unknown"


def test_weights_that_are_not_numbers_are_not_exported(exported, tmp_path, capsys):
    state = torch.load(exported[1].parent / "last.pt", weights_only=True)
    first = next(k for k, v in state["generator"].items() if v.is_floating_point())
    state["generator"][first].fill_(float("nan"))  # as a diverged run leaves them
    torch.save(state, tmp_path / "nan.pt")
    (tmp_path / "config.json").write_bytes((exported[1].parent / "config.json").read_bytes())
    assert export_main([str(tmp_path / "nan.pt"), str(tmp_path / "m.onnx")]) == 1
    assert "gives heights that are not numbers" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_the_checkpoint_itself_as_out_is_refused(exported, tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes((exported[1].parent / "last.pt").read_bytes())
    kept = checkpoint.read_bytes()
    with pytest.raises(SystemExit):
        export_main([str(checkpoint), str(tmp_path / "." / "last.pt")])
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert checkpoint.read_bytes() == kept


def test_a_checkpoint_with_damaged_bytes_is_refused_by_name(exported, tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    data = bytearray((exported[1].parent / "last.pt").read_bytes())
    with zipfile.ZipFile(exported[1].parent / "last.pt") as archive:
        part = max(archive.infolist(), key=lambda info: info.file_size)
    # The part's bytes start after its local header: 30 bytes, its name and its extra field.
    name_length = int.from_bytes(data[part.header_offset + 26:part.header_offset + 28], "little")
    extra_length = int.from_bytes(data[part.header_offset + 28:part.header_offset + 30], "little")
    middle = part.header_offset + 30 + name_length + extra_length + part.file_size // 2
    data[middle:middle + 16] = bytes(16)
    checkpoint.write_bytes(bytes(data))
    assert export_main([str(checkpoint), str(tmp_path / "m.onnx")]) == 2
    assert f"its part {part.filename} is damaged" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_deep_u_net_exports_and_is_checked_at_its_own_size_multiple(exported, tmp_path):
    from training.export_onnx import export
    from training.model import Generator, GeneratorConfig

    deep = Generator(GeneratorConfig(channels=(2,) * 7)).eval()  # sizes: multiples of 64
    assert deep.size_multiple == 64
    contract = parse_contract({p.key: p.value for p in onnx.load(str(exported[1])).metadata_props})
    path = export(deep, contract, tmp_path / "deep.onnx")
    assert parity(deep, path) < 1e-4  # at 320 x 448, not the traced 256 x 256
