"""Whether training reruns and resumes bit for bit: the largest weight difference.

    python -m bench.reproducibility [--steps 200] [--batch-size 16] [--patches 96]

Trains the recipe's network (``training/configs/quick.json``) on the same rendered patches
three times: straight, again, and resumed from the first run's checkpoint half-way; first with
the default kernels, then with ``--deterministic true``. Prints the largest difference over
all generator tensors (BatchNorm running statistics included) between the first run and each
other one. On the CPU all are 0 either way; on a GPU, only with deterministic kernels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from . import at_least, existing_file


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def runs(options: dict, folder: Path, half: int) -> dict[str, dict]:
    """The generator weights of the straight run, its rerun and the run resumed half-way."""
    import torch

    from training.train import main

    for name in ("first", "rerun"):
        config = folder / f"{name}.json"
        config.write_text(json.dumps({**options, "out": str(folder / name)}))
        if main(["--config", str(config)]) != 0:
            raise SystemExit(f"the {name} run failed")
    if main(["--resume", str(folder / "first" / f"step_{half}.pt"),
             "--out", str(folder / "resumed")]) != 0:
        raise SystemExit("the resumed run failed")
    return {name: torch.load(folder / name / "last.pt", weights_only=True)["generator"]
            for name in ("first", "rerun", "resumed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=existing_file,
                        default=Path("training/configs/quick.json"))
    parser.add_argument("--steps", type=at_least(2), default=200,
                        help="steps of each run (the resumed run starts from the middle one)")
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    parser.add_argument("--patches", type=at_least(1), default=96,
                        help="patches rendered to train on")
    parser.add_argument("--workers", type=at_least(0), default=4, help="DataLoader workers")
    args = parser.parse_args()

    import torch

    from training.data import SunRange, SyntheticPatches, write_pool

    train = json.loads(args.recipe.read_text())["train"]
    half = args.steps // 2
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        write_pool([(SyntheticPatches(train["patch_size"], sun=SunRange()), args.patches)],
                   pool, seed=1, per_shard=max(1, args.patches // 4))
        options = {**train, "data": str(pool), "batch_size": args.batch_size,
                   "steps": args.steps, "workers": args.workers, "keep_steps": [half],
                   "val_every": args.steps + 1, "checkpoint_every": args.steps + 1,
                   "max_minutes": 0}
        results = {}
        for deterministic in (False, True):
            folder = Path(tmp) / f"deterministic_{deterministic}"
            folder.mkdir()
            weights = runs({**options, "deterministic": deterministic}, folder, half)
            results[deterministic] = {name: largest_difference(weights["first"], weights[name])
                                      for name in ("rerun", "resumed")}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"\n{args.steps} steps of {args.batch_size} patches, resumed at {half}; {device}\n")
    print("| kernels | rerun | resumed |\n|---|---|---|")
    for deterministic, row in results.items():
        cells = " | ".join("bit-identical" if d == 0 else f"up to {d:.3g} apart"
                           for d in row.values())
        print(f"| {'deterministic' if deterministic else 'default'} | {cells} |")


if __name__ == "__main__":
    main()
