"""The model contract: what an ONNX generator must declare in its ``metadata_props``.

Every value is JSON. Keys shared with Deepness and GeoDeep keep their names and meaning;
the rest live under the ``marsdtm:`` namespace. See docs/model-contract.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from .errors import DtmError

CONTRACT_VERSION = 2  # 2: adds marsdtm:input_scaling
NAMESPACE = "marsdtm:"
SIZE_MULTIPLE = NAMESPACE + "size_multiple"  # optional: what tile_size must be a multiple of

HEIGHT_UNITS = ("gsd", "metres")
SUN_MODES = ("rotate", "none")
INPUT_SCALINGS = ("percentile", "mean_ratio")
# Keys added after contract version 1. An engine that predates ``coarse_pass`` ignores it (it
# lands in ``extra``) and runs the model without that pass: no new contract version.
OPTIONAL_DEFAULTS = {"input_scaling": "percentile", "coarse_pass": None}


@dataclass(frozen=True)
class ModelContract:
    """Parsed, validated metadata of one generator model."""

    tile_size: int
    """Side of the square input tile, in pixels."""
    tiles_overlap: float
    """Default overlap between neighbouring tiles, in percent of the tile size."""
    resolution: float
    """Ground sampling distance of the training data, in cm per pixel (Deepness/GeoDeep)."""
    standardization_mean: list[float]
    standardization_std: list[float]
    height_units: str
    """``gsd``: heights in units of the input pixel size; ``metres``: heights in metres."""
    height_reference: str
    """What the output heights are relative to; ``tile_mean``: each tile has zero mean."""
    sun_mode: str
    """``rotate``: the engine rotates each scene so the sun comes from ``sun_azimuth``."""
    sun_azimuth: float
    """Canonical sun azimuth in degrees clockwise from image up (only with ``rotate``)."""
    input_percentiles: list[float]
    """Scene percentiles mapped to 0 and 1 before standardisation (``percentile`` scaling)."""
    version: str
    training_data: str
    code_revision: str
    model_type: str = "regression"
    input_scaling: str = "percentile"
    """``percentile``: scene percentiles to 0..1. ``mean_ratio``: (I / scene mean - 1) times
    tan(sun elevation), the linearised Lambertian slope toward the sun, which keeps the
    image's contrast, and so the size of its slopes, that a percentile stretch removes."""
    coarse_pass: dict | None = None
    """``{"factor": k, "sigma_px": s}``: the engine also runs the model on the image averaged
    over k x k blocks and takes the DTM's wavelengths beyond s pixels from that pass (see
    ``core.coarse``); None: one pass."""
    contract_version: int = CONTRACT_VERSION
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` that declare this contract (values JSON-encoded)."""
        values = asdict(self)
        extra = values.pop("extra")
        props = {}
        for name, value in values.items():
            props[_key_of(name)] = json.dumps(value)
        props.update({k: json.dumps(v) for k, v in extra.items()})
        return props


# Field name -> metadata key. Deepness/GeoDeep keys stay bare; ours are namespaced.
_SHARED_KEYS = {
    "model_type",
    "tile_size",
    "tiles_overlap",
    "resolution",
    "standardization_mean",
    "standardization_std",
}


def _key_of(name: str) -> str:
    return name if name in _SHARED_KEYS else NAMESPACE + name


REQUIRED_KEYS = tuple(
    _key_of(name) for name in ModelContract.__dataclass_fields__
    if name != "extra" and name not in OPTIONAL_DEFAULTS
)


def parse_contract(props: Mapping[str, str], source: str = "the model") -> ModelContract:
    """Validate ``metadata_props``; refuse a missing or wrong key, naming it."""
    values = {}
    for name in ModelContract.__dataclass_fields__:
        if name == "extra":
            continue
        key = _key_of(name)
        if key not in props and name in OPTIONAL_DEFAULTS:
            values[name] = OPTIONAL_DEFAULTS[name]
            continue
        if key not in props:
            raise DtmError(f"{source} lacks the required metadata key '{key}'.")
        try:
            values[name] = json.loads(props[key])
        except json.JSONDecodeError as exc:
            raise DtmError(f"{source} has metadata key '{key}' that is not JSON.") from exc
    known = {_key_of(n) for n in values}
    extra = {}
    for key, raw in props.items():
        if key.startswith(NAMESPACE) and key not in known:
            try:
                extra[key] = json.loads(raw)
            except json.JSONDecodeError:
                extra[key] = raw
    contract = ModelContract(**values, extra=extra)
    _check(contract, source)
    return contract


def coarse_pass_arg(text: str) -> dict:
    """``FACTORxSIGMA`` (such as ``3x24``) as a ``coarse_pass`` value, for command lines;
    ``parse_contract`` checks the numbers."""
    factor, _, sigma = text.partition("x")
    try:
        return {"factor": int(factor), "sigma_px": float(sigma)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FACTORxSIGMA, such as 3x24, not {text!r}")\
            from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _numbers(value: object, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(map(_is_number, value))


def _is_coarse_pass(value: object) -> bool:
    return (isinstance(value, dict) and set(value) == {"factor", "sigma_px"}
            and isinstance(value["factor"], int) and not isinstance(value["factor"], bool)
            and value["factor"] >= 2 and _is_number(value["sigma_px"]) and value["sigma_px"] > 0)


def _check(c: ModelContract, source: str) -> None:
    def fail(key: str, why: str) -> None:
        raise DtmError(f"{source} has an invalid metadata key '{_key_of(key)}': {why}.")

    if c.model_type != "regression":
        fail("model_type", "expected \"regression\"")
    if not isinstance(c.contract_version, int) or isinstance(c.contract_version, bool):
        fail("contract_version", "expected an integer")
    if c.contract_version > CONTRACT_VERSION:
        fail("contract_version", f"this plugin reads contract version {CONTRACT_VERSION}")
    if not isinstance(c.tile_size, int) or isinstance(c.tile_size, bool) or c.tile_size < 16:
        fail("tile_size", "expected an integer of at least 16")
    if not (_is_number(c.tiles_overlap) and 0 <= c.tiles_overlap < 50):
        fail("tiles_overlap", "expected a percentage from 0 to below 50")
    if not (_is_number(c.resolution) and c.resolution > 0):
        fail("resolution", "expected a positive number of cm per pixel")
    if not _numbers(c.standardization_mean, 1):
        fail("standardization_mean", "expected a list of one number (one input channel)")
    if not (_numbers(c.standardization_std, 1) and c.standardization_std[0] > 0):
        fail("standardization_std", "expected a list of one positive number")
    if c.height_units not in HEIGHT_UNITS:
        fail("height_units", f"expected one of {', '.join(HEIGHT_UNITS)}")
    if c.height_reference != "tile_mean":
        fail("height_reference", "expected \"tile_mean\"")
    if c.sun_mode not in SUN_MODES:
        fail("sun_mode", f"expected one of {', '.join(SUN_MODES)}")
    if not _is_number(c.sun_azimuth):
        fail("sun_azimuth", "expected a number of degrees")
    if c.input_scaling not in INPUT_SCALINGS:
        fail("input_scaling", f"expected one of {', '.join(INPUT_SCALINGS)}")
    if c.coarse_pass is not None and not _is_coarse_pass(c.coarse_pass):
        fail("coarse_pass", "expected null or {\"factor\": an integer of at least 2, "
                            "\"sigma_px\": a positive number}")
    multiple = c.extra.get(SIZE_MULTIPLE, 1)  # a U-Net's halvings need tiles divisible by it
    if not (isinstance(multiple, int) and not isinstance(multiple, bool) and multiple >= 1):
        raise DtmError(f"{source} has an invalid metadata key '{SIZE_MULTIPLE}': expected a "
                       "positive integer.")
    if c.tile_size % multiple:
        fail("tile_size", f"expected a multiple of '{SIZE_MULTIPLE}' ({multiple}), the sizes "
                          "its network takes")
    lo_hi = c.input_percentiles
    if not (_numbers(lo_hi, 2) and 0 <= lo_hi[0] < lo_hi[1] <= 100):
        fail("input_percentiles", "expected [low, high] percentiles with low < high")
