"""Rebuild the bundled model from scratch: data, training, export, evaluation (``make model``).

    python -m training.make_model [--recipe training/configs/quick.json]
        [--stages data,train,export,evaluate] [--work DIR]

Every stage is seeded from the recipe, so a rerun on the same machine and thread count gives
the same pool, weights and numbers. The main run is trained without the adversarial term;
the ablation trains the same recipe with it, stopped at ``ablation.stop_at`` steps, and is
compared with the main run's checkpoint at the same step. A recipe with a ``finetune``
section (options over ``train``) continues the main run's weights with them, and that run is
the one bundled. An ``export`` section's ``coarse_pass`` (``FACTORxSIGMA``) goes into every
exported model's contract (``training.export_onnx --coarse-pass``); its ``quantize`` (true)
ships the bundled run in 8 bits, calibrated on the pool's training patches
(``training.quantize``), and evaluates it beside the runs in floating point.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np

from training.data import (
    DemShape,
    DemShapePatches,
    SunRange,
    SyntheticPatches,
    load_dem_shapes,
    write_pool,
)
from training.evaluate import DATA_DIR
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = Path(__file__).parent / "configs" / "quick.json"
BUNDLED = ROOT / "mars_dtm_plugin" / "models" / "mars_dtm_generator.onnx"
DEM_SHAPES = DATA_DIR / "dem_shapes"
STAGES = ("data", "train", "export", "evaluate")
PHOTOMETRY = 1.0  # the renderer's own photometric ranges, unscaled
# What a recipe must say; every other option has a default.
REQUIRED = {"work": (), "version": (), "seed": (), "train": (), "ablation": ("stop_at",),
            "pool": ("size", "synthetic", "dem_shapes", "val_each", "synthetic_relief")}
# What else a recipe may say, by section; train, finetune and ablation.train hold options of
# training.train (its TrainConfig).
OPTIONAL = {"finetune": (), "export": ("coarse_pass", "quantize"),
            "evaluate": ("sets", "speed", "roughness_control", "tilt_control"),
            "pool": ("photometry",), "ablation": ("train",)}


def load_recipe(path: str | Path) -> dict:
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the recipe {path}: {exc}") from exc
    missing = [section for section in REQUIRED if section not in recipe]
    missing += [f"{section}.{key}" for section, keys in REQUIRED.items() for key in keys
                if section in recipe and key not in recipe[section]]
    if missing:
        raise ValueError(f"the recipe {path} lacks {', '.join(missing)}")
    unknown = [section for section in recipe if section not in REQUIRED | OPTIONAL]
    unknown += [f"{section}.{key}" for section, keys in OPTIONAL.items() if keys
                and isinstance(recipe.get(section), dict) for key in recipe[section]
                if key not in keys + REQUIRED.get(section, ())]
    options = {field.name for field in dataclasses.fields(TrainConfig)}
    runs = {"train": recipe["train"], "finetune": recipe.get("finetune", {}),
            "ablation.train": recipe["ablation"].get("train", {})}
    unknown += [f"{run}.{key}" for run, given in runs.items() for key in given
                if key not in options]
    if unknown:  # a misspelt option would be dropped in silence
        raise ValueError(f"the recipe {path} has no option {', '.join(unknown)}")
    photometry = recipe["pool"].get("photometry", PHOTOMETRY)
    if (isinstance(photometry, bool) or not isinstance(photometry, int | float)
            or not math.isfinite(photometry) or photometry < 0):
        raise ValueError(f"the recipe {path} gives pool.photometry {photometry!r}: it is a "
                         "factor on the renderer's ranges, 0 or more (1 is the default)")
    return recipe


def stage_data(recipe: dict, work: Path) -> None:
    """Render the fixed training and validation pools into shards."""
    pool, seed = recipe["pool"], recipe["seed"]
    sun = SunRange(recipe["train"].get("canonical_azimuth", 270.0),
                   recipe["train"].get("azimuth_jitter", 10.0))
    size, relief = pool["size"], tuple(pool["synthetic_relief"])
    photometry = pool.get("photometry", PHOTOMETRY)
    # Evaluation rows are held out inside.
    shapes = load_dem_shapes(DEM_SHAPES) if DEM_SHAPES.is_dir() else []
    if not shapes:
        print(f"note: no DEMs in {DEM_SHAPES.name}; training on synthetic terrain only")
    _stamp_pool(work / "pool", {"seed": seed, **{f"pool.{k}": v for k, v in pool.items()},
                                "pool.photometry": photometry,
                                "canonical_azimuth": sun.canonical_azimuth,
                                "azimuth_jitter": sun.azimuth_jitter,
                                "dem shapes": [shape.name for shape in shapes],
                                "dem shapes sha256": _digest(shapes)})
    sources = [(SyntheticPatches(size, sun=sun, relief=relief, photometry=photometry),
                pool["synthetic"])]
    if shapes:
        sources.append((DemShapePatches(shapes, size, sun=sun, photometry=photometry),
                        pool["dem_shapes"]))
    for name, scale, offset in (("train", 1, 0), ("val", 0, 1)):
        out = work / "pool" / name
        if _has_shards(out):
            print(f"pool {name}: kept {out}")
            continue
        counts = [(s, c if scale else pool["val_each"]) for s, c in sources]
        started = time.monotonic()
        # Rendered aside and moved into place whole: an interrupted pool is not kept.
        partial = out.with_name(f"{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        paths = write_pool(counts, partial, seed=seed * 100 + offset)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
        print(f"pool {name}: {len(paths)} shards in {time.monotonic() - started:.0f} s")


def _digest(shapes: list[DemShape]) -> str:
    """SHA-256 of the DEM shapes as rendered: a DEM replaced under its name is another pool."""
    digest = hashlib.sha256()
    for shape in shapes:
        digest.update(shape.name.encode())
        digest.update(struct.pack("<d", shape.pixel_size_m))
        digest.update(np.ascontiguousarray(shape.heights, "<f4").tobytes())
    return digest.hexdigest()


def _has_shards(folder: Path) -> bool:
    return any(folder.glob("*.tar"))  # nothing when the folder does not exist


def _stamp_pool(folder: Path, settings: dict) -> None:
    """Refuse to reuse a pool rendered with other settings; record these ones beside it."""
    settings = json.loads(json.dumps(settings))  # as JSON reads them back: lists, not tuples
    stamp = folder / "settings.json"
    kept = _has_shards(folder / "train") or _has_shards(folder / "val")
    if kept and stamp.is_file():
        made = json.loads(stamp.read_text())
        changed = [key for key in made if made[key] != settings.get(key)]
        if changed:
            raise RuntimeError(
                f"the pool in {folder} was rendered with another {', '.join(changed)}; give "
                f"this recipe its own work folder, or delete {folder} to render it again")
        unrecorded = [key for key in settings if key not in made]  # a stamp from an older version
        if unrecorded:
            print(f"note: the pool in {folder} was stamped without {', '.join(unrecorded)}; "
                  "kept unchecked for those")
    elif kept:
        print(f"note: the pool in {folder} has no {stamp.name} (made before pools were "
              "stamped); kept unchecked")
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=2) + "\n")


def _train_args(recipe: dict, work: Path, name: str, extra: dict) -> list[str]:
    options = {**recipe["train"], "seed": recipe["seed"], "out": str(work / name),
               "data": str(work / "pool" / "train"), "val_data": str(work / "pool" / "val"),
               **extra}
    config = work / f"{name}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(options, indent=2) + "\n")
    last = work / name / "last.pt"
    return ["--config", str(config)] + (["--resume", str(last)] if last.exists() else [])


def stage_train(recipe: dict, work: Path) -> None:
    """Main run (no GAN), its fine-tune if any, then the GAN ablation, stopped early."""
    from training.train import main as train

    stop = recipe["ablation"]["stop_at"]
    runs = [("main", {"gan": False, "keep_steps": [stop]})]
    if "finetune" in recipe:
        runs.append(("finetune", {**recipe["finetune"],
                                  "init_from": str(work / "main" / "last.pt")}))
    runs.append(("gan", {"gan": True, "stop_at": stop, **recipe["ablation"].get("train", {})}))
    pool = _sha256(sorted((work / "pool").glob("*/*.tar")))  # the shards as rendered
    for name, extra in runs:
        inputs = {"pool": pool}
        if "init_from" in extra:
            inputs["main run"] = _sha256([Path(extra["init_from"])])
        _record_inputs(work / name, inputs)
        if train(_train_args(recipe, work, name, extra)) != 0:
            raise RuntimeError(f"training run {name} failed")


def _sha256(paths: list[Path]) -> str:
    """One SHA-256 over the files' names and bytes ("" for none)."""
    if not paths:
        return ""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.parent.name}/{path.name}".encode())
        with open(path, "rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def _record_inputs(run: Path, inputs: dict) -> None:
    """Refuse to continue a run begun on another pool or from another main run (one since
    rendered again, or trained further); record these inputs in it."""
    record = run / "inputs.json"
    if (run / "last.pt").exists():
        made = json.loads(record.read_text()) if record.is_file() else None
        changed = [key for key in inputs if made is not None and made.get(key) != inputs[key]]
        if changed:
            raise RuntimeError(f"the run in {run} was trained from another "
                               f"{', '.join(changed)}; delete {run} to train it again")
        if made is None:
            print(f"note: the run in {run} has no {record.name} (made before runs recorded "
                  "their inputs); kept unchecked")
    run.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(inputs, indent=2) + "\n")


