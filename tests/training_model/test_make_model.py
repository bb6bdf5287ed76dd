import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from osgeo import gdal

from mars_dtm_plugin.core.contract import parse_contract
from tests.conftest import SHARED_DATA
from training.make_model import DEFAULT_RECIPE, main


@pytest.mark.slow
def test_the_recipe_runs_end_to_end(tmp_path):
    if not (SHARED_DATA / "gale_hirise").is_dir():
        pytest.skip("the shared Gale HiRISE pair is absent")
    recipe = {
        "work": str(tmp_path / "work"), "version": "0.0.1", "seed": 1,
        "pool": {"size": 64, "synthetic": 12, "dem_shapes": 12, "val_each": 4,
                 "synthetic_relief": [0.35, 1.2]},
        "train": {"patch_size": 64, "batch_size": 4, "steps": 4, "channels": [4, 8, 16],
                  "threads": 1, "val_every": 2, "checkpoint_every": 2},
        "ablation": {"stop_at": 2},
        "finetune": {"steps": 2, "lr": 0.001, "distribution": 1.0},
        "export": {"coarse_pass": "2x16", "quantize": True},
        "evaluate": {"sets": ["gale"], "speed": False, "tilt_control": True},
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    bundle = tmp_path / "bundled.onnx"
    assert main(["--recipe", str(path), "--bundle", str(bundle)]) == 0
    model = onnx.load(str(bundle))
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    # The fine-tune of the main run, in 8 bits, is what ships; its steps add to the main run's.
    assert contract.version == "0.0.1" and contract.extra["marsdtm:training_steps"] == 4 + 2
    assert bundle.read_bytes() == (tmp_path / "work" / "onnx" / "finetune_int8.onnx").read_bytes()
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    floating = onnx.load(str(tmp_path / "work" / "onnx" / "finetune.onnx"))
    assert parse_contract({p.key: p.value for p in floating.metadata_props}).version == \
        "0.0.1+finetune"
    main_run = onnx.load(str(tmp_path / "work" / "onnx" / "main.onnx"))
    main_contract = parse_contract({p.key: p.value for p in main_run.metadata_props})
    assert main_contract.version == "0.0.1+main"  # what did not ship says which run it is
    # The recipe's coarse pass is in every model, so the ablation compares like with like.
    assert contract.coarse_pass == main_contract.coarse_pass == {"factor": 2, "sigma_px": 16.0}
    report = (tmp_path / "work" / "eval" / "report.md").read_text()
    for row in ("| finetune_int8 |", "| finetune |", "| main |", "| nogan_2 |", "| gan_2 |",
                "| flat |", "| sfs |", "| finetune_int8+true scene tilt |",
                "| sfs+true scene tilt |", "| truth-scene tilt |"):
        assert row in report
    # Gale is one evaluation tile: given the scene's tilt, no tilt error is left.
    gale = json.loads((tmp_path / "work" / "eval" / "metrics.json").read_text())["sets"]["gale"]
    assert gale["sfs+true scene tilt"]["tilt_rmse_m"] < 1e-3 < gale["sfs"]["tilt_rmse_m"]
    # and the truth without that tilt is the truth less the tile's plane: it has no detail error.
    assert gale["truth-scene tilt"]["detrended_rmse_m"] < 1e-3 < gale["truth-scene tilt"]["rmse_m"]
    # Deterministic: the same recipe again gives the same pool and the same weights.
    again = tmp_path / "again"
    assert main(["--recipe", str(path), "--work", str(again), "--stages", "data,train"]) == 0
    first = torch.load(tmp_path / "work" / "main" / "last.pt", weights_only=True)
    second = torch.load(again / "main" / "last.pt", weights_only=True)
    assert all(torch.equal(first["generator"][k], second["generator"][k])
               for k in first["generator"])


def test_a_recipe_without_its_keys_is_refused(tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"work": "x", "pool": {"size": 32}, "ablation": {}}))
    assert main(["--recipe", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the recipe {path} lacks version, seed, train, ablation.stop_at, "
        "pool.synthetic, pool.dem_shapes, pool.val_each, pool.synthetic_relief"]


def test_a_recipe_option_misspelt_or_unknown_is_refused_before_anything_runs(tmp_path,
                                                                           capsys):
    path = tmp_path / "recipe.json"
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["work"] = str(tmp_path / "work")
    recipe["export"]["quantise"] = True  # as the prose spells it
    recipe["evaluate"]["set"] = ["louth"]
    recipe["notes"] = "x"
    recipe["finetune"]["learning_rate"] = 0.1  # training.train's own options too
    path.write_text(json.dumps(recipe))
    assert main(["--recipe", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the recipe {path} has no option notes, export.quantise, evaluate.set, "
        "finetune.learning_rate"]
    assert not (tmp_path / "work").exists()
    path.write_bytes(b"\xff\xfe{")  # not UTF-8
    assert main(["--recipe", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read the recipe {path}: ")


@pytest.mark.parametrize("photometry", [-1, float("nan"), "2"])
def test_a_photometry_that_is_no_factor_is_refused_before_anything_renders(
        tmp_path, capsys, photometry):
    path = tmp_path / "recipe.json"
    recipe = {"work": str(tmp_path / "work"), "version": "0.0.1", "seed": 1, "train": {},
              "pool": {"size": 32, "synthetic": 2, "dem_shapes": 0, "val_each": 1,
                       "synthetic_relief": [0.35, 1.2], "photometry": photometry},
              "ablation": {"stop_at": 2}}
    path.write_text(json.dumps(recipe))
    assert main(["--recipe", str(path), "--stages", "data"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the recipe {path} gives pool.photometry {photometry!r}: it is a factor on the "
        "renderer's ranges, 0 or more (1 is the default)"]
    assert not (tmp_path / "work").exists()


def test_a_stage_without_what_it_needs_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "recipe.json"
    recipe = {"work": str(tmp_path / "work"), "version": "0.0.1", "seed": 1, "train": {},
              "pool": {"size": 32, "synthetic": 2, "dem_shapes": 0, "val_each": 1,
                       "synthetic_relief": [0.35, 1.2]}, "ablation": {"stop_at": 2}}
    path.write_text(json.dumps(recipe))
    bundle = tmp_path / "bundled.onnx"
    assert main(["--recipe", str(path), "--stages", "export", "--bundle", str(bundle)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == \
        "error: the export stage stopped: export of main/last.pt failed"  # after export's own
    assert not bundle.exists()


def test_an_interrupted_pool_is_rendered_again_not_kept(tmp_path, monkeypatch):
    from training import make_model
    from training.data import SyntheticPatches
    from training.shards import read_shards

    recipe = {"seed": 1, "train": {},
              "pool": {"size": 32, "synthetic": 6, "dem_shapes": 0, "val_each": 2,
                       "synthetic_relief": [0.35, 1.2]}}
    monkeypatch.setattr(make_model, "DEM_SHAPES", tmp_path / "none")  # synthetic only
    render = SyntheticPatches.raw
    calls = []

    def interrupted(self, rng):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as a user stopping the run
        return render(self, rng)

    monkeypatch.setattr(SyntheticPatches, "raw", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_model.stage_data(recipe, tmp_path / "work")
    assert not (tmp_path / "work" / "pool" / "train").exists()
    monkeypatch.setattr(SyntheticPatches, "raw", render)
    make_model.stage_data(recipe, tmp_path / "work")
    pool = tmp_path / "work" / "pool"
    assert len(list(read_shards(sorted((pool / "train").glob("*.tar"))))) == 6
    assert len(list(read_shards(sorted((pool / "val").glob("*.tar"))))) == 2
    assert sorted(p.name for p in pool.iterdir()) == ["settings.json", "train", "val"]


def _one_dem_folder(folder: Path) -> Path:
    """A folder holding one small DEM, for the DEM-shape source."""
    folder.mkdir()
    dem = gdal.GetDriverByName("GTiff").Create(str(folder / "hills.tif"), 64, 64, 1,
                                               gdal.GDT_Float32)
    dem.SetGeoTransform((0.0, 2.0, 0.0, 128.0, 0.0, -2.0))
    rows, cols = np.mgrid[0:64, 0:64]
    dem.GetRasterBand(1).WriteArray(10 * np.sin(rows / 5.0) * np.cos(cols / 7.0))
    dem = None
    return folder


def test_the_recipe_photometry_renders_the_same_terrain_differently(tmp_path, monkeypatch):
    from training import make_model
    from training.shards import read_shards

    monkeypatch.setattr(make_model, "DEM_SHAPES", _one_dem_folder(tmp_path / "shapes"))
    pools = {}
    for photometry in (None, 2.0):
        pool = {"size": 32, "synthetic": 3, "dem_shapes": 3, "val_each": 1,
                "synthetic_relief": [0.35, 1.2]}
        if photometry:
            pool["photometry"] = photometry
        work = tmp_path / str(photometry)
        make_model.stage_data({"seed": 1, "train": {}, "pool": pool}, work)
        pools[photometry] = list(read_shards(sorted((work / "pool" / "train").glob("*.tar"))))
    assert [patch.meta["source"] for patch in pools[2.0]] == ["synthetic"] * 3 + ["hills"] * 3
    for default, wider in zip(pools[None], pools[2.0], strict=True):
        assert np.array_equal(default.height, wider.height)
        assert not np.array_equal(default.image, wider.image)


def test_a_rerun_resumes_each_run_from_its_config_and_checkpoint(pool, tmp_path):
    from training.make_model import _train_args
    from training.train import main as train

    work = tmp_path / "work"
    (work / "pool").mkdir(parents=True)
    for name in ("train", "val"):
        (work / "pool" / name).symlink_to(pool)
    recipe = {"seed": 1, "train": {"patch_size": 32, "batch_size": 2, "steps": 2,
                                   "channels": [4, 8, 16], "threads": 1}}
    assert train(_train_args(recipe, work, "main", {"gan": False})) == 0
    recipe["train"]["steps"] = 3  # a longer run, continued from the first
    args = _train_args(recipe, work, "main", {"gan": False})
    assert "--resume" in args and train(args) == 0
    assert torch.load(work / "main" / "last.pt", weights_only=True)["step"] == 3


def test_a_run_is_not_continued_from_another_pool_or_main_run(tmp_path, monkeypatch, capsys):
    from training import make_model

    monkeypatch.setattr(make_model, "DEM_SHAPES", tmp_path / "none")  # synthetic only
    pool = {"size": 32, "synthetic": 4, "dem_shapes": 0, "val_each": 2,
            "synthetic_relief": [0.35, 1.2]}
    train = {"patch_size": 32, "batch_size": 2, "steps": 2, "channels": [4, 8, 16],
             "threads": 1, "checkpoint_every": 1}
    recipe = {"work": str(tmp_path / "work"), "version": "0.0.1", "seed": 1, "pool": pool,
              "train": train, "ablation": {"stop_at": 1}, "finetune": {"steps": 1}}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    work = tmp_path / "work"
    assert main(["--recipe", str(path), "--stages", "data,train"]) == 0
    assert main(["--recipe", str(path), "--stages", "data,train"]) == 0  # all kept
    # The main run trained further: the fine-tune began from another one.
    path.write_text(json.dumps({**recipe, "train": {**train, "steps": 3}}))
    capsys.readouterr()
    assert main(["--recipe", str(path), "--stages", "train"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the train stage stopped: the run in {work / 'finetune'} was trained from "
        f"another main run; delete {work / 'finetune'} to train it again")
    # The pool rendered again, with other settings: no run goes on from the old one.
    shutil.rmtree(work / "pool")
    path.write_text(json.dumps({**recipe, "pool": {**pool, "synthetic": 6}}))
    assert main(["--recipe", str(path), "--stages", "data,train"]) == 1
    assert f"the run in {work / 'main'} was trained from another pool;" in \
        capsys.readouterr().err
    assert torch.load(work / "main" / "last.pt", weights_only=True)["step"] == 3  # untouched


def test_a_pool_rendered_with_other_settings_is_not_reused(tmp_path, monkeypatch, capsys):
    from training import make_model
    from training.shards import read_shards

    monkeypatch.setattr(make_model, "DEM_SHAPES", tmp_path / "none")  # synthetic only
    pool = {"size": 32, "synthetic": 2, "dem_shapes": 0, "val_each": 1,
            "synthetic_relief": [0.35, 1.2]}
    path = tmp_path / "recipe.json"
    recipe = {"work": str(tmp_path / "work"), "version": "0.0.1", "seed": 1, "train": {},
              "pool": pool, "ablation": {"stop_at": 2}}
    path.write_text(json.dumps(recipe))
    assert main(["--recipe", str(path), "--stages", "data"]) == 0
    train = tmp_path / "work" / "pool" / "train"
    shards = {p.name: p.read_bytes() for p in train.glob("*.tar")}
    # The default factor said out loud is the same pool: kept.
    path.write_text(json.dumps({**recipe, "pool": {**pool, "photometry": 1.0}}))
    assert main(["--recipe", str(path), "--stages", "data"]) == 0
    assert "pool train: kept" in capsys.readouterr().out
    # A stamp from before a setting was recorded: kept, and said so.
    stamp = train.parent / "settings.json"
    older = {k: v for k, v in json.loads(stamp.read_text()).items() if k != "dem shapes"}
    stamp.write_text(json.dumps(older))
    assert main(["--recipe", str(path), "--stages", "data"]) == 0
    assert "stamped without dem shapes; kept unchecked" in capsys.readouterr().out
    path.write_text(json.dumps({**recipe, "seed": 2, "pool": {**pool, "photometry": 0.5}}))
    assert main(["--recipe", str(path), "--stages", "data"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: the data stage stopped: the pool in {train.parent} was rendered with another "
        f"seed, pool.photometry; give this recipe its own work folder, or delete "
        f"{train.parent} to render it again"]
    # The real DEM shapes found where a pool was rendered without them: not the same pool.
    monkeypatch.setattr(make_model, "DEM_SHAPES", _one_dem_folder(tmp_path / "shapes"))
    path.write_text(json.dumps(recipe))
    assert main(["--recipe", str(path), "--stages", "data"]) == 1
    assert "rendered with another dem shapes, dem shapes sha256;" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in train.glob("*.tar")} == shards  # untouched
    assert len(list(read_shards(sorted(train.glob("*.tar"))))) == 2
    # Rendered with the DEM, which is then replaced under its name: not the same pool either.
    shutil.rmtree(train.parent)
    assert main(["--recipe", str(path), "--stages", "data"]) == 0
    dem = gdal.Open(str(make_model.DEM_SHAPES / "hills.tif"), gdal.GA_Update)
    dem.GetRasterBand(1).WriteArray(dem.ReadAsArray() * 2)
    dem = None
    assert main(["--recipe", str(path), "--stages", "data"]) == 1
    assert "rendered with another dem shapes sha256;" in capsys.readouterr().err
