"""Without onnxruntime, QGIS starts the plugin cleanly and the algorithm explains what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import BUILT

from .conftest import terrain_image, write_geotiff

# Run in a fresh interpreter where `import onnxruntime` fails as it does when the package is not
# installed, starting the plugin the way qgis_process does (classFactory, then initProcessing).
SCRIPT = r"""
import json, sys
sys.modules["onnxruntime"] = None
sys.path.insert(0, sys.argv[1])
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingException,
                       QgsProcessingFeedback)
app = QgsApplication([], False)
app.initQgis()
import qgis.utils
started = qgis.utils.loadPlugin("mars_dtm_plugin") and \
    qgis.utils.startProcessingPlugin("mars_dtm_plugin")
alg = QgsApplication.processingRegistry().createAlgorithmById("marsdtm:predictdtm")
can_execute, message = alg.canExecute()
try:
    alg.run({"INPUT": sys.argv[2], "OUTPUT": sys.argv[3]}, QgsProcessingContext(),
            QgsProcessingFeedback(), {}, False)
    run_error = None
except QgsProcessingException as exc:
    run_error = str(exc)
print(json.dumps({"started": started, "visible": alg is not None, "can_execute": can_execute,
                  "message": message, "run_error": run_error}))
"""


def test_missing_onnxruntime_keeps_the_algorithm_visible_and_explains(tmp_path):
    image = write_geotiff(tmp_path / "scene.tif", terrain_image(70, 70))
    output = tmp_path / "dtm.tif"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(BUILT), str(image), str(output)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["started"] and result["visible"]
    assert result["can_execute"] is False
    assert "pip install" in result["message"] and "onnxruntime" in result["message"]
    assert "OSGeo4W" in result["message"]
    assert result["run_error"] == result["message"]
    assert not output.exists()
