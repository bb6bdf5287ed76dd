"""The patch builder: georeferenced alignment, nodata, relative heights, provenance, safety."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from tests.training.conftest import options
from tests.training.fakesite import DTM_A, PAIR_A, PAIR_B, SiteServer, Terrain
from training.labels import missing_constant, read_label, sun_geometry
from training.scrape import scrape
from training.shards import Patch, ShardWriter, read_shards
from training.splits import write_splits
from training.tiles import build, load_pairs, main

SIZE, OVERLAP = 16, 4


def _patches(source: Path, out: Path, **kwargs: object) -> dict:
    pairs, _ = load_pairs(source)
    index = build(pairs, out, SIZE, OVERLAP, **kwargs)
    return {p.key: p for p in read_shards([out / s for s in index["shards"]])}


def _pair_a(patches: dict) -> dict[tuple[int, int], object]:
    return {tuple(p.meta["window"][:2]): p for p in patches.values()
            if p.meta["pair_id"] == PAIR_A}


def _assert_mesa_aligned(patch: object, terrain: Terrain) -> None:
    """The mesa's map corner, through the patch's geotransform, is where image and heights
    both show it."""
    gt = patch.meta["geotransform"]
    x, y = terrain.mesa_xy
    col, row = round((x - gt[0]) / gt[1]), round((y - gt[3]) / gt[5])
    expected = [(r, c) for r in range(row, row + 3) for c in range(col, col + 3)]
    assert [tuple(p) for p in np.argwhere(patch.image == 250)] == expected
    high = patch.height > np.median(patch.height) + terrain.mesa_m / 2
    assert [tuple(p) for p in np.argwhere(high)] == expected


def test_patches_line_up_and_skip_missing_heights(scraped: Path, terrain: Terrain,
                                                  tmp_path: Path) -> None:
    patches = _patches(scraped, tmp_path)
    windows = _pair_a(patches)
    # x0 = 0 touches the missing collar, (24, 24) the missing hole: both dropped.
    assert sorted(windows) == sorted({(x, y) for x in (12, 24, 36, 48) for y in (0, 12, 24)}
                                     - {(24, 24)})
    assert len(patches) == len(windows) + 2 * 9  # pairs B and C: 40 x 40 px, 3 x 3 windows
    _assert_mesa_aligned(windows[(36, 12)], terrain)
    dtm = terrain.heights()
    for (x0, y0), patch in windows.items():
        absolute = patch.height + patch.meta["height_offset_m"]
        np.testing.assert_allclose(absolute, dtm[y0:y0 + SIZE, x0:x0 + SIZE], atol=1e-3)
        assert abs(float(patch.height.mean())) < 1e-4
        assert patch.image.dtype == np.uint8 and patch.height.dtype == np.float32


def test_provenance_travels_with_every_patch(scraped: Path, terrain: Terrain,
                                             tmp_path: Path) -> None:
    patch = _pair_a(_patches(scraped, tmp_path))[(12, 0)]
    meta = patch.meta
    assert (meta["pair_id"], meta["source"], meta["window"]) == (PAIR_A, "hirise",
                                                                 [12, 0, SIZE, SIZE])
    # 1 m of map (equirectangular, true scale at 15 S): on the ground at the patch's latitude
    # a pixel is cos(lat) / cos(15) as wide, and the pixel size is the mean of the two sides.
    lat = (meta["geotransform"][3] - SIZE / 2) / 3_396_190.0
    expected = math.sqrt(math.cos(lat) / math.cos(math.radians(15.0)))
    assert meta["pixel_size_m"] == pytest.approx(expected, rel=1e-5)
    # Label: SUB_SOLAR_AZIMUTH 200, NORTH_AZIMUTH 270, INCIDENCE_ANGLE 40.
    assert meta["sun_azimuth_deg"] == pytest.approx(290.0)
    assert abs((meta["north_deg"] + 180.0) % 360.0 - 180.0) < 1e-3  # a north-up grid
    assert meta["sun_elevation_deg"] == pytest.approx(50.0)
    assert meta["sub_solar_azimuth_deg"] == 200.0 and meta["incidence_angle_deg"] == 40.0
    dtm = next(scraped.rglob("DTEEC_011384*.IMG"))
    assert meta["crs_wkt"] == gdal.Open(str(dtm)).GetProjection()
    assert meta["geotransform"][:4] == [terrain.ulx + 12, 1.0, 0.0, terrain.uly]


def test_labels_read_as_pds3(scraped: Path) -> None:
    label = read_label(next(scraped.rglob("DTEEC_011384*.IMG")))  # attached, then float data
    assert missing_constant(label) == -3.4028226550889045e+38
    assert label["SOURCE_PRODUCT_ID"] == ["ESP_011384_2185", "ESP_011661_2185"]
    assert label["RATIONALE_DESC"].endswith("patch builder, written by the test suite")
    projection = label["IMAGE_MAP_PROJECTION"]
    assert (projection["A_AXIS_RADIUS"], projection["MAP_SCALE"]) == (3396.19, 1.0)
    assert label["IMAGE"]["SAMPLE_BIT_MASK"] == 0xFFFFFFFF
    with pytest.raises(ValueError, match="no numeric NORTH_AZIMUTH"):
        sun_geometry({"INCIDENCE_ANGLE": 40.0, "SUB_SOLAR_AZIMUTH": 200.0})


def test_brackets_inside_a_label_string_are_text() -> None:
    from training.labels import parse_label

    label = parse_label('RATIONALE_DESC = "Layered deposits (north part"\n'
                        "INCIDENCE_ANGLE = 40.0 <DEG>\nSUB_SOLAR_AZIMUTH = 200.0 <DEG>\n"
                        "NORTH_AZIMUTH = 270.0 <DEG>\nEND\n")
    assert label["RATIONALE_DESC"] == "Layered deposits (north part"
    sun = sun_geometry(label)
    assert (sun["sun_azimuth_deg"], sun["sun_elevation_deg"]) == (290.0, 50.0)


def test_isis_special_pixels_are_missing_heights(tmp_path: Path) -> None:
    from tests.training.fakesite import write_ortho, write_pds_dtm
    from training.tiles import PairFiles, pair_patches

    heights = np.linspace(-2500, -2490, 32 * 32, dtype=np.float32).reshape(32, 32)
    heights[10, 10] = np.frombuffer(np.uint32(0xFF7FFFFC).tobytes(), np.float32)[0]  # ISIS LRS
    dtm = tmp_path / "DTEEC_000001_1000_000002_1000_A01.IMG"
    write_pds_dtm(dtm, heights, 350000.0, -120000.0, ("ESP_000001_1000", "ESP_000002_1000"))
    ortho = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    write_ortho(ortho, np.full((32, 32), 100, np.uint8), (350000.0, 1, 0, -120000.0, 0, -1),
                gdal.Open(str(dtm)).GetProjection())
    patches = list(pair_patches(PairFiles("p", dtm, ortho, ortho.with_suffix(".LBL")), 16, 0))
    assert len(patches) == 3  # the window holding the special pixel is dropped
    assert all(np.abs(p.height).max() < 10 for p in patches)


def test_a_pair_whose_ortho_lies_off_its_dtm_is_skipped_with_a_reason(tmp_path: Path) -> None:
    from tests.training.fakesite import write_ortho, write_pds_dtm
    from training.tiles import PairFiles

    heights = np.linspace(-2500, -2490, 32 * 32, dtype=np.float32).reshape(32, 32)
    dtm = tmp_path / "DTEEC_000001_1000_000002_1000_A01.IMG"
    write_pds_dtm(dtm, heights, 350000.0, -120000.0, ("ESP_000001_1000", "ESP_000002_1000"))
    ortho = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    write_ortho(ortho, np.full((32, 32), 100, np.uint8), (0.0, 1, 0, 0.0, 0, -1),
                gdal.Open(str(dtm)).GetProjection())  # 350 km away
    index = build([PairFiles("p", dtm, ortho, ortho.with_suffix(".LBL"))], tmp_path / "out", 16,
                  0)
    assert index["pairs"] == {}
    assert index["skipped"] == {"p": "no 16 px window with heights and image throughout (does "
                                     "the ortho lie on the DTM?)"}
    index = build([PairFiles("p", dtm, ortho, ortho.with_suffix(".LBL"))], tmp_path / "big", 64,
                  0)
    assert index["skipped"] == {"p": "the DTM is 32 x 32 px, smaller than --size 64"}


def test_an_orthos_dn_scaling_turns_its_patches_into_i_over_f(tmp_path: Path) -> None:
    """As the engine reads such a product: a model trained on the patches sees what it will."""
    from tests.training.fakesite import write_ortho, write_pds_dtm
    from training.tiles import PairFiles, pair_patches

    heights = np.linspace(-2500, -2490, 32 * 32, dtype=np.float32).reshape(32, 32)
    dtm = tmp_path / "DTEEC_000001_1000_000002_1000_A01.IMG"
    write_pds_dtm(dtm, heights, 350000.0, -120000.0, ("ESP_000001_1000", "ESP_000002_1000"))
    ortho = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    dn = (np.arange(32 * 32).reshape(32, 32) % 200 + 20).astype(np.uint8)
    write_ortho(ortho, dn, (350000.0, 1, 0, -120000.0, 0, -1), gdal.Open(str(dtm)).GetProjection())
    label = ortho.with_suffix(".LBL")
    label.write_text(label.read_text().replace(
        "END\n", "OBJECT = IMAGE\n  SCALING_FACTOR = 2.5E-04\n  OFFSET = 0.04\n"
                  "END_OBJECT = IMAGE\nEND\n"))
    patch = next(pair_patches(PairFiles("p", dtm, ortho, label), 16, 0))
    assert patch.image.dtype == np.float32
    np.testing.assert_allclose(patch.image, dn[:16, :16] * 2.5e-4 + 0.04, rtol=1e-6)


def test_a_polar_pairs_patches_keep_the_labels_sun_in_the_grid(tmp_path: Path) -> None:
    """The label's sun is in the image frame, the same all over a polar stereographic ortho;
    from north it turns with the meridians, so each patch's is its own."""
    from mars_dtm_plugin.core.raster import north_in_image
    from tests.training.fakesite import write_ortho, write_pds_dtm
    from training.tiles import PairFiles, pair_patches

    dtm = tmp_path / "DTEPC_000001_1000_000002_1000_A01.IMG"
    # 18 km across at 87 N, 0 E (12 m pixels): north turns some 3 degrees across it.
    write_pds_dtm(dtm, np.zeros((64, 1500), np.float32), -9000.0, -177600.0,
                  ("ESP_000001_1000", "ESP_000002_1000"), scale=12.0,
                  projection="POLAR STEREOGRAPHIC", center=(90.0, 0.0))
    opened = gdal.Open(str(dtm))
    ortho = tmp_path / "ESP_000001_1000_RED_C_01_ORTHO.JP2"
    write_ortho(ortho, np.full((64, 1500), 100, np.uint8), opened.GetGeoTransform(),
                opened.GetProjection(), sub_solar=45.0, north=270.0)
    patches = list(pair_patches(PairFiles("p", dtm, ortho, ortho.with_suffix(".LBL")), 64, 0))
    norths = [p.meta["north_deg"] for p in patches]
    assert np.ptp(norths) > 2.5  # the scene is wide enough to tell
    for patch in patches:  # sun 45 from the +sample axis: 135 clockwise from image up
        grid_sun = (patch.meta["sun_azimuth_deg"] + patch.meta["north_deg"]) % 360
        assert grid_sun == pytest.approx(135.0, abs=1e-6)
    assert norths[0] == pytest.approx(north_in_image(
        patches[0].meta["geotransform"], osr.SpatialReference(wkt=opened.GetProjection()),
        64, 64))


