"""Cut scraped HiRISE pairs into training patches, written as WebDataset tar shards.

    python -m training.tiles MANIFEST_OR_DIR --out DIR [--size 512] [--overlap 64]
                             [--shard-size 1000] [--splits splits.json]

Reads each pair's DTM (PDS3, the missing value matched as a number) and warps its orthoimage
onto the DTM grid by georeferencing, strip by strip so memory stays bounded. Patches touching
missing heights or missing image pixels are dropped; heights become metres relative to the
patch mean. Only files the scraper's manifest marks complete, with the recorded size on disk,
are read. With ``--splits`` the shards of each split go to their own folder. See docs/data.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from mars_dtm_plugin.core.raster import ground_pixel_size_m, label_scaling, north_in_image
from training.labels import missing_constant, read_label, sun_geometry
from training.scrape import SAFE_NAME, read_manifest, write_json
from training.shards import Patch, ShardWriter
from training.splits import SPLITS, load_splits

gdal.UseExceptions()
log = logging.getLogger("training.tiles")
ROLES = ("dtm", "ortho", "ortho_label")
ISIS_SPECIAL_BELOW = np.float32(-1e38)
"""32-bit DNs at or below this are ISIS special pixels, never heights."""


@dataclass(frozen=True)
class PairFiles:
    pair_id: str
    dtm: Path
    ortho: Path
    label: Path


def verify(record: dict, folder: Path) -> tuple[PairFiles | None, str]:
    """The pair's files if the manifest marks them complete and their sizes match on disk."""
    pair_id = record.get("pair_id", "?")
    if record.get("status") != "complete":
        return None, f"{record.get('status')}: {record.get('reason')}"
    paths = {}
    for entry in record.get("files", []):
        path = folder / entry["path"]
        if not SAFE_NAME.match(entry["path"]) or entry.get("status") != "complete":
            return None, f"{entry['path']} is not complete"
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return None, f"{entry['path']} differs from its recorded size"
        paths[entry["role"]] = path
    if set(ROLES) - paths.keys():
        return None, f"the manifest lacks {sorted(set(ROLES) - paths.keys())}"
    return PairFiles(pair_id, *(paths[role] for role in ROLES)), ""


def load_pairs(source: Path) -> tuple[list[PairFiles], dict[str, str]]:
    """Usable pairs of a manifest, a pair.json or a scrape folder, and why others are not."""
    usable, skipped = [], {}
    for record, folder in read_manifest(source):
        pair, reason = verify(record, folder)
        if pair is None:
            skipped[record.get("pair_id", str(folder))] = reason
        else:
            usable.append(pair)
    return usable, skipped


