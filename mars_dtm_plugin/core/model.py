"""The ONNX generator: contract check, execution provider choice, batched inference."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shlex
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import numpy as np

from .contract import ModelContract, parse_contract
from .errors import DtmError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# The command line's advice; QGIS's Python is found differently on each system, so the plugin
# gives its own (``onnxruntime_missing_message(install_help=...)``).
INSTALL_HELP = (
    "The Python package onnxruntime is not installed in the Python that runs this program "
    "({python}); install it there, without upgrading numpy: {python} -m pip install "
    "onnxruntime (\"onnxruntime-gpu[cuda,cudnn]\" for an NVIDIA GPU)."
)

_BROKEN_INSTALL = (
    "The Python package onnxruntime is installed but does not load ({0}); reinstall it, or "
    "the package it names, for the numpy and Python of this program."
)


def onnxruntime_missing_message(install_help: str = INSTALL_HELP) -> str | None:
    """None when onnxruntime imports, else what is wrong and how to mend it (``install_help``
    when it is not installed; ``{python}`` in it is this program's Python)."""
    try:
        _onnxruntime(install_help)
    except DtmError as exc:
        return str(exc)
    return None


def _onnxruntime(install_help: str = INSTALL_HELP) -> ModuleType:
    # Imported lazily: onnxruntime is not part of QGIS, and its absence must not break imports.
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise DtmError(_BROKEN_INSTALL.format(exc)) from exc
        raise DtmError(install_help.replace("{python}", _quoted(sys.executable))) from exc
    except ImportError as exc:  # installed, but it or a library it needs does not load
        raise DtmError(_BROKEN_INSTALL.format(exc)) from exc
    return onnxruntime


def _quoted(path: str) -> str:
    """``path`` as a shell on this system takes it (spaces, as in C:\\Program Files)."""
    return subprocess.list2cmdline([path]) if os.name == "nt" else shlex.quote(path)


def default_model_path() -> Path:
    """The generator bundled with the plugin."""
    return Path(__file__).resolve().parents[1] / "models" / "mars_dtm_generator.onnx"


def load_contract(path: str | os.PathLike) -> ModelContract:
    """The contract of a model file, read through a CPU session (the plugin does not depend
    on the onnx package that could read it without one)."""
    return Generator(path, provider="cpu").contract


_SESSIONS: OrderedDict[tuple, Generator] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()
KEPT_SESSIONS = 2


def release_sessions() -> None:
    """Drop the kept sessions and the memory they hold (the plugin unloading)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


def shared_generator(path: str | os.PathLike, provider: str = "auto",
                     threads: int | None = None) -> Generator:
    """A generator reused across runs (a batch of scenes loads its model once).

    Keyed by the file's identity and times, so a replaced model file is reloaded; onnxruntime
    sessions may run from several threads at once (two threads missing together both load it,
    which costs time, not correctness).
    """
    path = Path(path)
    try:
        stat = path.resolve().stat()
    except OSError:
        return Generator(path, provider, threads)  # it explains what is wrong with the path
    # Inode and change time too: a same-size file replaced within one mtime tick is new.
    key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size,
           provider, threads)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
    generator = Generator(path, provider, threads)
    with _SESSIONS_LOCK:
        _SESSIONS[key] = generator
        while len(_SESSIONS) > KEPT_SESSIONS:
            _SESSIONS.popitem(last=False)
    return generator


class Generator:
    """An onnxruntime session over a contract-carrying generator model."""

    def __init__(self, path: str | os.PathLike, provider: str = "auto",
                 threads: int | None = None) -> None:
        ort = _onnxruntime()
        if threads is not None and threads < 1:
            raise DtmError(f"The number of threads must be at least 1, not {threads}.")
        self.path = Path(path)
        if not self.path.is_file():
            raise DtmError(f"The model file '{self.path}' "
                           f"{'is a folder' if self.path.is_dir() else 'does not exist'}.")
        if not os.access(self.path, os.R_OK):
            raise DtmError(f"The model file '{self.path}' cannot be read (permission denied).")
        providers, self.provider_note = _choose_providers(ort, provider)
        missing = preload_cuda_libraries(ort) if providers[0] == PROVIDERS["cuda"] else ""
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: errors reach the user as DtmError
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DtmError(f"The model file '{self.path.name}' is not a valid ONNX model: "
                           f"{str(exc).splitlines()[0]}") from exc
        self.provider = self.session.get_providers()[0]
        why = f"no usable GPU or CUDA libraries{'; ' + missing if missing else ''}"
        if provider == "cuda" and self.provider != PROVIDERS["cuda"]:
            raise DtmError(f"CUDA was requested, but it could not start ({why}); choose the "
                           "CPU or auto.")
        if providers[0] != self.provider:
            self.provider_note = (f"{providers[0]} could not start ({why}); running on "
                                  f"{self.provider}.")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = parse_contract(meta, source=f"The model '{self.path.name}'")
        self.input_name, self.max_batch = self._check_io()

    def _check_io(self) -> tuple[str, int | None]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or any(
                len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 1)
                for shape in (inputs[0].shape, outputs[0].shape)):
            raise DtmError(f"The model '{self.path.name}' must have one input and one output "
                           "of shape [batch, 1, height, width].")
        batch, _, *side = inputs[0].shape
        tile = self.contract.tile_size
        if any(isinstance(n, int) and n != tile for n in side):
            raise DtmError(f"The model '{self.path.name}' takes {side[0]} x {side[1]} px input, "
                           f"but its metadata says tile_size {tile}.")
        return inputs[0].name, batch if isinstance(batch, int) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Heights for a [N, H, W] batch of standardised tiles, as [N, H, W]."""
        x = batch[:, None].astype(np.float32, copy=False)
        if self.max_batch is None:
            return self._run(x)
        parts = [self._run_fixed(x[i : i + self.max_batch])
                 for i in range(0, len(x), self.max_batch)]
        return np.concatenate(parts)

    def _run_fixed(self, x: np.ndarray) -> np.ndarray:
        """A model with a fixed batch size gets that many tiles: a short batch is padded."""
        short = self.max_batch - len(x)
        if short:
            x = np.concatenate([x, np.zeros((short, *x.shape[1:]), np.float32)])
        return self._run(x)[: len(x) - short]

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            (out,) = self.session.run(None, {self.input_name: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DtmError(f"The model '{self.path.name}' failed on a batch of shape "
                           f"{x.shape}: {str(exc).splitlines()[0]}") from exc
        if out.shape != x.shape:
            raise DtmError(f"The model '{self.path.name}' returned shape {out.shape} for input "
                           f"{x.shape}; it must return one height per pixel.")
        if not np.isfinite(out).all():  # one NaN tile would spread through the offsets
            raise DtmError(f"The model '{self.path.name}' returned heights that are not "
                           "numbers (NaN or infinite).")
        return out.reshape(x.shape[0], *x.shape[-2:])


def _choose_providers(ort: ModuleType, provider: str) -> tuple[list[str], str]:
    available = ort.get_available_providers()
    if provider not in ("auto", *PROVIDERS):
        raise DtmError(f"Unknown execution provider '{provider}'; use auto, cpu or cuda.")
    if provider == "cpu":
        return [PROVIDERS["cpu"]], ""
    if PROVIDERS["cuda"] in available:
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]], ""
    if provider == "cuda":
        raise DtmError("CUDA was requested, but this onnxruntime has no CUDA support; install "
                       "\"onnxruntime-gpu[cuda,cudnn]\" or choose the CPU.")
    return [PROVIDERS["cpu"]], ("No CUDA provider in this onnxruntime (install "
                                "\"onnxruntime-gpu[cuda,cudnn]\" to use an NVIDIA GPU); running on "
                                "CPUExecutionProvider.")


_PRELOAD_LOCK = threading.Lock()


def preload_cuda_libraries(ort: ModuleType) -> str:
    """Load the CUDA and cuDNN libraries of pip's NVIDIA packages, once per process; the first
    library it could not load, or ''.

    ``pip install onnxruntime-gpu[cuda,cudnn]`` puts them beside onnxruntime, where its CUDA
    provider does not look: without this, it would not start and the run would fall back to
    the CPU. What is not there is looked for on the system's search path.
    """
    # onnxruntime prints what it cannot load, and stdout is swapped for the whole process to
    # keep it: one thread at a time (another thread's prints in that moment are lost too).
    with _PRELOAD_LOCK:
        return _preload_report(ort)


@functools.cache
def _preload_report(ort: ModuleType) -> str:
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime 1.21 and later
    printed = io.StringIO()
    # A failed preload only means that the GPU may not start; the session's start decides.
    with contextlib.redirect_stdout(printed), contextlib.suppress(Exception):
        if preload is not None:
            preload()
    failures = [line for line in printed.getvalue().splitlines() if line.startswith("Failed")]
    return failures[0] if failures else ""
