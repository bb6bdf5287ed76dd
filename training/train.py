"""Train the height generator: ``python -m training.train --config FILE [--flag value ...]``.

One process per device; with ``torchrun --nproc-per-node G [--nnodes N ...]`` it trains with
DDP (NCCL on GPUs, gloo on CPU), each rank streaming its own share of the shards. Every
checkpoint has the fully resolved configuration beside it (``config.json``); ``--resume``
continues bit-for-bit on CPU, and on a GPU with ``--deterministic true`` (model, optimisers,
random states and data position).

``--resume CKPT`` takes every option from the checkpoint's saved configuration and writes
into the checkpoint's folder; flags (or a ``--config``) may change only how long and how the
run goes on: --steps, --max-minutes, --stop-at, --keep-steps, --workers, --threads,
--device, --deterministic, --log-every, --val-every, --val-batches, --checkpoint-every and
--out. A run stopped by ``--max-minutes`` before ``--steps`` says so and exits 0 (the limit is
a safety stop, and its checkpoint is valid); continue it with ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from mars_dtm_plugin.core.contract import INPUT_SCALINGS
from training.data import (
    DemShapePatches,
    Normalisation,
    ShardPatches,
    SunRange,
    SyntheticPatches,
    list_shards,
    load_dem_shapes,
)
from training.losses import LossWeights, discriminator_loss, generator_loss
from training.model import Generator, GeneratorConfig, PatchDiscriminator, load_checkpoint
from training.shards import UnreadableShard


@dataclass
class TrainConfig:
    """Every option; ``HELP`` documents each one for ``--help``."""

    out: str = "runs/model"
    data: str = "synthetic"
    val_data: str = ""
    patch_size: int = 256
    batch_size: int = 4
    steps: int = 6000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    channels: list[int] = field(default_factory=lambda: list(GeneratorConfig().channels))
    shading_prior: bool = True
    prior_window: int = 127
    prior_gain: float = -1.0
    l1: float = 1.0
    gradient: float = 5.0
    scale_invariant: float = 0.0
    histogram_bins: int = 0
    distribution: float = 0.0
    distribution_window: int = 0
    gan: bool = False
    adversarial: float = 0.05
    d_lr: float = 2e-4
    d_channels: int = 32
    seed: int = 0
    workers: int = 0
    threads: int = 2
    amp: bool = True
    device: str = "auto"
    deterministic: bool = False
    log_every: int = 25
    val_every: int = 250
    val_batches: int = 8
    checkpoint_every: int = 250
    max_minutes: float = 0.0
    stop_at: int = 0
    keep_steps: list[int] = field(default_factory=list)
    canonical_azimuth: float = 270.0
    azimuth_jitter: float = 10.0
    input_scaling: str = "mean_ratio"
    mean_jitter: float = 0.0
    scene_mean: bool = False
    low_relief: float = 0.0
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    norm_mean: float = 0.0
    norm_std: float = 0.3
    init_from: str = ""
    resume: str = ""


HELP = {
    "out": "run folder: checkpoints, config.json, TensorBoard logs",
    "data": "'synthetic' (procedural, on the fly), 'dem:FOLDER' (real DEM shapes rendered on "
            "the fly) or a folder of WebDataset shards (*.tar)",
    "val_data": "validation shards folder (optional)",
    "patch_size": "side of training patches in pixels (multiple of the model's size multiple)",
    "batch_size": "patches per step and per process",
    "steps": "optimiser steps in total",
    "lr": "generator learning rate (AdamW, cosine decay after 3%% warm-up)",
    "weight_decay": "AdamW weight decay",
    "channels": "U-Net channels per level, e.g. 8,16,32,64,96,128",
    "shading_prior": "also feed the image integrated along the sun (use with mean_ratio)",
    "prior_window": "odd width in px of the running mean taken off the shading prior; 0: the "
                    "tile row's mean (0.4.0 and before), which ties the prior to where the tile "
                    "starts",
    "prior_gain": "gain of the shading prior added to the output, held fixed (0.3 adds it "
                  "whole: linear shape from shading along the sun, which the network then "
                  "corrects); below 0: learned, from 0 or from --init-from's weights",
    "l1": "weight of L1 on mean-removed heights (pixel units)",
    "gradient": "weight of L1 on height gradients (slopes)",
    "scale_invariant": "weight of the scale-aligned L1 term",
    "histogram_bins": "0 = off; else weight pixels by inverse frequency of |height| bins",
    "distribution": "weight of the distance between each tile's height distributions "
                    "(right relief and skew)",
    "distribution_window": "0: compare whole tiles' height distributions; else those of each "
                           "square window of this many pixels (a divisor of the patch size)",
    "gan": "add the conditional PatchGAN adversarial loss",
    "adversarial": "weight of the adversarial term (with --gan)",
    "d_lr": "discriminator learning rate",
    "d_channels": "discriminator base channels",
    "seed": "seed of torch, numpy, random and the data-loader workers",
    "workers": "DataLoader worker processes per rank",
    "threads": "torch CPU threads per process",
    "amp": "mixed precision on CUDA (ignored on CPU)",
    "device": "'auto' (this rank's GPU when PyTorch sees one, else the CPU), 'cuda' or 'cpu'",
    "deterministic": "GPU kernels that give the same weights on every rerun and resume, at some "
                     "cost in speed (CPU runs always do)",
    "log_every": "steps between TensorBoard scalars",
    "val_every": "steps between validations",
    "val_batches": "batches per validation",
    "checkpoint_every": "steps between checkpoints",
    "max_minutes": "stop (with a checkpoint) after this many minutes; 0 = no limit",
    "stop_at": "stop after this step, keeping the schedule of --steps (for ablations); 0 = off",
    "keep_steps": "steps whose checkpoint is also kept as step_<N>.pt, e.g. 1000,2000",
    "canonical_azimuth": "sun azimuth (deg clockwise from up, light FROM) the model expects",
    "azimuth_jitter": "random +- degrees around it for rendered training images",
    "input_scaling": "'percentile' (stretch by scene percentiles) or 'mean_ratio' "
                     "((I / mean - 1) * tan(sun elevation): keeps the image's contrast)",
    "mean_jitter": "mean_ratio: scale each patch's mean by a random factor in 1 +- this, as "
                   "the scene mean the engine uses differs from a patch's own",
    "scene_mean": "mean_ratio: scale each training crop by the mean of the whole pool patch it "
                  "is cut from, as the engine scales each tile by its scene's mean",
    "low_relief": "share of training patches whose relief, and the image's contrast about its "
                  "mean, are scaled down together (by 0.01 to 1), so that little shading "
                  "reads as little slope",
    "percentiles": "input percentiles mapped to 0 and 1 (percentile scaling)",
    "norm_mean": "standardisation mean after the scaling",
    "norm_std": "standardisation std after the scaling",
    "init_from": "checkpoint whose generator weights start this run (fine-tuning); the "
                 "optimiser, schedule and data stream start afresh",
    "resume": "checkpoint to continue from, with the options it was trained with and --out "
              "its folder; see above for what may change",
}

# What a resumed run may change (listed in the module's doc): how long and how it runs,
# never what or how it learns.
RESUMABLE = ("steps", "max_minutes", "stop_at", "keep_steps", "workers", "threads", "device",
             "deterministic", "log_every", "val_every", "val_batches", "checkpoint_every", "out")
DEVICES = ("auto", "cuda", "cpu")
PATH_OPTIONS = {"data", "val_data", "init_from"}
# Lowest value of each numeric option: counts and intervals of steps start at 1, weights at 0;
# ``POSITIVE`` ones must be above 0.
AT_LEAST = {"batch_size": 1, "steps": 1, "threads": 1, "d_channels": 1,
            "log_every": 1, "val_every": 1, "val_batches": 1, "checkpoint_every": 1,
            "workers": 0, "histogram_bins": 0, "stop_at": 0, "seed": 0, "weight_decay": 0,
            "l1": 0, "gradient": 0, "scale_invariant": 0, "distribution": 0, "adversarial": 0,
            "max_minutes": 0, "azimuth_jitter": 0, "mean_jitter": 0, "channels": 1,
            "prior_window": 0, "distribution_window": 0, "low_relief": 0}
POSITIVE = ("lr", "d_lr", "norm_std")
# What a configuration saved before these options existed was trained with (their defaults
# then; today's are the bundled network's).
BEFORE_THE_OPTION = {"shading_prior": False, "input_scaling": "percentile", "prior_window": 0}
# What a run started from another's weights (--init-from) must share with it.
ARCHITECTURE = ("channels", "shading_prior", "prior_window", "input_scaling", "norm_mean",
                "norm_std", "percentiles", "canonical_azimuth")
_KINDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
          "list[int]": "a list of integers", "list[float]": "a list of numbers"}


class _Parser(argparse.ArgumentParser):
    """Refusals in one sentence: the usage of some fifty options would bury it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < ``--config`` JSON < command-line flags; with ``--resume``, the checkpoint's
    saved options < the few of ``RESUMABLE`` given."""
    parser = _Parser(prog="python -m training.train", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of options (keys as the flags below, "
                        "with _ for -: patch_size)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind = {"bool": _bool, "int": int, "float": float, "str": str}.get(str(f.type), _floats)
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind,
                            default=None, help=f"{HELP[f.name]} (default: {shown or 'none'})")
    args = parser.parse_args(argv)
    given: dict = {}
    if args.config:
        try:
            given = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            parser.error(f"cannot read the config file {args.config}: {exc}")
        if not isinstance(given, dict):
            parser.error(f"the config file {args.config} must hold a JSON object")
        _check_options(parser, given, f"the config file {args.config}")
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    _check_options(parser, flags, "the command line")
    given.update(flags)
    if given.get("resume"):
        values = _resumed_options(parser, given)
    else:  # saved as absolute paths, so that the run resumes from any folder
        values = {k: _absolute(v) if k in PATH_OPTIONS else v for k, v in given.items()}
    cfg = TrainConfig(**values)
    if problem := _out_of_range(cfg):
        parser.error(problem)
    if cfg.shading_prior and cfg.canonical_azimuth % 360 != 270:
        parser.error("--shading-prior integrates along rows from the left: it needs "
                     "--canonical-azimuth 270")
    multiple = 2 ** (len(cfg.channels) - 1)
    if cfg.patch_size <= 0 or cfg.patch_size % multiple:
        parser.error(f"--patch-size {cfg.patch_size} must be a positive multiple of "
                     f"{multiple}, the size multiple of a U-Net of {len(cfg.channels)} levels")
    if cfg.patch_size == multiple and cfg.batch_size == 1:  # batch norm of one value
        parser.error(f"--patch-size {multiple} leaves the U-Net's deepest level one pixel, "
                     "whose batch norm needs at least 2 patches a batch: raise --batch-size "
                     "or --patch-size")
    return cfg


def _check_options(parser: argparse.ArgumentParser, values: dict, source: str) -> None:
    """Refuse unknown keys and values of the wrong type, naming where they came from."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - set(fields)
    if unknown:
        hint = " (keys are written with _, not -)" if any("-" in k for k in unknown) else ""
        parser.error(f"unknown option(s) in {source}: {', '.join(sorted(unknown))}{hint}")
    for name, value in values.items():
        if not _fits(fields[name], value):
            parser.error(f"{name} in {source} must be {_KINDS[fields[name]]}, not {value!r}")


