"""Splits by stereo pair: disjoint, deterministic, written as files."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from training.splits import footprints, groups_of, load_splits, main, split_pairs


def _pair_ids(count: int) -> list[str]:
    return [f"ESP_{10000 + 2 * i:06d}_1640_ESP_{10001 + 2 * i:06d}_1640" for i in range(count)]


def test_no_pair_is_in_two_splits_and_none_is_lost() -> None:
    ids = _pair_ids(200)
    splits = split_pairs(ids, seed=3, val=0.1, test=0.15)
    assert [len(splits[n]) for n in ("train", "val", "test")] == [150, 20, 30]
    members = [p for ids_ in splits.values() for p in ids_]
    assert sorted(members) == sorted(ids) and len(set(members)) == len(ids)


def test_splits_depend_on_the_seed_only() -> None:
    ids = _pair_ids(100)
    shuffled = random.Random(1).sample(ids, len(ids))
    assert split_pairs(ids, seed=7) == split_pairs(shuffled, seed=7)
    assert split_pairs(ids, seed=7)["test"] != split_pairs(ids, seed=8)["test"]


def test_a_split_asked_for_gets_a_pair_however_few_there_are() -> None:
    splits = split_pairs(_pair_ids(6), seed=0, val=0.05, test=0.05)
    assert [len(splits[n]) for n in ("train", "val", "test")] == [4, 1, 1]
    assert split_pairs(_pair_ids(6), seed=0, val=0.0, test=0.05)["val"] == []


def test_pairs_sharing_an_observation_stay_together() -> None:
    shared = ["ESP_020000_1640_ESP_020001_1640", "ESP_020001_1640_ESP_020002_1640",
              "ESP_020002_1640_PSP_003000_1640"]
    for seed in range(20):
        splits = split_pairs(_pair_ids(30) + shared, seed=seed, val=0.2, test=0.2)
        assert sum(set(shared) <= set(ids) for ids in splits.values()) == 1


def test_pairs_on_overlapping_ground_stay_together() -> None:
    ids = _pair_ids(6)
    boxes = {ids[0]: (10.0, -5.0, 10.5, -4.0), ids[1]: (10.4, -4.2, 11.0, -3.5),  # overlap
             ids[2]: (179.8, 20.0, 180.3, 20.5), ids[3]: (-179.9, 20.4, -179.5, 21.0),  # 180°
             ids[4]: (10.6, -5.0, 11.0, -4.5)}  # beside the first, not on it
    groups = [sorted(g) for g in groups_of(ids, boxes)]
    assert sorted(groups) == sorted([sorted(ids[:2]), sorted(ids[2:4]), [ids[4]], [ids[5]]])
    assert len(groups_of(ids, {ids[1]: boxes[ids[1]], ids[4]: boxes[ids[4]]})) == 6


def test_dtms_on_the_same_ground_are_found_on_disk(tmp_path: Path) -> None:
    from tests.rasters import mars_eqc_wkt, write_raster

    ids = _pair_ids(3)
    # 100 m pixels, 50 px: the first two share 1 km of ground, the third lies 100 km away.
    for pair_id, west in zip(ids, (0.0, 4000.0, 100000.0), strict=True):
        folder = tmp_path / pair_id
        folder.mkdir()
        write_raster(folder / "dtm.tif", np.zeros((50, 50), np.float32),
                     (west, 100.0, 0.0, 300000.0, 0.0, -100.0), mars_eqc_wkt())
        record = {"pair_id": pair_id, "status": "complete",
                  "files": [{"role": "dtm", "path": "dtm.tif"}]}
        (folder / "pair.json").write_text(json.dumps(record))
    boxes = footprints(tmp_path)
    west, south, east, north = boxes[ids[0]]
    degree = 3396190.0 * math.pi / 180  # metres per degree on the Mars sphere
    assert (west, east) == pytest.approx((0.0, 5000.0 / degree), abs=1e-9)
    assert (south, north) == pytest.approx((295000.0 / degree, 300000.0 / degree), abs=1e-9)
    assert sorted(map(sorted, groups_of(ids, boxes))) == [sorted(ids[:2]), [ids[2]]]
    (tmp_path / ids[2] / "dtm.tif").write_text("not a DTM")  # one GDAL cannot place: no box
    assert set(footprints(tmp_path)) == set(ids[:2])


def test_command_writes_json_and_lists(scraped: Path, tmp_path: Path) -> None:
    out = tmp_path / "splits" / "splits.json"
    assert main([str(scraped / "manifest.json"), "--out", str(out), "--seed", "1",
                 "--val", "0.34", "--test", "0.34"]) == 0
    data = json.loads(out.read_text())
    complete = [p["pair_id"] for p in json.loads((scraped / "manifest.json").read_text())
                ["pairs"] if p["status"] == "complete"]
    assert sorted(data["train"] + data["val"] + data["test"]) == sorted(complete)
    assert all(len(data[n]) == 1 for n in ("train", "val", "test"))
    assert (out.parent / "val.txt").read_text() == data["val"][0] + "\n"
    assert load_splits(out) == {p: n for n in ("train", "val", "test") for p in data[n]}


def test_a_pair_in_two_splits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": _pair_ids(2), "val": _pair_ids(1), "test": []}))
    with pytest.raises(ValueError, match="in both train and val"):
        load_splits(path)


@pytest.mark.parametrize("lines, args, message", [
    (None, [], "error: {txt} does not exist.\n"),
    (["not_a_pair"], [], "error: 'not_a_pair' is not a stereo pair id.\n"),
    (_pair_ids(3), ["--val", "0.6", "--test", "0.5"],
     "error: val and test fractions must be non-negative and sum below 1.\n"),
    ([], [], "error: {txt} names no complete pair.\n"),
    (_pair_ids(10), ["--out", "{folder}"], "error: --out {folder} is a folder; give the file "
     "to write, such as {folder}/splits.json.\n"),
    (_pair_ids(2), ["--val", "0.1", "--test", "0.1"],
     "error: 2 pair(s), in 2 group(s) that share no observation or ground, leave train empty; "
     "scrape more pairs or give --val 0 or --test 0.\n"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture, lines: list[str] | None,
        args: list[str], message: str) -> None:
    txt, folder = tmp_path / "pairs.txt", tmp_path / "given"
    folder.mkdir()
    if lines is not None:
        txt.write_text("".join(f"{line}\n" for line in lines))
    args = [arg.format(folder=folder) for arg in args]
    assert main([str(txt), "--out", str(tmp_path / "out" / "splits.json"), *args]) == 2
    assert capsys.readouterr().err == message.format(txt=txt, folder=folder)
    assert not (tmp_path / "out").exists() and not list(folder.iterdir())


@pytest.mark.parametrize("content", [["a"], {"train": "ESP_1"}, {"train": [["ESP_1"]]}])
def test_a_file_that_is_no_splits_object_is_refused(tmp_path: Path, content: object) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="is no splits file: it must be a JSON object"):
        load_splits(path)


def test_a_json_list_as_source_is_one_sentence(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "manifest.json"
    source.write_text(json.dumps([_pair_ids(1)[0]]))
    assert main([str(source), "--out", str(tmp_path / "splits.json")]) == 2
    assert capsys.readouterr().err == (f"error: {source} is no scrape manifest or pair.json: "
                                       "it must hold a JSON object.\n")