@pytest.mark.parametrize("across", [False, True])  # the edge across columns, or rows
def test_pixels_only_partly_imaged_at_the_orthos_edge_are_left_out(tmp_path: Path,
                                                                   across: bool) -> None:
    from tests.training.fakesite import write_ortho, write_pds_dtm
    from training.tiles import PairFiles, pair_patches

    def turned(a: np.ndarray) -> np.ndarray:
        return a.T.copy() if across else a

    dtm = tmp_path / "DTEEC_000001_1000_000002_1000_A01.IMG"
    write_pds_dtm(dtm, turned(np.zeros((32, 48), np.float32)), 350000.0, -120000.0,
                  ("ESP_000001_1000", "ESP_000002_1000"))
    fine = np.full((128, 192), 100, np.uint8)
    fine[:, :66] = 0  # no image before 16.5 m: the DTM's column (row) 16 is half imaged
    ortho = tmp_path / "ESP_000001_1000_RED_A_01_ORTHO.JP2"
    write_ortho(ortho, turned(fine), (350000.0, 0.25, 0, -120000.0, 0, -0.25),
                gdal.Open(str(dtm)).GetProjection())
    patches = list(pair_patches(PairFiles("p", dtm, ortho, ortho.with_suffix(".LBL")), 16, 0))
    # Windows from 16 on would hold that half-imaged line at full brightness (rows: the line
    # begins the strip, its blank neighbour ends the strip before).
    starts = [p.meta["window"][1 if across else 0] for p in patches]
    assert sorted(starts) == [32, 32]
    assert all((p.image == 100).all() for p in patches)


