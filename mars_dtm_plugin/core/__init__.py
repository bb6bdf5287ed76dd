"""The QGIS-free engine: numpy, GDAL and onnxruntime only."""
