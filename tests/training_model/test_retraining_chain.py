"""The retraining path of docs/training.md, command after command, on a loopback UAHiRISE:
scrape, split by pair, cut patches, train, export, score the held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mars_dtm_plugin.core.model import load_contract
from tests.training.fakesite import DTM_ROOT, SiteServer, build_rendered_site
from training import evaluate, export_onnx, quantize, scrape, splits, tiles, train
from training.shards import read_shard

pytestmark = pytest.mark.slow

SUN = (200.0, 35.0)  # from north, the renderer's
# Each pair cut into 2 x 2 tiles of 96 px; training crops 64 px from them, turned to the sun.
SIZE, TILE, PATCH = 192, 96, 64


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every step's exit status and its outputs, from one site of four rendered pairs."""
    root = tmp_path_factory.mktemp("chain")
    made = build_rendered_site(root / "site", 4, SIZE, SUN)
    server = SiteServer(root / "site").start()
    try:
        codes = {"scrape": scrape.main(["--out", str(root / "hirise"), "--delay", "0",
                                        "--base-url", server.url + DTM_ROOT])}
    finally:
        server.stop()
    codes["splits"] = splits.main([str(root / "hirise"), "--out", str(root / "splits.json"),
                                   "--val", "0.25", "--test", "0.25"])
    codes["tiles"] = tiles.main([str(root / "hirise"), "--out", str(root / "patches"),
                                 "--size", str(TILE), "--overlap", "0",
                                 "--splits", str(root / "splits.json")])
    codes["train"] = train.main([
        "--data", str(root / "patches/train"), "--val-data", str(root / "patches/val"),
        "--out", str(root / "run"), "--patch-size", str(PATCH), "--batch-size", "2",
        "--steps", "4", "--val-every", "2", "--checkpoint-every", "4", "--channels", "4,8,16",
        "--threads", "1", "--workers", "0", "--device", "cpu"])
    codes["export"] = export_onnx.main([str(root / "run/last.pt"), str(root / "m.onnx"),
                                        "--version", "0.0.1+chain"])
    codes["quantize"] = quantize.main([str(root / "m.onnx"), str(root / "m8.onnx"), "--data",
                                       str(root / "patches/train"), "--samples", "8",
                                       "--version", "0.0.1+chain"])
    codes["evaluate"] = evaluate.main([
        "--model", f"m={root / 'm.onnx'}", "--model", f"m8={root / 'm8.onnx'}",
        "--data", str(root / "eval_data"),
        "--out", str(root / "report"), "--sets", "pairs",
        "--test-shards", str(root / "patches/test"), "--no-speed"])
    return {"root": root, "codes": codes, "made": {pair.pair_id: pair for pair in made}}


def test_every_documented_command_succeeds(chain):
    assert chain["codes"] == dict.fromkeys(
        ("scrape", "splits", "tiles", "train", "export", "quantize", "evaluate"), 0)


def test_each_split_holds_the_patches_of_its_own_pairs_only(chain):
    root = chain["root"]
    assigned = json.loads((root / "splits.json").read_text())
    every = [pair for split in ("train", "val", "test") for pair in assigned[split]]
    assert sorted(every) == sorted(chain["made"])
    assert [len(assigned[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    for split in ("train", "val", "test"):
        keys = list(patches(root / "patches" / split))
        assert len(keys) == 4 * len(assigned[split])  # 2 x 2 tiles from each pair
        assert {key.rsplit("_x", 1)[0] for key in keys} == set(assigned[split])


def patches(folder: Path) -> dict:
    """The patches of a folder of shards, by key."""
    return {patch.key: patch for shard in sorted(folder.glob("*.tar"))
            for patch in read_shard(shard)}


def test_the_trained_weights_export_to_a_model_the_engine_accepts(chain):
    root = chain["root"]
    state = torch.load(root / "run/last.pt", weights_only=True)
    assert state["step"] == 4
    assert state["config"]["data"] == str(root / "patches/train")
    for model in ("m.onnx", "m8.onnx"):  # and in 8 bits, calibrated on the real patches
        contract = load_contract(root / model)
        assert (contract.version, contract.tile_size) == ("0.0.1+chain", PATCH)


def test_held_out_pairs_are_scored_on_their_own_heights_and_sun(chain):
    """Heights, pixels, grid and sun reach the evaluation as the site served them."""
    root, made = chain["root"], chain["made"]
    (test_pair,) = json.loads((root / "splits.json").read_text())["test"]
    pair = made[test_pair]
    scenes = list(evaluate.pair_scenes(root / "patches/test", root))
    assert {scene.notes["pair"] for scene in scenes} == {test_pair}
    held_out = patches(root / "patches/test")
    squares = []
    for scene in scenes:
        gt = held_out[scene.name].meta["geotransform"]
        col = round((gt[0] - pair.geotransform[0]) / pair.geotransform[1])
        row = round((gt[3] - pair.geotransform[3]) / pair.geotransform[5])
        window = np.s_[row:row + TILE, col:col + TILE]
        truth = pair.heights[window].astype(np.float64)
        np.testing.assert_allclose(scene.truth, truth - truth.mean(), atol=1e-3)
        np.testing.assert_array_equal(scene.image, pair.image[window])
        np.testing.assert_allclose(scene.sun, SUN, atol=0.5)  # north is up here
        squares.append(np.sqrt(np.mean((truth - truth.mean()) ** 2)))
    metrics = json.loads((root / "report/metrics.json").read_text())
    scores = metrics["sets"]["pairs"]
    # The flat surface's RMSE is the tiles' height spread: computed here from the site's DTM.
    assert scores["flat"]["rmse_m"] == pytest.approx(np.mean(squares), rel=1e-3)
    assert np.isfinite(scores["m"]["rmse_m"])