class Dtm:
    """A DTM opened with GDAL: read by row strips, missing data matched as a value."""

    def __init__(self, path: Path) -> None:
        self.ds = gdal.Open(str(path))
        self.band = self.ds.GetRasterBand(1)
        self.gt = self.ds.GetGeoTransform()
        self.wkt = self.ds.GetProjection()
        if not self.wkt or self.gt[2] or self.gt[4]:
            raise ValueError(f"{path.name} is not a georeferenced grid without rotation terms")
        self.missing = np.float32(missing_constant(read_label(path)))
        self.width, self.height = self.ds.RasterXSize, self.ds.RasterYSize

    def strip(self, y0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Heights in metres and a validity mask for rows ``y0 .. y0 + rows``."""
        dn = self.band.ReadAsArray(0, y0, self.width, rows).astype(np.float32)
        # ISIS's special pixels (NULL, LRS, LIS, HIS, HRS) all lie near -3.4e38, not only the
        # label's MISSING_CONSTANT.
        valid = np.isfinite(dn) & (dn != self.missing) & (dn > ISIS_SPECIAL_BELOW)
        nodata = self.band.GetNoDataValue()
        if nodata is not None:
            valid &= dn != np.float32(nodata)
        metres = dn * (self.band.GetScale() or 1.0) + (self.band.GetOffset() or 0.0)
        return np.where(valid, metres, 0.0).astype(np.float32), valid

    def bounds(self, y0: int, rows: int) -> tuple[float, float, float, float]:
        x0, dx, _, top, _, dy = self.gt
        return (x0, top + (y0 + rows) * dy, x0 + self.width * dx, top + y0 * dy)


def warp_strip(ortho: gdal.Dataset, dtm: Dtm, y0: int, rows: int) -> np.ndarray:
    """The ortho resampled onto the DTM's grid for rows ``y0 .. y0 + rows`` (0 = no data)."""
    finer = abs(ortho.GetGeoTransform()[1]) < 0.75 * abs(dtm.gt[1])
    # Full-resolution source: a JPEG 2000's reduced levels are wavelet low-passes, not means.
    warped = gdal.Warp("", ortho, format="MEM", dstSRS=dtm.wkt, overviewLevel="NONE",
                       outputBounds=dtm.bounds(y0, rows), width=dtm.width, height=rows,
                       resampleAlg="average" if finer else "bilinear",
                       srcNodata=0, dstNodata=0, outputType=gdal.GDT_Byte)
    return warped.GetRasterBand(1).ReadAsArray()


def image_strip(ortho: gdal.Dataset, dtm: Dtm, y0: int, rows: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """The warped strip and where it is wholly imaged: not beside a pixel without image.

    Beside the ortho's nodata a pixel's footprint may be only partly imaged, its value then
    that of the part (averaged or interpolated without the nodata), so it is left out too; a
    row above and below the strip is warped to see its neighbours there.
    """
    top, bottom = max(y0 - 1, 0), min(y0 + rows + 1, dtm.height)
    wide = warp_strip(ortho, dtm, top, bottom - top)
    blank = np.pad(wide == 0, 1)
    h, w = wide.shape
    beside = np.logical_or.reduce([blank[dy:dy + h, dx:dx + w]
                                   for dy in range(3) for dx in range(3)])
    inside = slice(y0 - top, y0 - top + rows)
    return wide[inside], ~beside[inside]


def clean_windows(invalid: np.ndarray, size: int, stride: int) -> Iterator[int]:
    """Column offsets of size x size windows of a strip that touch no invalid pixel."""
    counts = np.pad(invalid.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for x0 in range(0, invalid.shape[1] - size + 1, stride):
        x1 = x0 + size
        if counts[size, x1] - counts[size, x0] - counts[0, x1] + counts[0, x0] == 0:
            yield x0


def pair_patches(pair: PairFiles, size: int, overlap: int) -> Iterator[Patch]:
    """Patches of one pair with their provenance, row strip by row strip."""
    dtm = Dtm(pair.dtm)
    ortho = gdal.Open(str(pair.ortho))
    if not ortho.GetProjection():
        raise ValueError(f"{pair.ortho.name} carries no georeferencing")
    sun = sun_geometry(read_label(pair.label))
    scale, offset = label_scaling(str(pair.ortho))  # as the engine will read such a product
    base = {"pair_id": pair.pair_id, "source": "hirise", "crs_wkt": dtm.wkt,
            "height_units": "m",
            "height_reference": "patch_mean", "dtm_product_id": pair.dtm.stem,
            "ortho_product_id": pair.ortho.stem, **sun}
    srs = osr.SpatialReference(wkt=dtm.wkt)
    stride = size - overlap
    for y0 in range(0, dtm.height - size + 1, stride):
        heights, valid = dtm.strip(y0, size)
        image, imaged = image_strip(ortho, dtm, y0, size)
        for x0 in clean_windows(~valid | ~imaged, size, stride):
            patch_h = heights[:, x0:x0 + size].astype(np.float64)
            mean = float(patch_h.mean())
            gt = list(dtm.gt)
            gt[0], gt[3] = gt[0] + x0 * gt[1], gt[3] + y0 * gt[5]
            # Grid north and true north part in polar stereographic DTMs, and map units
            # and the ground: say where north lies and how large a pixel is on the ground in
            # this patch, as the engine does for a scene, so the sun can be turned and
            # heights read in pixel sizes as the engine will.
            north = north_in_image(gt, srs, size, size)
            # The label's sun is in the image's frame (from its +sample axis), the same over
            # the whole ortho; from north it turns with the meridians (polar stereographic).
            sun_from_north = (sun["sub_solar_azimuth_deg"] - 270.0 - north) % 360.0
            meta = {**base, "window": [x0, y0, size, size], "geotransform": gt,
                    "height_offset_m": mean, "north_deg": north,
                    "sun_azimuth_deg": sun_from_north,
                    "pixel_size_m": ground_pixel_size_m(gt, srs, size, size)}
            pixels = image[:, x0:x0 + size].copy()
            if (scale, offset) != (1.0, 0.0):  # I/F, as the engine reads such a product
                pixels = (pixels * scale + offset).astype(np.float32)
            yield Patch(f"{pair.pair_id}_x{x0:06d}_y{y0:06d}", pixels,
                        (patch_h - mean).astype(np.float32), meta)


class Shards:
    """One ShardWriter per split, opened on first use so nothing is created for nothing."""

    def __init__(self, out: Path, shard_size: int) -> None:
        self.out, self.shard_size = out, shard_size
        self.writers: dict[str, ShardWriter] = {}

    def write(self, split: str, patch: Patch) -> None:
        if split not in self.writers:
            folder = self.out / split if split else self.out
            self.writers[split] = ShardWriter(folder, prefix="hirise", max_count=self.shard_size)
        self.writers[split].write(patch)

    def close(self) -> list[str]:
        for writer in self.writers.values():
            writer.close()
        return [str(p.relative_to(self.out)) for w in self.writers.values() for p in w.paths]

    def abort(self) -> None:
        """Drop the shards being written; the complete ones stay."""
        for writer in self.writers.values():
            writer.abort()


def build(pairs: list[PairFiles], out: Path, size: int = 512, overlap: int = 64,
          shard_size: int = 1000, splits: dict[str, str] | None = None,
          skipped: dict[str, str] | None = None) -> dict:
    """Write every pair's patches; return an index of patches per pair, shards and pairs
    skipped (``skipped`` carries those the manifest already ruled out)."""
    shards = Shards(out, shard_size)
    index: dict = {"size": size, "overlap": overlap, "pairs": {}, "skipped": dict(skipped or {})}
    for pair_id, reason in index["skipped"].items():
        log.warning("skipped %s: %s", pair_id, reason)
    try:
        _write_pairs(pairs, shards, index, size, overlap, splits)
        index["shards"] = shards.close()
    except BaseException:  # Ctrl-C, a full disk or a bug: no half-written shard stays behind
        shards.abort()
        raise
    if index["shards"]:
        write_json(out / "patches.json", index)
    return index


def _why_no_patch(pair: PairFiles, size: int) -> str:
    dtm = gdal.OpenEx(str(pair.dtm), gdal.OF_RASTER)
    if min(dtm.RasterXSize, dtm.RasterYSize) < size:
        return f"the DTM is {dtm.RasterXSize} x {dtm.RasterYSize} px, smaller than --size {size}"
    return (f"no {size} px window with heights and image throughout (does the ortho lie on the "
            "DTM?)")


def _write_pairs(pairs: list[PairFiles], shards: Shards, index: dict, size: int, overlap: int,
                 splits: dict[str, str] | None) -> None:
    """Each pair's patches into its split's shards, noting in ``index`` what each gave."""
    for pair in pairs:
        split = splits.get(pair.pair_id) if splits is not None else ""
        if split is None:
            index["skipped"][pair.pair_id] = "in no split"  # quietly: by design
            continue
        count, unreadable = 0, []
        # Only reading a pair may fail here; an error writing the shards stops the run.
        for patch in _until_unreadable(pair_patches(pair, size, overlap), unreadable):
            shards.write(split, patch)
            count += 1
        if not unreadable and not count:  # an ortho off its DTM, say: not silently lost
            index["skipped"][pair.pair_id] = _why_no_patch(pair, size)
            log.warning("skipped %s: %s", pair.pair_id, index["skipped"][pair.pair_id])
        elif not unreadable:
            index["pairs"][pair.pair_id] = {"patches": count, "split": split}
        elif count:  # its patches so far are in the shards: say so, and why it stopped
            index["pairs"][pair.pair_id] = {"patches": count, "split": split,
                                            "stopped": str(unreadable[0])}
            log.warning("%s stopped after %d patches: %s", pair.pair_id, count, unreadable[0])
        else:
            index["skipped"][pair.pair_id] = str(unreadable[0])
            log.warning("skipped %s: %s", pair.pair_id, unreadable[0])


def _until_unreadable(patches: Iterator[Patch], errors: list[Exception]) -> Iterator[Patch]:
    """The patches until reading the pair fails, the failure noted in ``errors``."""
    try:
        yield from patches
    except (RuntimeError, ValueError, OSError) as error:
        errors.append(error)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.tiles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="manifest.json, pair.json or scrape folder")
    parser.add_argument("--out", required=True, type=Path, help="folder for the shards")
    parser.add_argument("--size", type=int, default=512, help="patch side in DTM pixels")
    parser.add_argument("--overlap", type=int, default=64, help="pixels shared by neighbours")
    parser.add_argument("--shard-size", type=int, default=1000, help="patches per shard")
    parser.add_argument("--splits", type=Path, help="splits.json from training.splits")
    args = parser.parse_args(argv)
    problems = [
        (not args.source.exists(), f"{args.source} does not exist"),
        (args.size < 8, "--size must be at least 8"),
        (not 0 <= args.overlap < args.size, "--overlap must be at least 0 and below --size"),
        (args.shard_size < 1, "--shard-size must be at least 1"),
        (args.splits is not None and not args.splits.is_file(), f"{args.splits} is no file"),
        # Shards of an earlier run would be read with the new ones (and their old splits).
        (args.out.is_dir() and any(args.out.rglob("*.tar")),
         f"{args.out} already holds shards; choose an empty folder or delete them"),
    ]
    for bad, message in problems:
        if bad:
            parser.exit(2, f"error: {message}.\n")
    return args


def _report_splits(index: dict) -> None:
    """Patches per split, and a warning for a split that got none (too few pairs, or pairs
    too small for --size), which training or evaluation would otherwise find later."""
    counts = dict.fromkeys(SPLITS, 0)
    for pair in index["pairs"].values():
        counts[pair["split"]] += pair["patches"]
    print("patches per split: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    for name in (name for name, n in counts.items() if not n):
        log.warning("split %s has no patches", name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        pairs, skipped = load_pairs(args.source)
    except (ValueError, KeyError, OSError) as error:
        print(f"error: cannot read {args.source}: {error}.", file=sys.stderr)
        return 2
    try:
        splits = load_splits(args.splits) if args.splits else None
    except (ValueError, OSError) as error:  # json's decode error is a ValueError
        print(f"error: cannot read the splits file {args.splits}: {error}.", file=sys.stderr)
        return 2
    try:
        index = build(pairs, args.out, args.size, args.overlap, args.shard_size, splits, skipped)
    except OSError as error:  # the pairs' own read errors are caught inside: this is writing
        print(f"error: cannot write the shards in {args.out}: {error}; the complete shards "
              "stay, the one being written was removed.", file=sys.stderr)
        return 1
    total = sum(p["patches"] for p in index["pairs"].values())
    print(f"pairs usable {len(pairs)}, skipped {len(index['skipped'])}; "
          f"patches {total} in {len(index['shards'])} shards under {args.out}")
    if splits is not None:
        _report_splits(index)
    if not index["shards"]:
        print("error: no patch could be cut from the given pairs.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
