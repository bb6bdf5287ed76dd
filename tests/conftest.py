"""Tests import the plugin as it ships: from build/ when `make build` has assembled it."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

# Headless Qt for QGIS: there is no screen on test machines.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "build"

if (BUILT / "mars_dtm_plugin").is_dir():
    sys.path.insert(0, str(BUILT))
    # Import now: pytest later puts the repository root first on sys.path, which would
    # otherwise shadow the built plugin with the source tree.
    importlib.import_module("mars_dtm_plugin")
    assert Path(sys.modules["mars_dtm_plugin"].__file__).is_relative_to(BUILT)
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from training.evaluate import DATA_DIR  # noqa: E402  (after the paths above)

SHARED_DATA = DATA_DIR  # the real-data folder (docs/data.md)
# Where a subprocess finds the plugin the tests import (its working folder comes first on its
# path, so a run from the repository root would take the source tree instead).
PLUGIN_HOME = BUILT if (BUILT / "mars_dtm_plugin").is_dir() else ROOT


def plugin_env() -> dict[str, str]:
    """The environment for a subprocess started in ``PLUGIN_HOME``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN_HOME), str(ROOT)])}


def predict_command(*args: str, module: str = "mars_dtm_plugin") -> subprocess.CompletedProcess:
    """``python -m mars_dtm_plugin predict ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, "predict", *args], capture_output=True,
                          text=True, env=plugin_env(), cwd=PLUGIN_HOME, timeout=120)
