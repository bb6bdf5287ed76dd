"""The model a benchmark runs: the bundled generator, or a stand-in of similar cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mars_dtm_plugin.core.model import default_model_path
from tests.models import contract_for_tests


def conv_stack(path: Path, tile_size: int = 256, channels: int = 16, layers: int = 6) -> Path:
    """A plain stack of 3x3 convolutions: a stand-in with a U-Net's order of cost per pixel."""
    rng = np.random.default_rng(0)
    nodes, weights, previous, width = [], [], "image", 1
    for i in range(layers):
        out_width = 1 if i == layers - 1 else channels
        name = f"w{i}"
        weights.append(numpy_helper.from_array(
            rng.normal(0, 0.1, (out_width, width, 3, 3)).astype(np.float32), name))
        output = "height" if i == layers - 1 else f"x{i}"
        conv = f"c{i}" if i < layers - 1 else output
        nodes.append(helper.make_node("Conv", [previous, name], [conv], pads=[1, 1, 1, 1]))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [conv], [output]))
        previous, width = output, out_width
    dims = ["batch", 1, "h", "w"]
    graph = helper.make_graph(
        nodes, "conv_stack",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("height", TensorProto.FLOAT, dims)],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, contract_for_tests(tile_size=tile_size).to_metadata())
    onnx.save(model, path)
    return path


def benchmark_model(workdir: Path, tile_size: int = 256) -> tuple[Path, str]:
    """The bundled model when it exists, else the stand-in; with a label saying which."""
    bundled = default_model_path()
    if bundled.is_file():
        return bundled, f"bundled model {bundled.name}"
    return conv_stack(workdir / "conv_stack.onnx", tile_size), "stand-in 6-layer conv stack"
