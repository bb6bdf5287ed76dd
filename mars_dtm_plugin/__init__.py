"""Mars DTM: a Digital Terrain Model from a single orbital image."""
