"""The model contract: round trip, refusals naming the key, values the engine relies on."""

from __future__ import annotations

import json

import pytest

from mars_dtm_plugin.core.contract import REQUIRED_KEYS, parse_contract
from mars_dtm_plugin.core.errors import DtmError
from mars_dtm_plugin.core.model import load_contract
from tests.models import contract_for_tests, write_test_model


def test_round_trip_through_metadata_and_onnx(tmp_path):
    contract = contract_for_tests(tile_size=128, sun_mode="rotate", sun_azimuth=225.0)
    assert parse_contract(contract.to_metadata()) == contract
    model = write_test_model(tmp_path / "m.onnx", tile_size=128, sun_mode="rotate",
                             sun_azimuth=225.0)
    assert load_contract(model) == contract


def test_shared_keys_keep_deepness_names_and_ours_are_namespaced():
    props = contract_for_tests().to_metadata()
    for key in ("model_type", "tile_size", "tiles_overlap", "resolution",
                "standardization_mean", "standardization_std"):
        assert key in props
    assert json.loads(props["model_type"]) == "regression"
    ours = set(props) - {"model_type", "tile_size", "tiles_overlap", "resolution",
                         "standardization_mean", "standardization_std"}
    assert ours and all(key.startswith("marsdtm:") for key in ours)
    assert set(props) == set(REQUIRED_KEYS) | {"marsdtm:input_scaling", "marsdtm:coarse_pass"}


def test_models_from_before_input_scaling_read_as_percentile():
    props = contract_for_tests(input_scaling="mean_ratio").to_metadata()
    assert parse_contract(props).input_scaling == "mean_ratio"
    del props["marsdtm:input_scaling"]
    assert parse_contract(props).input_scaling == "percentile"


@pytest.mark.parametrize("key, value, words", [
    ("tile_size", "8", "at least 16"),
    ("tiles_overlap", "60", "percentage"),
    ("model_type", '"segmentation"', "regression"),
    ("marsdtm:sun_mode", '"guess"', "rotate"),
    ("marsdtm:input_percentiles", "[99, 1]", "low < high"),
    ("standardization_std", "[0]", "positive"),
    ("marsdtm:contract_version", "99", "contract version"),
    ("marsdtm:input_scaling", '"log"', "percentile, mean_ratio"),
    ("marsdtm:coarse_pass", '{"factor": 1, "sigma_px": 24}', "at least 2"),
    ("marsdtm:coarse_pass", '{"factor": 3.0, "sigma_px": 24}', "at least 2"),
    ("marsdtm:coarse_pass", '{"factor": 3, "sigma_px": 0}', "positive number"),
    ("marsdtm:coarse_pass", '{"factor": 3}', "sigma_px"),
    ("marsdtm:coarse_pass", '3', "factor"),
    ("marsdtm:coarse_pass", '{"factor": 3, "sigma_px": 24, "blur": 1}', "factor"),
    ("marsdtm:coarse_pass", '{"factor": 3, "sigma_px": Infinity}', "positive number"),
    ("marsdtm:coarse_pass", '{"factor": 3, "sigma_px": true}', "positive number"),
    # Values of the wrong JSON type are refused as clearly as wrong values.
    ("tiles_overlap", '"25"', "percentage"),
    ("resolution", "null", "positive number"),
    ("standardization_mean", "0.0", "list of one number"),
    ("marsdtm:contract_version", '"2"', "integer"),
    ("marsdtm:sun_azimuth", '"270"', "number of degrees"),
    ("marsdtm:sun_azimuth", "NaN", "number of degrees"),
    ("tile_size", "true", "at least 16"),
])
def test_invalid_values_are_refused_naming_the_key(key, value, words):
    props = contract_for_tests().to_metadata()
    props[key] = value
    with pytest.raises(DtmError, match=f"'{key}'.*{words}"):
        parse_contract(props)


@pytest.mark.parametrize("multiple, words", [
    ("48", "'tile_size'.*a multiple of 'marsdtm:size_multiple' \\(48\\)"),
    ("0", "'marsdtm:size_multiple'.*positive integer"),
    ('"32"', "'marsdtm:size_multiple'.*positive integer")])
def test_a_tile_size_the_network_cannot_take_is_refused(multiple, words):
    props = contract_for_tests(tile_size=256).to_metadata()
    props["marsdtm:size_multiple"] = multiple
    with pytest.raises(DtmError, match=words):
        parse_contract(props)
    props["marsdtm:size_multiple"] = "32"
    assert parse_contract(props).extra["marsdtm:size_multiple"] == 32


def test_a_model_without_a_coarse_pass_gets_one_pass_and_one_with_it_keeps_it():
    props = contract_for_tests(coarse_pass={"factor": 3, "sigma_px": 24.0}).to_metadata()
    assert parse_contract(props).coarse_pass == {"factor": 3, "sigma_px": 24.0}
    del props["marsdtm:coarse_pass"]  # a model exported before the key
    assert parse_contract(props).coarse_pass is None


def test_a_coarse_pass_on_the_command_line_keeps_a_fractional_sigma():
    from mars_dtm_plugin.core.contract import coarse_pass_arg

    assert coarse_pass_arg("3x12.5") == {"factor": 3, "sigma_px": 12.5}


def test_non_json_value_is_refused():
    props = contract_for_tests().to_metadata()
    props["tile_size"] = "sixty-four"
    with pytest.raises(DtmError, match="'tile_size' that is not JSON"):
        parse_contract(props)


def test_unknown_namespaced_keys_are_kept():
    props = contract_for_tests().to_metadata()
    props["marsdtm:training_loss"] = '"l1+slope"'
    assert parse_contract(props).extra == {"marsdtm:training_loss": "l1+slope"}
