"""Shared fixtures: a small pool of rendered synthetic patches in shards."""

from pathlib import Path

import pytest

from training.data import SunRange, SyntheticPatches, write_pool


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    write_pool([(SyntheticPatches(size=64, sun=SunRange()), 24)], out, seed=3, per_shard=8)
    return out
