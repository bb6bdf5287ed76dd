"""Tests import the plugin as it ships: from build/ when `make build` has assembled it."""

import os
import sys
from pathlib import Path

# Headless Qt for QGIS: there is no screen on test machines.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "build"
if (BUILT / "mars_dtm_plugin").is_dir():
    sys.path.insert(0, str(BUILT))
sys.path.insert(1 if (BUILT / "mars_dtm_plugin").is_dir() else 0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"