def _exported(recipe: dict) -> dict[str, str]:
    """ONNX name -> checkpoint within the work folder; the first is the one bundled."""
    stop = recipe["ablation"]["stop_at"]
    shipped = {"finetune": "finetune/last.pt"} if "finetune" in recipe else {}
    return {**shipped, "main": "main/last.pt", f"nogan_{stop}": f"main/step_{stop}.pt",
            f"gan_{stop}": "gan/last.pt"}


def _quantised(recipe: dict) -> bool:
    return bool(recipe.get("export", {}).get("quantize"))


def _bundled(recipe: dict) -> str:
    """The ONNX name the plugin ships: the first exported, in 8 bits if the recipe says."""
    first = next(iter(_exported(recipe)))
    return f"{first}_int8" if _quantised(recipe) else first


def stage_export(recipe: dict, work: Path, bundle: Path = BUNDLED) -> None:
    from training.export_onnx import main as export
    from training.quantize import main as quantize

    exported, shipped = _exported(recipe), _bundled(recipe)
    first = next(iter(exported))
    # Every model gets the recipe's coarse pass: the ablation compares them through one engine.
    coarse = recipe.get("export", {}).get("coarse_pass")
    for name, checkpoint in exported.items():
        # Only the shipped model carries the recipe's version; the others say which run they are.
        version = recipe["version"] + ("" if name == shipped else f"+{name}")
        if export([str(work / checkpoint), str(work / "onnx" / f"{name}.onnx"),
                   "--version", version, *(["--coarse-pass", coarse] if coarse else [])]) != 0:
            raise RuntimeError(f"export of {checkpoint} failed")
    if _quantised(recipe) and quantize(
            [str(work / "onnx" / f"{first}.onnx"), str(work / "onnx" / f"{shipped}.onnx"),
             "--data", str(work / "pool" / "train"), "--version", recipe["version"],
             "--seed", str(recipe["seed"])]) != 0:
        raise RuntimeError(f"quantisation of {first}.onnx failed")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    partial = bundle.with_name(bundle.name + ".part")  # an interrupted copy is no model
    try:
        shutil.copyfile(work / "onnx" / f"{shipped}.onnx", partial)
        os.replace(partial, bundle)
    finally:  # nothing half-copied left in the plugin's folder, to be zipped with it
        partial.unlink(missing_ok=True)
    print(f"bundled model: {bundle}")


