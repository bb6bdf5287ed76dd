"""Training patches in WebDataset tar shards, written and read sequentially.

One sample is three tar members sharing a key:
``<key>.image.npy`` (H x W, uint8 or float32), ``<key>.height.npy`` (H x W float32, metres,
relative to the patch mean) and ``<key>.json`` (provenance: pair id, window, pixel size, sun).
See docs/data.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Patch:
    key: str
    image: np.ndarray
    height: np.ndarray
    meta: dict = field(default_factory=dict)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class ShardWriter:
    """Writes patches into ``<prefix>-<n:06d>.tar`` files of at most ``max_count`` samples.

    A shard is written under a temporary name and renamed when closed, so a reader never
    sees a half-written shard.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str = "shard",
                 max_count: int = 1000) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_count = max_count
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, patch: Patch) -> None:
        if "." in patch.key or "/" in patch.key:
            raise ValueError(f"patch key {patch.key!r} must not contain '.' or '/'")
        if self._tar is None or self._count >= self.max_count:
            self._open_next()
        members = {
            "image.npy": _npy_bytes(patch.image),
            "height.npy": _npy_bytes(patch.height.astype(np.float32)),
            "json": json.dumps(patch.meta, sort_keys=True).encode(),
        }
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{patch.key}.{suffix}")
            info.size = len(data)
            info.mtime = 0  # reproducible shards
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _open_next(self) -> None:
        self.close()
        path = self.directory / f"{self.prefix}-{len(self.paths):06d}.tar"
        self.paths.append(path)
        # Stays open across write() calls; close() closes it.
        self._tar = tarfile.open(path.with_suffix(".tar.part"), "w")  # noqa: SIM115
        self._count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            final = self.paths[-1]
            os.replace(final.with_suffix(".tar.part"), final)
            self._tar = None

    def abort(self) -> None:
        """Drop the shard being written: only complete shards stay behind a failed run."""
        if self._tar is not None:
            tar, self._tar = self._tar, None
            try:
                with contextlib.suppress(OSError):  # a full disk may refuse the last bytes too
                    tar.close()
            finally:
                self.paths.pop().with_suffix(".tar.part").unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class UnreadableShard(ValueError):
    """A shard damaged after it was written (a cut copy, say), named in one sentence."""


def read_shard(path: str | os.PathLike) -> Iterator[Patch]:
    """Yield the patches of one shard in order; ``UnreadableShard`` if it is damaged."""
    try:
        yield from _read_shard(path)
    except UnreadableShard:
        raise
    # A cut or changed copy, or one gone: tar, numpy and JSON each fail their own way.
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UnreadableShard(f"the shard {path} cannot be read ({exc})") from exc


def _read_shard(path: str | os.PathLike) -> Iterator[Patch]:
    pending: dict[str, dict] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            data = tar.extractfile(member).read()
            parts = pending.setdefault(key, {})
            if suffix == "json":
                parts["meta"] = json.loads(data)
            else:
                parts[suffix.removesuffix(".npy")] = np.load(io.BytesIO(data),
                                                             allow_pickle=False)
            if {"image", "height", "meta"} <= parts.keys():
                done = pending.pop(key)
                yield Patch(key, done["image"], done["height"], done["meta"])
        # A copy cut between two files reads as a shorter archive: a whole one ends with two
        # zero blocks, and with whole patches.
        if pending:
            raise UnreadableShard(f"the shard {path} cannot be read (it ends inside patch "
                                  f"{next(iter(pending))})")
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
            raise UnreadableShard(f"the shard {path} cannot be read (it lacks the end of a "
                                  "tar archive: a cut copy?)")


def read_shards(paths: list[str | os.PathLike]) -> Iterator[Patch]:
    for path in paths:
        yield from read_shard(path)
