"""Mars DTM: a Digital Terrain Model from a single orbital image."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # QGIS is imported only when QGIS calls classFactory
    from qgis.gui import QgisInterface

    from .plugin import MarsDtmPlugin


def classFactory(iface: QgisInterface) -> MarsDtmPlugin:  # the name QGIS looks for
    """QGIS entry point: only import and return the plugin class (QGIS imports happen here)."""
    from .plugin import MarsDtmPlugin

    return MarsDtmPlugin(iface)
