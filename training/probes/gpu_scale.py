"""Probe: does more synthetic data and more steps help on the real test sets? (one GPU)

    python -m training.probes.gpu_scale WORK [--shapes shapes.pkl]
    bash training/probes/gpu_scale.sh WORK

The first renders, with one process per part (17 at once), 16 parts of 750 synthetic and
750 DEM-shape patches (the recipe's mix; part k seeded 1000 + k) and a validation part (96
of each, seed 999), links them as WORK/base (parts 0-3: the recipe's 6 000 patches),
WORK/all (24 000) and WORK/val, and writes the recipe's main and fine-tune options
(WORK/main.json, WORK/finetune.json). The second trains three variants at once on the GPU:
A, the recipe on base; B, batches of 16 for 10 000 steps on all; C, the same on base; each
then fine-tuned as the recipe does (B and C in batches of 16). Results: docs/experiments.md
("Probe on a GPU").

``--shapes`` reads the DEM shapes from a pickle of ``training.data.load_dem_shapes(folder)``,
for a GPU machine without GDAL.
"""

from __future__ import annotations

import argparse
import pickle
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from training.data import DemShapePatches, SunRange, SyntheticPatches, load_dem_shapes, write_pool
from training.make_model import DEM_SHAPES, _train_args, load_recipe

RECIPE = Path(__file__).parents[1] / "configs" / "quick.json"
PARTS, EACH = 16, 750  # patches of each source per part: 4 parts make the recipe's pool


def render_part(work: Path, shapes_pickle: str | None, part: int | str) -> None:
    """One part of the pool (or, for ``"val"``, the validation pool), the recipe's mix."""
    recipe = load_recipe(RECIPE)
    pool, train = recipe["pool"], recipe["train"]
    shapes = (pickle.loads(Path(shapes_pickle).read_bytes()) if shapes_pickle
              else load_dem_shapes(DEM_SHAPES))
    sun = SunRange(train["canonical_azimuth"], train["azimuth_jitter"])
    count = pool["val_each"] if part == "val" else EACH
    sources = [(SyntheticPatches(pool["size"], sun=sun, relief=tuple(pool["synthetic_relief"])),
                count), (DemShapePatches(shapes, pool["size"], sun=sun), count)]
    write_pool(sources, work / "parts" / str(part), seed=999 if part == "val" else 1000 + part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--shapes", help="pickled load_dem_shapes() result")
    args = parser.parse_args()
    parts = ["val", *range(PARTS)]
    with Pool(len(parts)) as pool:
        pool.map(partial(render_part, args.work, args.shapes), parts)
    for name, chosen in (("base", range(4)), ("all", range(PARTS)), ("val", ["val"])):
        folder = args.work / name
        folder.mkdir(parents=True, exist_ok=True)
        for part in chosen:
            for shard in sorted((args.work / "parts" / str(part)).glob("*.tar")):
                link = folder / f"p{part}-{shard.name}"
                link.unlink(missing_ok=True)  # a rerun renders the same parts again
                link.symlink_to(shard.resolve())
    recipe = load_recipe(RECIPE)
    # The recipe's own main-run and fine-tune options, as make_model writes them.
    _train_args(recipe, args.work, "main", {"gan": False})
    _train_args(recipe, args.work, "finetune", recipe["finetune"])


if __name__ == "__main__":
    main()