def test_finer_ortho_is_averaged_onto_the_dtm_grid(server: SiteServer, terrain: Terrain,
                                                   tmp_path: Path) -> None:
    scrape(options(server, tmp_path / "scrape", scale="A"))
    windows = _pair_a(_patches(tmp_path / "scrape", tmp_path / "shards"))
    assert len(windows) == 11
    _assert_mesa_aligned(windows[(36, 12)], terrain)


def test_truncated_downloads_never_reach_the_builder(server: SiteServer, scraped: Path,
                                                     tmp_path: Path) -> None:
    server.cuts[DTM_A] = [4000]
    scrape(options(server, tmp_path / "cut", retries=0))
    pairs, skipped = load_pairs(tmp_path / "cut")
    assert PAIR_A not in {p.pair_id for p in pairs}
    assert skipped[PAIR_A].startswith(f"incomplete: {DTM_A.rsplit('/', 1)[1]} partial (")
    # A file shortened after a complete download is refused too.
    copy = shutil.copytree(scraped, tmp_path / "copy")
    ortho = next(copy.rglob(f"{PAIR_B[:15]}_RED_C_01_ORTHO.JP2"))
    ortho.write_bytes(ortho.read_bytes()[:-10])
    pairs, skipped = load_pairs(copy / "manifest.json")
    assert PAIR_B not in {p.pair_id for p in pairs}
    assert skipped[PAIR_B] == f"{ortho.name} differs from its recorded size"
    patches = _patches(copy, tmp_path / "shards")
    assert PAIR_B not in {p.meta["pair_id"] for p in patches.values()} and patches