def _out_of_range(cfg: TrainConfig) -> str:
    """The first option whose value cannot work, in one sentence; '' when all can."""
    for name, value in dataclasses.asdict(cfg).items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            return f"--{name.replace('_', '-')} must be a finite number, not {value}"
    for name, low in AT_LEAST.items():
        value = getattr(cfg, name)
        if value == []:
            return f"--{name.replace('_', '-')} needs at least one value"
        if min(value) < low if isinstance(value, list) else value < low:
            return f"--{name.replace('_', '-')} must be at least {low}, not {value}"
    for name in POSITIVE:
        if not getattr(cfg, name) > 0:
            return f"--{name.replace('_', '-')} must be above 0, not {getattr(cfg, name)}"
    if cfg.low_relief > 1:
        return f"--low-relief is a share of the patches, at most 1, not {cfg.low_relief}"
    if cfg.low_relief and cfg.input_scaling != "mean_ratio":
        return ("--low-relief needs --input-scaling mean_ratio: a percentile stretch undoes the "
                "lower contrast")
    if cfg.mean_jitter >= 1:
        return f"--mean-jitter must be below 1 (a mean scaled by 1 - it), not {cfg.mean_jitter}"
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    if outside := [step for step in cfg.keep_steps if not 1 <= step <= last]:
        return (f"--keep-steps {outside[0]} is not a step of the run (1 to {last}): no "
                f"checkpoint would be kept there")
    if len(cfg.percentiles) != 2 or not 0 <= cfg.percentiles[0] < cfg.percentiles[1] <= 100:
        return (f"--percentiles must be two percentiles, low then high, between 0 and 100, "
                f"not {cfg.percentiles}")
    if cfg.prior_gain >= 0 and not cfg.shading_prior:
        return f"--prior-gain {cfg.prior_gain} needs --shading-prior true: it weighs that prior"
    if cfg.distribution_window and cfg.patch_size % cfg.distribution_window:
        return (f"--distribution-window must divide the patch size ({cfg.patch_size} px) into "
                f"whole windows, not {cfg.distribution_window}")
    if cfg.prior_window and cfg.prior_window % 2 == 0:
        return f"--prior-window must be 0 or an odd number of pixels, not {cfg.prior_window}"
    if cfg.input_scaling not in INPUT_SCALINGS:
        return (f"--input-scaling must be one of {', '.join(INPUT_SCALINGS)}, "
                f"not {cfg.input_scaling!r}")
    if cfg.device not in DEVICES:
        return f"--device must be one of {', '.join(DEVICES)}, not {cfg.device!r}"
    return ""


