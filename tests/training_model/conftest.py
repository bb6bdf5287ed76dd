"""Shared fixtures: a small pool of rendered synthetic patches in shards, and a tiny generator
trained on it."""

from collections.abc import Callable
from pathlib import Path

import pytest

from training.data import SunRange, SyntheticPatches, write_pool
from training.train import TrainConfig, Trainer


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    write_pool([(SyntheticPatches(size=64, sun=SunRange()), 24)], out, seed=3, per_shard=8)
    return out


@pytest.fixture(scope="session")
def train_tiny(pool: Path) -> Callable[[Path, int], Trainer]:
    """Train a tiny generator with the recipe's input and prior for ``steps`` on the pool."""
    def train(out: Path, steps: int) -> Trainer:
        cfg = TrainConfig(data=str(pool), out=str(out), patch_size=64, batch_size=4,
                          steps=steps, channels=[4, 8, 16], threads=1, checkpoint_every=1000,
                          input_scaling="mean_ratio", norm_mean=0.0, norm_std=0.3,
                          shading_prior=True, prior_window=15)  # a window, as the recipe has
        trainer = Trainer(cfg)
        trainer.fit()
        return trainer

    return train
