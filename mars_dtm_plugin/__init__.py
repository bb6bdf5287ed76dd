"""Mars DTM: a Digital Terrain Model from a single orbital image."""


def classFactory(iface):  # the name QGIS looks for
    """QGIS entry point: only import and return the plugin class (QGIS imports happen here)."""
    from .plugin import MarsDtmPlugin

    return MarsDtmPlugin(iface)