def _fits(kind: str, value: object) -> bool:
    if isinstance(value, list):
        return kind.startswith("list[") and all(_fits(kind[5:-1], v) for v in value)
    if isinstance(value, bool):
        return kind == "bool"
    return {"int": isinstance(value, int), "float": isinstance(value, (int, float)),
            "str": isinstance(value, str)}.get(kind, False)


def _resumed_options(parser: argparse.ArgumentParser, given: dict) -> dict:
    """The checkpoint's saved options, its folder as ``out``, and what ``given`` may change."""
    checkpoint = Path(given["resume"])
    try:
        saved = saved_config(checkpoint)
    except ValueError as exc:
        parser.error(str(exc))
    _check_options(parser, saved, f"the saved configuration of {checkpoint}")
    saved = {**complete_config(saved), "out": str(checkpoint.parent)}
    changed = sorted(k for k, v in given.items()
                     if k not in RESUMABLE and k != "resume" and not _same(k, v, saved[k]))
    if changed:
        parser.error(f"--resume continues the run of {checkpoint} with its saved options, so "
                     f"{_flags(changed)} cannot change (a resumed run may change only "
                     f"{_flags(RESUMABLE)}); start a new run with --init-from {checkpoint} to "
                     "train its weights differently")
    return {**saved, **given}


