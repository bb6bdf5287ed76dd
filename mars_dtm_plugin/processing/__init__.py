"""QGIS Processing glue around the engine: provider, algorithm, feedback, styling."""
