"""Product ids: observations, pairs, DTMs and orthos chosen by what their names mean."""

import csv
import random
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import SHARED_DATA
from training.products import (
    Observation,
    dtm_matches_pair,
    parse_dtm,
    parse_ortho,
    parse_pair,
    select_products,
)

PAIR = "ESP_011384_2185_ESP_011661_2185"
LISTING = [
    "DTEEC_011384_2185_011661_2185_A01.IMG",
    "DTEEC_011384_2185_011661_2185_A02.IMG",
    "DTEEC_011384_2185_099999_2185_A03.IMG",  # another pair's DTM
    "ESP_011661_2185_RED_C_01_ORTHO.JP2",  # the second observation
    "ESP_011661_2185_RED_C_01_ORTHO.LBL",
    "ESP_010000_2185_RED_C_01_ORTHO.JP2",  # a third observation of the site
    "ESP_010000_2185_RED_C_01_ORTHO.LBL",
    "ESP_011384_2185_IRB_C_01_ORTHO.JP2",  # colour, not RED
    "ESP_011384_2185_RED_C_01_ORTHO.JP2",
    "ESP_011384_2185_RED_C_01_ORTHO.LBL",
    "ESP_011384_2185_RED_C_02_ORTHO.JP2",
    "ESP_011384_2185_RED_C_02_ORTHO.LBL",
    "ESP_011384_2185_RED_A_02_ORTHO.JP2",
    "ESP_011384_2185_RED_A_02_ORTHO.LBL",
    "ESP_011384_2185_RED_C_01_ORTHO.JP2.md5",
    "README.TXT",
]


def test_ids_parse_into_their_parts() -> None:
    pair = parse_pair(PAIR + "/")
    assert pair.first == Observation("ESP", 11384, "2185")
    assert str(pair.second) == "ESP_011661_2185"
    dtm = parse_dtm("DTEPC_005683_1640_011458_1640_U02.IMG")
    assert (dtm.projection, dtm.producer, dtm.version) == ("P", "U", 2)
    assert dtm.keys == ((5683, "1640"), (11458, "1640"))
    ortho = parse_ortho("PSP_005683_1640_RED_A_01_ORTHO.LBL")
    assert (str(ortho.observation), ortho.scale, ortho.extension) == (
        "PSP_005683_1640", "A", "LBL")
    for bad in ("ESP_01138_2185_ESP_011661_2185", "DTEEC_011384_2185_A01.IMG",
                "ESP_011384_2185_RED_D_01_ORTHO.JP2", "../ESP_011384_2185_RED_C_01_ORTHO.JP2"):
        assert parse_pair(bad) is None and parse_dtm(bad) is None and parse_ortho(bad) is None


@pytest.mark.parametrize("scale, version", [("C", 2), ("A", 2)])
def test_selection_depends_on_meaning_not_listing_order(scale: str, version: int) -> None:
    pair = parse_pair(PAIR)
    for seed in range(5):
        names = random.Random(seed).sample(LISTING, len(LISTING))
        selection, reason = select_products(pair, names, scale)
        assert reason == ""
        assert selection.names == ("DTEEC_011384_2185_011661_2185_A02.IMG",
                                   f"ESP_011384_2185_RED_{scale}_{version:02d}_ORTHO.JP2",
                                   f"ESP_011384_2185_RED_{scale}_{version:02d}_ORTHO.LBL")


def test_an_ortho_made_on_the_chosen_dtm_wins_over_the_first_observation() -> None:
    pair = parse_pair(PAIR)
    names = ["DTEEC_011384_2185_011661_2185_A02.IMG",
             "ESP_011384_2185_RED_C_01_ORTHO.JP2", "ESP_011384_2185_RED_C_01_ORTHO.LBL",
             "ESP_011661_2185_RED_C_02_ORTHO.JP2", "ESP_011661_2185_RED_C_02_ORTHO.LBL"]
    selection, _ = select_products(pair, names, "C")
    assert selection.names[1] == "ESP_011661_2185_RED_C_02_ORTHO.JP2"


def test_missing_products_give_a_reason() -> None:
    pair = parse_pair(PAIR)
    assert select_products(pair, LISTING[3:], "C") == (None, f"no DTM of pair {PAIR} listed")
    assert select_products(pair, LISTING[:3], "C")[1].startswith("no RED_C orthoimage")
    no_label = [n for n in LISTING if not n.endswith("RED_C_02_ORTHO.LBL")]
    assert select_products(pair, no_label, "C")[1] == (
        "no label ESP_011384_2185_RED_C_02_ORTHO.LBL listed")
    assert select_products(pair, LISTING, "B")[1].startswith("no RED_B orthoimage")


def _url_name(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name)


def test_every_row_of_the_real_manifest_parses() -> None:
    path = SHARED_DATA / "uahirise_dtm_manifest.csv"
    if not path.is_file():
        pytest.skip(f"{path.name} is not beside the project (shared data absent)")
    with path.open(newline="") as handle:
        rows = [(parse_pair(r["name"]), parse_ortho(_url_name(r["image"])),
                 parse_dtm(_url_name(r["model"]))) for r in csv.DictReader(handle)]
    assert len(rows) == 477
    assert all(None not in row for row in rows)
    assert len({str(pair) for pair, _, _ in rows}) == 477
    assert all(dtm_matches_pair(dtm, pair) for pair, _, dtm in rows)
    assert all(ortho.scale == "C" and ortho.extension == "JP2" for _, ortho, _ in rows)
    # The list came from a scraper that took the first ortho link by name: often the pair's
    # second observation, and in 58 rows a third one of the site, not of the pair at all.
    roles = [dict(zip(pair.observations, ("first", "second"))).get(ortho.observation, "extra")
             for pair, ortho, _ in rows]
    assert (roles.count("first"), roles.count("second"), roles.count("extra")) == (237, 182, 58)
    assert {dtm.projection for _, _, dtm in rows} == {"E", "P"}
    assert sum(pair.second.phase == "PSP" for pair, _, _ in rows) == 19


def test_second_observation_when_the_first_has_no_ortho() -> None:
    names = [n for n in LISTING if not n.startswith("ESP_011384")]
    selection, _ = select_products(parse_pair(PAIR), names, "C")
    assert selection.ortho.name == "ESP_011661_2185_RED_C_01_ORTHO.JP2"