def _absolute(path: str) -> str:
    """A path option made absolute; '' and 'synthetic' as they are, 'dem:' kept in front."""
    if not path or path == "synthetic":
        return path
    prefix = "dem:" if path.startswith("dem:") else ""
    return prefix + str(Path(path.removeprefix(prefix)).resolve())


def _flags(names: Iterable[str]) -> str:
    return ", ".join(f"--{name.replace('_', '-')}" for name in names)


def _same(name: str, a: object, b: object) -> bool:
    if name in PATH_OPTIONS and a and b:  # the same folder, however it is spelt
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    return a == b


def _check_same_architecture(cfg: TrainConfig, saved: dict, checkpoint: str) -> None:
    """Refuse weights from a network of another shape, or one that saw its input otherwise."""
    saved = complete_config(saved)
    for name in ARCHITECTURE:
        if name == "percentiles" and cfg.input_scaling != "percentile":
            continue  # read only by percentile scaling
        if saved[name] != getattr(cfg, name):
            raise ValueError(f"{checkpoint} was trained with {name} {saved[name]}, "
                             f"this run has {getattr(cfg, name)}: give the same "
                             f"--{name.replace('_', '-')} (or its config file)")


def complete_config(saved: dict) -> dict:
    """A saved configuration with the options it predates filled in as it was trained."""
    return {**dataclasses.asdict(TrainConfig()), **BEFORE_THE_OPTION, **saved}