def test_splits_put_each_split_in_its_own_folder(scraped: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    pairs, _ = load_pairs(scraped)
    ids = sorted(p.pair_id for p in pairs)
    write_splits({"train": ids[:2], "val": ids[2:], "test": []}, tmp_path / "s.json", 0)
    assert main([str(scraped), "--out", str(tmp_path / "p"), "--size", str(SIZE),
                 "--overlap", str(OVERLAP), "--splits", str(tmp_path / "s.json")]) == 0
    counts = {}
    for split, members in (("train", ids[:2]), ("val", ids[2:])):
        shards = sorted((tmp_path / "p" / split).glob("*.tar"))
        patches = list(read_shards(shards))
        assert {p.meta["pair_id"] for p in patches} == set(members)
        counts[split] = len(patches)
    assert not (tmp_path / "p" / "test").exists()
    # The run says what each split got, and warns of the empty one.
    assert (f"patches per split: train {counts['train']}, val {counts['val']}, test 0"
            in capsys.readouterr().out)
    assert "split test has no patches" in caplog.text


def test_a_second_run_into_the_same_folder_is_refused(scraped: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    args = [str(scraped), "--out", str(tmp_path / "p"), "--size", str(SIZE),
            "--overlap", str(OVERLAP)]
    assert main(args) == 0
    before = sorted(p.name for p in (tmp_path / "p").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--shard-size", "1"])
    assert exit_info.value.code == 2 and "already holds shards" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == before


def test_a_failed_run_leaves_complete_shards_only(tmp_path: Path) -> None:
    patch = Patch("p0", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32))
    with pytest.raises(KeyboardInterrupt), ShardWriter(tmp_path, "s", max_count=2) as writer:
        for i in range(3):  # the first shard fills up; the second is begun
            writer.write(Patch(f"p{i}", patch.image, patch.height))
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-000000.tar"]
    assert [p.key for p in read_shards([tmp_path / "s-000000.tar"])] == ["p0", "p1"]


@pytest.mark.parametrize("args, code, message", [
    (["missing.json"], 2, "error: missing.json does not exist.\n"),
    (["{scraped}", "--size", "16", "--overlap", "16"], 2,
     "error: --overlap must be at least 0 and below --size.\n"),
    (["{scraped}", "--size", "4096"], 1, "error: no patch could be cut from the given pairs.\n"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(
        scraped: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
        code: int, message: str) -> None:
    args = [a.replace("{scraped}", str(scraped)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*args, "--out", str(tmp_path / "out")]))
    assert exit_info.value.code == code
    assert capsys.readouterr().err.endswith(message)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_build_leaves_no_partial_shard(scraped: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from training import tiles

    cut = tiles.pair_patches

    def interrupted(pair: object, size: int, overlap: int):
        yield from cut(pair, size, overlap)
        raise KeyboardInterrupt  # the user presses Ctrl-C after the first pair

    monkeypatch.setattr(tiles, "pair_patches", interrupted)
    pairs, _ = load_pairs(scraped)
    with pytest.raises(KeyboardInterrupt):
        build(pairs, tmp_path, SIZE, OVERLAP, shard_size=1000)
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "patches.json").exists()


UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from training.tiles import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_stops_the_build_and_leaves_no_partial_shard(scraped: Path,
                                                                 tmp_path: Path) -> None:
    from tests.conftest import ROOT, plugin_env

    def build_under(limit: int, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", UNDER_FILE_SIZE_LIMIT, str(limit),
                               str(scraped), "--out", str(out), "--size", str(SIZE),
                               "--overlap", str(OVERLAP)], capture_output=True, text=True,
                              env=plugin_env(), cwd=ROOT, timeout=120)

    assert build_under(1 << 30, tmp_path / "whole").returncode == 0
    (shard,) = (tmp_path / "whole").glob("*.tar")
    done = build_under(shard.stat().st_size // 2, tmp_path / "full")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write the shards in {tmp_path / 'full'}: [Errno 27] File too large")
    assert not [p for p in (tmp_path / "full").rglob("*") if p.is_file()]


@pytest.mark.parametrize("content", ["{bad", '["a"]'])
def test_a_malformed_splits_file_is_named(scraped: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, content: str) -> None:
    splits = tmp_path / "s.json"
    splits.write_text(content)
    code = main([str(scraped), "--out", str(tmp_path / "out"), "--splits", str(splits)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read the splits file {splits}: ")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
