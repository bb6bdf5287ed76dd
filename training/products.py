"""HiRISE product identifiers: observations, stereo pairs, DTMs and orthoimages.

Products are chosen by what their names mean, never by which link happens to come first:

- observation ``ESP_011384_2185``: mission phase (PSP or ESP), orbit number, target code;
- stereo pair ``ESP_011384_2185_ESP_011661_2185``: the two observations of one DTM, as UAHiRISE
  names the pair's folder;
- DTM ``DTEEC_011384_2185_011661_2185_A01.IMG``: ``DTE`` + projection (E equirectangular,
  P polar stereographic) + a source letter, both observations' orbit and target, the producing
  institution's letter and a two-digit version;
- orthoimage ``ESP_011384_2185_RED_C_01_ORTHO.JP2`` (and its detached ``.LBL``): observation,
  band (RED), scale letter (A 0.25 m, B 0.5 m, C 1 m) and the version of the DTM it was
  orthorectified on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OBS = r"(PSP|ESP)_(\d{6})_(\d{4})"
_PAIR_RE = re.compile(rf"^{_OBS}_{_OBS}$", re.IGNORECASE)  # as a mirror may spell it
_DTM_RE = re.compile(r"^DTE([EP])([A-Z])_(\d{6})_(\d{4})_(\d{6})_(\d{4})_([A-Z])(\d{2})\.IMG$",
                     re.IGNORECASE)
_ORTHO_RE = re.compile(rf"^{_OBS}_([A-Z0-9]+)_([ABC])_(\d{{2}})_ORTHO\.(JP2|LBL)$",
                       re.IGNORECASE)
_ORBIT_DIR_RE = re.compile(r"^ORB_(\d{6})_(\d{6})$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Observation:
    phase: str
    orbit: int
    target: str

    def __str__(self) -> str:
        return f"{self.phase}_{self.orbit:06d}_{self.target}"

    @property
    def key(self) -> tuple[int, str]:
        """What a DTM name keeps of an observation: orbit and target, not the phase."""
        return (self.orbit, self.target)


@dataclass(frozen=True)
class Pair:
    first: Observation
    second: Observation

    def __str__(self) -> str:
        return f"{self.first}_{self.second}"

    @property
    def observations(self) -> tuple[Observation, Observation]:
        return (self.first, self.second)


@dataclass(frozen=True)
class Dtm:
    name: str
    projection: str  # "E" equirectangular, "P" polar stereographic
    source: str
    keys: tuple[tuple[int, str], tuple[int, str]]
    producer: str
    version: int

    @property
    def product_id(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Ortho:
    name: str
    observation: Observation
    band: str
    scale: str  # "A", "B" or "C"
    version: int
    extension: str  # "JP2" (the image) or "LBL" (its detached label)

    @property
    def product_id(self) -> str:
        return self.name.rsplit(".", 1)[0]


def _observation(phase: str, orbit: str, target: str) -> Observation:
    return Observation(phase.upper(), int(orbit), target)


def parse_pair(text: str) -> Pair | None:
    """A stereo pair from its folder name ``<OBS1>_<OBS2>``, or None."""
    match = _PAIR_RE.match(text.rstrip("/"))
    if not match:
        return None
    groups = match.groups()
    return Pair(_observation(*groups[:3]), _observation(*groups[3:]))


def parse_dtm(name: str) -> Dtm | None:
    match = _DTM_RE.match(name)
    if not match:
        return None
    proj, source, orbit1, target1, orbit2, target2, producer, version = match.groups()
    keys = ((int(orbit1), target1), (int(orbit2), target2))
    return Dtm(name, proj.upper(), source.upper(), keys, producer.upper(), int(version))


def parse_ortho(name: str) -> Ortho | None:
    match = _ORTHO_RE.match(name)
    if not match:
        return None
    phase, orbit, target, band, scale, version, ext = match.groups()
    return Ortho(name, _observation(phase, orbit, target), band.upper(), scale.upper(),
                 int(version), ext.upper())


def parse_product(name: str) -> Dtm | Ortho | None:
    """A DTM or an orthoimage (or its label) from a file name; None for anything else."""
    return parse_dtm(name) or parse_ortho(name)


def is_orbit_dir(name: str) -> bool:
    """UAHiRISE groups pairs in folders of 100 orbits: ``ORB_011300_011399``."""
    return bool(_ORBIT_DIR_RE.match(name.rstrip("/")))


def dtm_matches_pair(dtm: Dtm, pair: Pair) -> bool:
    return sorted(dtm.keys) == sorted(obs.key for obs in pair.observations)


@dataclass(frozen=True)
class Selection:
    """The files one training sample needs: the DTM, an orthoimage and its label."""

    pair: Pair
    dtm: Dtm
    ortho: Ortho
    label: Ortho

    @property
    def names(self) -> tuple[str, str, str]:
        return (self.dtm.name, self.ortho.name, self.label.name)


def select_products(pair: Pair, names: list[str], scale: str = "C",
                    ) -> tuple[Selection | None, str]:
    """Choose a pair's DTM and a RED orthoimage at ``scale`` with its label.

    Returns the selection, or None and the reason why there is none. Among several DTM
    versions the highest wins. The ortho is one made on that DTM version if there is one,
    and of those the first observation's, else the second's (pair folders also hold orthos of
    other observations of the site; they are never taken here).
    """
    products = [p for p in map(parse_product, names) if p is not None]
    dtms = [p for p in products if isinstance(p, Dtm) and dtm_matches_pair(p, pair)]
    if not dtms:
        return None, f"no DTM of pair {pair} listed"
    dtm = max(dtms, key=lambda d: (d.version, d.producer))
    orthos = [p for p in products if isinstance(p, Ortho) and p.band == "RED"
              and p.scale == scale and p.observation in pair.observations]
    images = [p for p in orthos if p.extension == "JP2"]
    if not images:
        return None, f"no RED_{scale} orthoimage of {pair.first} or {pair.second} listed"
    # Made on the chosen DTM first: an ortho made on another version may lie off it.
    ortho = max(images, key=lambda o: (o.version == dtm.version, o.observation == pair.first,
                                       o.version))
    labels = [p for p in orthos if p.extension == "LBL" and p.product_id == ortho.product_id]
    if not labels:
        return None, f"no label {ortho.product_id}.LBL listed"
    return Selection(pair, dtm, ortho, labels[0]), ""
