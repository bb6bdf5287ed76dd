"""Whether onnxruntime loads in QGIS's Python, and how to install it there if not."""

from __future__ import annotations

from ..core.model import onnxruntime_missing_message

# QGIS's own Python is found differently on each system; the engine's advice (this program's
# Python with -m pip) names QGIS's executable there, not a Python.
QGIS_INSTALL_HELP = (
    "The Python package onnxruntime is not installed in the Python that runs QGIS. "
    "Install it there, without upgrading numpy, then restart QGIS: on Windows, in the OSGeo4W "
    "Shell, run 'python -m pip install onnxruntime'; on macOS, run '/Applications/"
    "QGIS-LTR.app/Contents/MacOS/bin/python3 -m pip install --user onnxruntime' (QGIS.app for "
    "the latest release); on Linux, run 'python3 -m pip install --user onnxruntime' (on "
    "Debian 12 or Ubuntu 23.04 and newer add --break-system-packages). For an NVIDIA GPU, "
    "install \"onnxruntime-gpu[cuda,cudnn]\" instead."
)


def onnxruntime_missing_in_qgis() -> str | None:
    """None when onnxruntime imports, else what is wrong and how to mend it in QGIS."""
    return onnxruntime_missing_message(QGIS_INSTALL_HELP)