def saved_config(checkpoint: str | Path) -> dict:
    """The options a checkpoint was trained with: its own copy, else its folder's config.json."""
    state = load_checkpoint(checkpoint)
    if isinstance(state.get("config"), dict):
        return state["config"]
    beside = Path(checkpoint).parent / "config.json"
    try:
        config = json.loads(beside.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{checkpoint} holds no configuration and {beside} cannot be read: "
                         f"{exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{checkpoint} holds no configuration and {beside} is no JSON object")
    return config


def _bool(text: str) -> bool:
    if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in {"true", "1", "yes"}


def _floats(text: str) -> list:
    try:
        return [float(v) if "." in v else int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Workers draw their data streams from their own seeded generators (training.data);
    # this covers anything else that reaches for the global ones.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_dataset(spec: str, cfg: TrainConfig, validation: bool = False) -> IterableDataset:
    """The training stream, or (``validation``) a fixed stream read by one rank (the first
    ``val_batches`` batches of it, the same each time).

    Every rank gets the same seed: the shard order must be shared for the ranks' shares to be
    disjoint, and the streams differ by rank anyway (``training.data._worker_rng``)."""
    seed, augment = (10_000 + cfg.seed, False) if validation else (cfg.seed, True)
    sun = SunRange(cfg.canonical_azimuth, cfg.azimuth_jitter)
    norm = Normalisation(tuple(cfg.percentiles), cfg.norm_mean, cfg.norm_std, cfg.input_scaling)
    if spec == "synthetic":
        return SyntheticPatches(cfg.patch_size, seed, sun, norm)
    if spec.startswith("dem:"):
        shapes = load_dem_shapes(spec[4:])
        if not shapes:
            raise ValueError(f"no DEM shapes (*.tif) in {spec[4:]}")
        return DemShapePatches(shapes, cfg.patch_size, seed, sun, norm)
    return ShardPatches(list_shards(spec), seed, norm, cfg.canonical_azimuth, augment=augment,
                        size=cfg.patch_size, mean_jitter=cfg.mean_jitter,
                        scene_mean=cfg.scene_mean, low_relief=cfg.low_relief,
                        split_across_ranks=not validation)


class NoTrainingData(ValueError):
    """The training data yields no full batch."""


class Diverged(RuntimeError):
    """The loss became infinite or not a number; the checkpoint before it is kept."""


class Trainer:
    """Generator (+ optional discriminator) training on one rank."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = _device(cfg.device)
        _use_deterministic_kernels(cfg.deterministic)
        self.rank, self.world = _init_distributed(self.device)
        torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        config = GeneratorConfig(tuple(cfg.channels), cfg.shading_prior, cfg.prior_window)
        self.generator = Generator(config).to(self.device)
        if cfg.prior_gain >= 0:  # held: without a gradient, neither AdamW nor DDP touch it
            self.generator.prior_gain.requires_grad_(False)
        self.weights = LossWeights(cfg.l1, cfg.gradient, cfg.scale_invariant,
                                   cfg.adversarial if cfg.gan else 0.0, cfg.histogram_bins,
                                   cfg.distribution, cfg.distribution_window)
        self.g_opt = torch.optim.AdamW(self.generator.parameters(), cfg.lr,
                                       weight_decay=cfg.weight_decay)
        self.disc = PatchDiscriminator(cfg.d_channels).to(self.device) if cfg.gan else None
        self.d_opt = (torch.optim.Adam(self.disc.parameters(), cfg.d_lr, betas=(0.5, 0.999))
                      if self.disc else None)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.g_model = self.generator
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            if ids:  # batch statistics over all GPUs, not per-GPU slices
                self.generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.generator)
            self.g_model = torch.nn.parallel.DistributedDataParallel(self.generator, ids)
            if self.disc:
                self.disc = torch.nn.parallel.DistributedDataParallel(self.disc, ids)
        self.step, self.epoch, self.consumed = 0, 0, 0
        self.prior_steps = 0  # steps behind the weights this run started from (fine-tuning)
        self.dataset = make_dataset(cfg.data, cfg)
        self.val = make_dataset(cfg.val_data, cfg, validation=True) if cfg.val_data else None
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file; give a folder for the run")
        # Only the run's own last.pt goes on in its folder: an older step_N.pt would write over it.
        own_folder = cfg.resume and Path(cfg.resume).resolve() == (self.out / "last.pt").resolve()
        if (self.out / "last.pt").exists() and not own_folder:
            raise ValueError(f"{self.out} already holds a run; continue it with --resume "
                             f"{self.out / 'last.pt'}, or choose another --out")
        if cfg.resume:
            self.load(cfg.resume)
        elif cfg.init_from:
            _check_same_architecture(cfg, saved_config(cfg.init_from), cfg.init_from)
            state = load_checkpoint(cfg.init_from, self.device)
            self.generator.load_state_dict(state["generator"])
            self.prior_steps = state["step"] + state.get("prior_steps", 0)
        if cfg.prior_gain >= 0:
            self.generator.prior_gain.data.fill_(cfg.prior_gain)

    # -- data -----------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches; epochs of finite shard sets restart with a new shuffle.

        After a resume, the batches of the current epoch that were already used are drawn
        again and skipped, so the data stream continues exactly where it stopped.
        """
        skip = self.consumed
        if hasattr(self.dataset, "skip_batches"):  # rendered: skipped ones come out blank
            self.dataset.skip_batches = (skip, self.cfg.batch_size)
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            generator = torch.Generator().manual_seed(self.cfg.seed + self.epoch)
            loader = DataLoader(self.dataset, self.cfg.batch_size, num_workers=self.cfg.workers,
                                worker_init_fn=_seed_worker, generator=generator,
                                drop_last=True, persistent_workers=False)
            produced = 0
            for batch in loader:
                produced += 1
                if skip:
                    skip -= 1
                    continue
                self.consumed += 1
                yield batch
            if not produced:
                raise NoTrainingData(
                    f"the training data {self.cfg.data} gave no full batch of "
                    f"{self.cfg.batch_size}: shard patches without a sun azimuth, or smaller "
                    f"than --patch-size {self.cfg.patch_size} once turned to the canonical "
                    f"sun, are dropped; cut tiles of at least "
                    f"{math.ceil(self.cfg.patch_size * math.sqrt(2))} px (patch size x sqrt 2, "
                    f"training.tiles --size), lower --patch-size, or add patches")
            self.epoch, self.consumed = self.epoch + 1, 0

    # -- one step ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        warm = max(1, int(0.03 * self.cfg.steps))
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.cfg.steps - warm)
        cosine = float(np.cos(np.pi * min(progress, 1.0)))  # a plain float: see _numpy_rng_state
        return self.cfg.lr * (0.02 + 0.98 * 0.5 * (1 + cosine))

    def train_step(self, image: torch.Tensor, height: torch.Tensor) -> dict[str, float]:
        image, height = image.to(self.device), height.to(self.device)
        for group in self.g_opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        logs = {}
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            pred = self.g_model(image)
        if self.disc:
            logs["d_loss"] = self._discriminator_step(image, height, pred.detach().float())
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            fake = self.disc(image, pred) if self.disc else None
            terms = generator_loss(pred.float(), height, self.weights,
                                   fake.float() if fake is not None else None)
        self.g_opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.unscale_(self.g_opt)
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 5.0)
        self.scaler.step(self.g_opt)
        self.scaler.update()
        self.step += 1
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        return logs

    def _discriminator_step(self, image: torch.Tensor, height: torch.Tensor,
                            fake: torch.Tensor) -> float:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = discriminator_loss(self.disc(image, height).float(),
                                      self.disc(image, fake).float())
        self.d_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.d_opt)
        return float(loss.detach())

    @torch.no_grad()
    def _check_validation_data(self) -> None:
        # Its own generator: a loader draws a seed from torch's global one, which this check
        # must leave as it was.
        loader = DataLoader(self.val, self.cfg.batch_size, generator=torch.Generator())
        if next(iter(loader), None) is None:
            raise NoTrainingData(
                f"the validation data {self.cfg.val_data} gave no batch: its patches lack a sun "
                f"azimuth, or are smaller than --patch-size {self.cfg.patch_size} once turned "
                "to the canonical sun")

    @torch.no_grad()
    def validate(self, data: IterableDataset) -> dict[str, float]:
        """L1 on heights and on slopes, unweighted, so that runs with other loss weights
        compare; no total, which would not be the training loss of the same name."""
        self.generator.eval()
        totals: dict[str, float] = {}
        loader = DataLoader(data, self.cfg.batch_size)
        patches = 0
        for n, (image, height) in enumerate(loader, 1):
            pred = self.generator(image.to(self.device))
            # Weighted by patches: a short last batch counts for what it holds.
            for k, v in generator_loss(pred, height.to(self.device), LossWeights()).items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(image)
            patches += len(image)
            if n >= self.cfg.val_batches:
                break
        self.generator.train()
        return {k: v / max(patches, 1) for k, v in totals.items() if k != "total"}

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "generator_config": dataclasses.asdict(self.generator.config),
            "generator": self.generator.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "disc": _unwrap(self.disc).state_dict() if self.disc else None,
            "d_opt": self.d_opt.state_dict() if self.d_opt else None,
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "consumed": self.consumed,
            "prior_steps": self.prior_steps,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(),
                    "random": random.getstate()},
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write atomically, with the resolved config beside it (rank 0 only)."""
        path = self.out / name
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            partial, state = path.with_suffix(".tmp"), self.state()
            try:
                torch.save(state, partial)
            except BaseException as exc:  # a full disk, or Ctrl-C: no half-written file stays
                partial.unlink(missing_ok=True)
                if isinstance(exc, RuntimeError):  # how torch says its writes failed
                    reason = str(exc).strip().splitlines()[-1].split("] ")[-1].strip(" .")
                    full = "unexpected pos" in reason  # its writer's word for a short write
                    raise OSError(errno.EIO, f"the checkpoint could not be written: {reason}"
                                  + (" (is the disk full?)" if full else ""), str(partial)) from exc
                raise
            os.replace(partial, path)
            # Without "resume": the file given as --config starts a new run from these options.
            options = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "resume"}
            (self.out / "config.json").write_text(json.dumps(options, indent=2) + "\n")
        return path

    def load(self, path: str) -> None:
        state = load_checkpoint(path, self.device)
        self.generator.load_state_dict(state["generator"])
        self.g_opt.load_state_dict(state["g_opt"])
        if self.disc and state["disc"] is not None:
            _unwrap(self.disc).load_state_dict(state["disc"])
            self.d_opt.load_state_dict(state["d_opt"])
        if state["scaler"]:  # empty from a run without mixed precision (on the CPU)
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.prior_steps = state.get("prior_steps", 0)
        torch.set_rng_state(state["rng"]["torch"].cpu())  # loaded onto the GPU with the rest
        kind, key, *rest = state["rng"]["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
        random.setstate(state["rng"]["random"])

    # -- loop ----------------------------------------------------------------------------
    def out_of_time(self, started: float) -> bool:
        """Whether ``--max-minutes`` is up. Rank 0's clock decides for all: ranks stopping at
        different steps would leave the others waiting in a gradient all-reduce."""
        if not self.cfg.max_minutes:
            return False
        late = time.monotonic() - started > 60 * self.cfg.max_minutes
        if self.world > 1:
            flag = torch.tensor([float(late)], device=self.device)
            dist.broadcast(flag, src=0)
            late = bool(flag.item())
        return late

    def diverged(self, logs: dict[str, float]) -> bool:
        """Whether the loss is no longer a number on any rank (all ranks stop together)."""
        bad = not math.isfinite(logs["total"])
        if self.world > 1:
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag)
            bad = flag.item() > 0
        return bad

    def fit(self) -> dict[str, float]:
        cfg, started = self.cfg, time.monotonic()
        batches = self.batches()
        last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
        if self.step < last:  # data that yields no patch is refused before a log is written
            batches = itertools.chain([next(batches)], batches)
            if self.val is not None and self.rank == 0:
                self._check_validation_data()
        writer = _tensorboard(self.out) if self.rank == 0 else None
        val = self.val
        bar = _progress(last, self.step, self.rank == 0)
        logs: dict[str, float] = {}
        if self.step >= last and self.rank == 0:  # a resumed run keeps its --stop-at
            print(f"nothing to train: the run is at step {self.step} and stops at {last} "
                  "(--steps, --stop-at); raise them to go on", file=sys.stderr)
        while self.step < last:
            logs = self.train_step(*next(batches))
            if self.diverged(logs):
                raise Diverged(f"the loss is {logs['total']} at step {self.step}: training "
                               "diverged (lower --lr, or check the data)")
            bar.update(1)
            bar.set_postfix(loss=f"{logs['total']:.3f}", l1=f"{logs['l1']:.3f}")
            if writer and self.step % cfg.log_every == 0:
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, self.step)
                writer.add_scalar("train/lr", self.lr_at(self.step - 1), self.step)  # its own
            if val is not None and self.step % cfg.val_every == 0 and self.rank == 0:
                scores = self.validate(val)
                for k, v in scores.items():
                    if writer:
                        writer.add_scalar(f"val/{k}", v, self.step)
                bar.write(f"step {self.step}: val " + json.dumps(
                    {k: round(v, 4) for k, v in scores.items()}))
            out_of_time = self.out_of_time(started)
            if self.step % cfg.checkpoint_every == 0 or self.step == last or out_of_time:
                self.save()
            if self.step in cfg.keep_steps:
                self.save(f"step_{self.step}.pt")
            if out_of_time and self.step < last:
                if self.rank == 0:
                    bar.write(f"stopped at step {self.step} of {last}: --max-minutes "
                              f"{cfg.max_minutes:g} reached; continue with --resume "
                              f"{self.out / 'last.pt'}", file=sys.stderr)
                break
        bar.close()
        if writer:
            writer.close()
        return logs


def _numpy_rng_state() -> tuple:
    """numpy's global generator state in plain Python types, which ``torch.load`` reads with
    ``weights_only`` under numpy 1 and 2 alike (a pickled array names numpy's internal modules,
    renamed in numpy 2: a GPU machine's numpy 2, the plugin's numpy 1)."""
    kind, key, position, has_gauss, gauss = np.random.get_state()
    return kind, key.tolist(), int(position), int(has_gauss), float(gauss)


def _unwrap(module: torch.nn.Module | None) -> torch.nn.Module | None:
    return getattr(module, "module", module)


def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return int(os.environ.get("RANK", "0")), world


def _device(choice: str) -> torch.device:
    """This process's device: under torchrun, the GPU of its local rank."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("the run's device is cuda (--device, or the saved options of a "
                         "resumed run), but PyTorch sees no CUDA GPU here; give --device cpu "
                         "or auto")
    # torchrun sets LOCAL_RANK; without it, ranks are taken to fill each node's GPUs in
    # blocks (ranks 0 to G-1 on the first node, and so on).
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _use_deterministic_kernels(on: bool) -> None:
    """On or off for the whole process, as PyTorch has it: the latest trainer's choice holds.
    cuBLAS reads its workspace setting when first used: a process that used it before keeps
    its own (this network runs convolutions only)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; training goes on without curves
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, disable=not enabled, dynamic_ncols=True,
                mininterval=5.0, file=sys.stderr)


def _sentence(exc: Exception) -> str:
    """The error's own sentence, also when a DataLoader worker wrapped it in its traceback."""
    last = str(exc).strip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last.removeprefix(prefix)


