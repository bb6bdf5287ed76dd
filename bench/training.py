"""Training speed: optimiser steps per second on each device, against the CPU in the same run.

    python -m bench.training [--recipe training/configs/quick.json] [--batch-size 16]

Each variant runs in its own process (deterministic kernels are set for a whole process)
and times ``Trainer.train_step`` on one fixed batch of rendered patches after
warm-up steps, with the recipe's network, patch size and losses: data loading is left out.
The rate at which one process renders training patches is printed beside it, to size the
DataLoader workers that keep a device busy (steps/s x batch / patches/s per worker).

With ``--reader-workers 4 8``, a pool of ``--pool`` patches is rendered into shards (one
process per core) and, for each number of DataLoader workers, the shard reader is timed alone
and feeding training on the default device (steps across an epoch's end, where the workers
restart): whether the reader or the network limits a run from shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import at_least, existing_file

VARIANTS = {  # name: training options
    "cpu": {"device": "cpu", "amp": False},
    "cuda fp32": {"device": "cuda", "amp": False},
    "cuda amp": {"device": "cuda", "amp": True},
    "cuda amp, deterministic": {"device": "cuda", "amp": True, "deterministic": True},
}


def steps_per_second(options: dict, warmup: int, steps: int) -> float:
    import torch

    from training.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(**options))
    image, height = next(trainer.batches())
    for _ in range(warmup):
        trainer.train_step(image, height)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(image, height)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def render_shards(folder: Path, size: int, count: int) -> int:
    """About ``count`` synthetic patches in shards, rendered by one process per core; how many."""
    from multiprocessing import Pool

    processes = os.cpu_count() or 1
    each = max(1, count // processes)
    with Pool(processes) as pool:
        pool.starmap(_render_part, [(folder, size, each, i) for i in range(processes)])
    return each * processes


def _render_part(folder: Path, size: int, count: int, part: int) -> None:
    from training.data import SunRange, SyntheticPatches, write_pool

    out = folder / f"part{part}"
    write_pool([(SyntheticPatches(size, sun=SunRange()), count)], out, seed=100 + part,
               per_shard=100)
    for i, shard in enumerate(sorted(out.glob("*.tar"))):
        shard.rename(folder / f"pool-{part:03d}-{i:03d}.tar")


def feeding(options: dict, steps: int) -> tuple[float, float]:
    """Patches per second from the trainer's shard reader alone, then training steps per
    second fed by it: ``steps`` batches of each, after warm-up."""
    import torch

    from training.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(**options))
    batches = trainer.batches()  # endless: epochs restart their workers, as in a long run
    for _ in range(5):
        trainer.train_step(*next(batches))
    started = time.perf_counter()
    for _ in range(steps):
        next(batches)
    read = steps * trainer.cfg.batch_size / (time.perf_counter() - started)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*next(batches))
    sync()
    return read, steps / (time.perf_counter() - started)


def render_rate(size: int, count: int = 8) -> float:
    """Training patches rendered per second by one process (synthetic terrain)."""
    import numpy as np

    from training.data import SyntheticPatches

    source, rng = SyntheticPatches(size), np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(count):
        source.raw(rng)
    return count / (time.perf_counter() - started)


def child(variant: str, options: dict, warmup: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = ("import json, sys; from bench.training import steps_per_second; "
            "a = json.loads(sys.argv[1]); "
            "print(json.dumps(steps_per_second(a['options'], a['warmup'], a['steps'])))")
    payload = json.dumps({"options": {**options, **VARIANTS[variant]}, "warmup": warmup,
                          "steps": steps})
    result = subprocess.run([sys.executable, "-c", code, payload], env=env, text=True,
                            capture_output=True)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {"error": lines[-1]}
    return {"steps_per_s": float(result.stdout.strip().splitlines()[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=existing_file,
                        default=Path("training/configs/quick.json"))
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--steps", type=at_least(1), default=20,
                        help="timed steps (CPU: a quarter)")
    parser.add_argument("--gan", action="store_true", help="with the PatchGAN discriminator")
    parser.add_argument("--reader-workers", type=at_least(0), nargs="*", default=[],
                        help="DataLoader workers to time the shard reader with")
    parser.add_argument("--pool", type=at_least(1), default=3200,
                        help="patches rendered for the reader (an epoch should end within "
                             "--reader-steps batches)")
    parser.add_argument("--reader-steps", type=at_least(1), default=150)
    args = parser.parse_args()

    import torch

    from training.data import SyntheticPatches, write_pool
    from training.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in json.loads(args.recipe.read_text())["train"].items()
             if k in fields}
    size = train["patch_size"]
    print(f"rendering: {render_rate(size):.1f} patches of {size} px per second per process")
    variants = list(VARIANTS) if torch.cuda.is_available() else ["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        write_pool([(SyntheticPatches(size), args.batch_size)], tmp, seed=0)
        options = {**train, "data": tmp, "out": str(Path(tmp) / "run"), "workers": 0,
                   "batch_size": args.batch_size, "threads": os.cpu_count() or 1,
                   "gan": args.gan}
        rows = {}
        for name in variants:
            steps = max(2, args.steps // 4) if name == "cpu" else args.steps
            rows[name] = child(name, options, args.warmup, steps)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"\n{size} px patches, batch {args.batch_size}, GAN {args.gan}; {device}, "
          f"{os.cpu_count()} CPU threads\n")
    print("| variant | steps/s | patches/s | vs cpu |\n|---|---|---|---|")
    base = rows["cpu"].get("steps_per_s")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | failed: {row['error']} | | |")
            continue
        rate = row["steps_per_s"]
        ratio = f"{rate / base:.1f}x" if base else "-"
        print(f"| {name} | {rate:.2f} | {rate * args.batch_size:.0f} | {ratio} |")
    if args.reader_workers:
        print_feeding(args, train)
    return 1 if any("error" in row for row in rows.values()) else 0


def print_feeding(args: argparse.Namespace, train: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        count = render_shards(Path(tmp), train["patch_size"], args.pool)
        print(f"\nrendered {count} patches into shards in "
              f"{time.perf_counter() - started:.0f} s\n")
        print("| workers | reader alone (patches/s) | training fed by it (steps/s, patches/s) |"
              "\n|---|---|---|")
        for workers in args.reader_workers:
            options = {**train, "data": tmp, "out": str(Path(tmp) / f"run{workers}"),
                       "workers": workers, "batch_size": args.batch_size, "gan": args.gan,
                       "steps": 10 * args.reader_steps}
            read, rate = feeding(options, args.reader_steps)
            print(f"| {workers} | {read:.0f} | {rate:.1f}, {rate * args.batch_size:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