def stage_evaluate(recipe: dict, work: Path) -> None:
    from training.evaluate import main as evaluate

    names = dict.fromkeys([_bundled(recipe), *_exported(recipe)])
    args = [arg for name in names
            for arg in ("--model", f"{name}={work / 'onnx' / f'{name}.onnx'}")]
    args += ["--data", str(work / "eval_data"), "--out", str(work / "eval"),
             "--seed", str(recipe["seed"] + 7)]
    options = recipe.get("evaluate", {})
    if "sets" in options:
        args += ["--sets", ",".join(options["sets"])]
    if not options.get("speed", True):
        args.append("--no-speed")
    if options.get("roughness_control"):
        args += ["--roughness-control", str(options["roughness_control"])]
    if options.get("tilt_control"):
        args.append("--tilt-control")
    if evaluate(args) != 0:
        raise RuntimeError("evaluation failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.make_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe JSON")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--work", help="work folder (default: the recipe's)")
    parser.add_argument("--bundle", default=str(BUNDLED),
                        help="where the export stage copies the shipped model: the fine-tune, "
                             "or the main run without one (default: the plugin's model)")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    try:
        recipe = load_recipe(args.recipe)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.work or recipe["work"])
    functions = {"data": stage_data, "train": stage_train,
                 "export": functools.partial(stage_export, bundle=Path(args.bundle)),
                 "evaluate": stage_evaluate}
    for stage in stages:
        started = time.monotonic()
        print(f"== {stage}", flush=True)
        try:
            functions[stage](recipe, work)
        except (RuntimeError, OSError) as exc:
            print(f"error: the {stage} stage stopped: {exc}", file=sys.stderr)
            return 1
        print(f"== {stage} done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
