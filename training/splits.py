"""Train / validation / test splits by stereo pair, never by patch.

    python -m training.splits SOURCE --out splits.json [--seed 0] [--val 0.1] [--test 0.1]

SOURCE is a scrape manifest.json or folder (its complete pairs) or a text file of pair ids,
one a line. Pairs that share an observation image the same ground, and so do pairs whose DTMs
(where a scrape has them on disk) overlap in longitude and latitude: both are kept together in
one group; groups are ordered by a hash of seed and ids, which depends on nothing else
(not on input order), and cut at the requested fractions. Writes ``splits.json`` and, beside
it, ``train.txt``, ``val.txt`` and ``test.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from training.products import parse_pair
from training.scrape import read_manifest, write_json

SPLITS = ("train", "val", "test")


def _pair_ids(source: Path) -> list[str]:
    if source.suffix == ".txt":
        return [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return [r["pair_id"] for r, _ in read_manifest(source) if r.get("status") == "complete"]


def footprints(source: Path) -> dict[str, tuple[float, float, float, float]]:
    """(west, south, east, north) in degrees of each complete pair's DTM found on disk."""
    if source.suffix == ".txt":
        return {}
    boxes = {}
    for record, folder in read_manifest(source):
        dtm = next((f for f in record.get("files", []) if f.get("role") == "dtm"), None)
        if record.get("status") == "complete" and dtm and (folder / dtm["path"]).is_file():
            box = _lon_lat_box(folder / dtm["path"])
            if box:
                boxes[record["pair_id"]] = box
    return boxes


def _lon_lat_box(path: Path) -> tuple[float, float, float, float] | None:
    """None for a DTM GDAL cannot place (the tiles stage says what is wrong with it)."""
    from osgeo import gdal, osr

    try:
        dataset = gdal.OpenEx(str(path), gdal.OF_RASTER)
    except RuntimeError:  # with GDAL's exceptions on; without, None
        return None
    gt = dataset.GetGeoTransform(can_return_null=True) if dataset else None
    srs = dataset.GetSpatialRef() if gt else None
    if srs is None:
        return None
    geographic = srs.CloneGeogCS()
    for ref in (srs, geographic):
        ref.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_lon_lat = osr.CoordinateTransformation(srs, geographic)
    w, h = dataset.RasterXSize, dataset.RasterYSize
    corners = [(c, r) for c in (0, w / 2, w) for r in (0, h / 2, h) if (c, r) != (w / 2, h / 2)]
    lon_lat = [to_lon_lat.TransformPoint(gt[0] + c * gt[1] + r * gt[2],
                                         gt[3] + c * gt[4] + r * gt[5])[:2] for c, r in corners]
    lons = np.degrees(np.unwrap(np.radians([lon for lon, _ in lon_lat])))  # across 180°
    lats = [lat for _, lat in lon_lat]
    return float(lons.min()), min(lats), float(lons.max()), max(lats)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[1] <= b[3] and b[1] <= a[3] and any(
        a[0] <= b[2] + turn and b[0] + turn <= a[2] for turn in (-360.0, 0.0, 360.0))


def groups_of(pair_ids: list[str],
              boxes: dict[str, tuple[float, float, float, float]] | None = None
              ) -> list[list[str]]:
    """Pairs linked by a shared observation or (``boxes``) overlapping DTMs, as sorted groups
    (union-find)."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for pair_id in pair_ids:
        pair = parse_pair(pair_id)
        if pair is None:
            raise ValueError(f"{pair_id!r} is not a stereo pair id")
        for obs in pair.observations:
            parent[root(str(obs))] = root(pair_id)
    placed = sorted((boxes or {}).items())
    for i, (first, box) in enumerate(placed):
        for second, other in placed[i + 1:]:
            if _overlap(box, other):
                parent[root(first)] = root(second)
    groups: dict[str, list[str]] = {}
    for pair_id in sorted(set(pair_ids)):
        groups.setdefault(root(pair_id), []).append(pair_id)
    return list(groups.values())


def split_pairs(pair_ids: list[str], seed: int = 0, val: float = 0.1, test: float = 0.1,
                boxes: dict[str, tuple[float, float, float, float]] | None = None
                ) -> dict[str, list[str]]:
    """Assign whole groups of pairs to train, val and test, deterministically from ``seed``."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError("val and test fractions must be non-negative and sum below 1")
    groups = sorted(groups_of(pair_ids, boxes), key=lambda g: hashlib.sha256(
        f"{seed}:{g[0]}".encode()).hexdigest())
    total = sum(map(len, groups))
    # A split asked for gets at least one pair, however few there are.
    wanted = {name: max(1, round(share * total)) if share > 0 else 0
              for name, share in (("test", test), ("val", val))}
    result: dict[str, list[str]] = {name: [] for name in SPLITS}
    for group in groups:
        name = next((n for n in ("test", "val") if len(result[n]) < wanted[n]), "train")
        result[name].extend(group)
    if empty := [n for n in SPLITS if not result[n] and (n == "train" or wanted[n])]:
        raise ValueError(f"{total} pair(s), in {len(groups)} group(s) that share no "
                         f"observation or ground, leave {' and '.join(empty)} empty; scrape "
                         "more pairs or give --val 0 or --test 0")
    return {name: sorted(ids) for name, ids in result.items()}


def write_splits(splits: dict[str, list[str]], out: Path, seed: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        (out.parent / f"{name}.txt").write_text("".join(f"{p}\n" for p in splits[name]))
    write_json(out, {"seed": seed, **splits})


def load_splits(path: Path) -> dict[str, str]:
    """pair id -> split name, from a splits.json; ValueError if a pair is in two splits."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(
            isinstance(data.get(name, []), list)
            and all(isinstance(pair, str) for pair in data.get(name, [])) for name in SPLITS):
        raise ValueError(f"{path} is no splits file: it must be a JSON object with lists of "
                         f"pair ids under {', '.join(SPLITS)}")
    owner: dict[str, str] = {}
    for name in SPLITS:
        for pair_id in data.get(name, []):
            if owner.setdefault(pair_id, name) != name:
                raise ValueError(f"pair {pair_id} is in both {owner[pair_id]} and {name}")
    return owner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.splits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="manifest.json, scrape folder or .txt of ids")
    parser.add_argument("--out", type=Path, default=Path("splits.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=float, default=0.1, help="fraction of pairs")
    parser.add_argument("--test", type=float, default=0.1, help="fraction of pairs")
    args = parser.parse_args(argv)
    try:
        if not args.source.exists():
            raise ValueError(f"{args.source} does not exist")
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a folder; give the file to write, such as "
                             f"{args.out / 'splits.json'}")
        pair_ids = _pair_ids(args.source)
        if not pair_ids:
            raise ValueError(f"{args.source} names no complete pair")
        splits = split_pairs(pair_ids, args.seed, args.val, args.test, footprints(args.source))
    except (ValueError, KeyError, OSError) as error:
        print(f"error: {error}.", file=sys.stderr)
        return 2
    write_splits(splits, args.out, args.seed)
    print(", ".join(f"{name} {len(ids)}" for name, ids in splits.items()) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
