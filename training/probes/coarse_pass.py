"""Probe: which coarse pass (``marsdtm:coarse_pass``) a model should ask for, on validation data.

    python -m training.probes.coarse_pass --model ONNX --out DIR [--passes 2x24,3x24,...]

Writes a copy of the model for each pass (``DIR/k<factor>s<sigma>.onnx``, and ``one_pass.onnx``
without one) and scores each through the engine, as `training.evaluate` scores, on two
validation sets that no test set shares:

- synthetic scenes drawn with another seed than the test set's (``--seed``, 48 of 512 px);
- renders of the DEM shapes the models train on (``../shared/data/dem_shapes``, Louth crater's
  training rows, not its held-out ones): crops of 256 px under random suns, twelve per DEM
  large enough.

It prints a table per set and, per pass, the mean of the three δ over both sets (the pass with
the highest is the one to choose) and its RMSE against one pass's on each set.
The copies evaluate on the test sets with ``training.evaluate --model NAME=DIR/NAME.onnx``.
Results: docs/experiments.md ("Probe: long wavelengths from a coarser pass").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from mars_dtm_plugin.core.contract import coarse_pass_arg
from training import synth
from training.data import load_dem_shapes
from training.evaluate import DATA_DIR, Scene, average, predict, score, synthetic_scenes, table

DELTAS = ("delta1", "delta2", "delta3")
CROP = 256
CROPS_PER_DEM = 12
SYNTHETIC_SCENES = 48


def model_copies(model: Path, passes: list[str], out: Path) -> dict[str, Path]:
    """``model`` with each of ``passes`` (``FACTORxSIGMA``) as its coarse pass, and without."""
    copies = {}
    for name in ["one_pass", *passes]:
        copy = onnx.load(str(model))
        kept = [p for p in copy.metadata_props if p.key != "marsdtm:coarse_pass"]
        del copy.metadata_props[:]
        copy.metadata_props.extend(kept)
        if name != "one_pass":
            entry = copy.metadata_props.add()
            entry.key = "marsdtm:coarse_pass"
            entry.value = json.dumps(coarse_pass_arg(name))
        label = name if name == "one_pass" else f"k{name.replace('x', 's')}"
        copies[label] = out / f"{label}.onnx"
        onnx.save(copy, str(copies[label]))
    return copies


def dem_shape_scenes(out: Path, seed: int) -> list[Scene]:
    """Renders of crops of the training DEM shapes under random suns."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = []
    for shape in load_dem_shapes(DATA_DIR / "dem_shapes"):
        rows, cols = shape.heights.shape
        if min(rows, cols) < CROP:
            continue
        pixel = shape.pixel_size_m
        for i in range(CROPS_PER_DEM):
            r, c = rng.integers(0, rows - CROP + 1), rng.integers(0, cols - CROP + 1)
            crop = shape.heights[r:r + CROP, c:c + CROP].astype(np.float32)
            sun = (float(rng.uniform(0, 360)), float(rng.uniform(20, 50)))
            image = synth.render(crop, pixel, sun[0], sun[1], rng)
            path = synth.write_geotiff(out / f"{shape.name}_{i}.tif", image,
                                       (0.0, pixel, 0.0, 0.0, 0.0, -pixel))
            scenes.append(Scene(f"{shape.name}_{i}", path, image, np.ones(image.shape, bool),
                                pixel, sun, crop, pixel, tile=128))
    return scenes


def scores(models: dict[str, Path], scenes: list[Scene], work: Path) -> dict[str, dict]:
    """Each model's metrics averaged over ``scenes``."""
    rows: dict[str, list[dict]] = {name: [] for name in models}
    for scene in scenes:
        for name, path in models.items():
            rows[name].append(score(scene, predict(path, scene, work)[0]))
    return {name: average(found) for name, found in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the model's copies and the validation scenes")
    parser.add_argument("--passes", default="2x24,2x48,3x24,3x48,4x24,4x48",
                        help="comma-separated FACTORxSIGMA (sigma in fine pixels)")
    parser.add_argument("--seed", type=int, default=11,
                        help="of the synthetic validation scenes and the renders' crops and "
                             "suns (the test set's synthetic seed is 7)")
    args = parser.parse_args(argv)
    if not (DATA_DIR / "dem_shapes").is_dir():
        parser.error(f"the DEM shapes are not in {DATA_DIR / 'dem_shapes'}")
    args.out.mkdir(parents=True, exist_ok=True)
    models = model_copies(args.model, args.passes.split(","), args.out)
    sets = {f"synthetic, seed {args.seed}": synthetic_scenes(args.out / "data", args.seed,
                                                              SYNTHETIC_SCENES),
            "DEM shapes": dem_shape_scenes(args.out / "dem_shapes", args.seed)}
    found = {}
    for title, scenes in sets.items():
        found[title] = scores(models, scenes, args.out)
        print(f"\n{title} ({len(scenes)} scenes)\n\n{table(found[title], list(models))}")
    print("\n| pass | mean δ over both sets | " + " | ".join(f"RMSE / one pass's: {title}"
                                                          for title in found) + " |")
    print("|---|---|" + "---|" * len(found))
    for name in models:
        mean = np.mean([found[title][name][key] for title in found for key in DELTAS])
        ratios = [found[title][name]["rmse_m"] / found[title]["one_pass"]["rmse_m"]
                  for title in found]
        print(f"| {name} | {mean:.4f} | " + " | ".join(f"{r:.4f}" for r in ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