def _kept(trainer: Trainer, advice: str) -> str:
    """What is left of a stopped run, and how to go on from it."""
    last = trainer.out / "last.pt"
    if not last.exists():
        return "no checkpoint was written"
    return f"its last checkpoint is kept: {advice} with --resume {last}"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        trainer = Trainer(cfg)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        logs = trainer.fit()
    except NoTrainingData as exc:  # known only once an epoch has run dry
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UnreadableShard as exc:  # a damaged shard, met part-way
        print(f"error: {_sentence(exc)}; the run stopped at step {trainer.step} "
              f"({_kept(trainer, 'replace the shard and continue')})", file=sys.stderr)
        return 1
    except Diverged as exc:
        last = trainer.out / "last.pt"
        kept = f"{last}, from before it, is kept" if last.exists() else "no checkpoint was written"
        print(f"error: {exc}; {kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nerror: interrupted at step {trainer.step}; {_kept(trainer, 'continue')}",
              file=sys.stderr)
        return 130
    except OSError as exc:  # a checkpoint or log that cannot be written: a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; the run stopped at step {trainer.step} "
              f"({_kept(trainer, 'make room and continue')})", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        print(json.dumps({"step": trainer.step, **{k: round(v, 5) for k, v in logs.items()}}))
    if dist.is_initialized():
        # DDP's reducer keeps gloo's last work alive; freed at interpreter exit, after the
        # group, it can abort the process ("terminate called without an active exception").
        del trainer
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
