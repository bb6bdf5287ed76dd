"""Small real ONNX models for tests, built with onnx.helper and carrying the model contract.

``kind`` picks the graph, all mapping ``image`` [N, 1, H, W] to ``height`` [N, 1, H, W]:
- ``identity``: height = image (what goes in comes out; checks scaling and placement);
- ``abs``: height = |image|, which shows where the input's zero lies (its standardisation);
- ``offsets``: height = image + 500 * sin(1000 * mean(image)): every tile gets its own
  large vertical offset, as a monocular model does, so stitching must reconcile them;
- ``ramp``: height = column index (rises to the right of the model's frame whatever the
  image), which shows where the engine's rotation puts the model's axes;
- ``nan``: NaN everywhere (a broken model);
- ``one_tile``: identity that fails on anything but one 64 px tile (a model error at run time);
- ``conv``: one 3x3 convolution with seeded random weights (plumbing, speed);
- ``blur``: a 3x3 mean with zero padding, so its output sags at its own border, as a real
  network's padding shows there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mars_dtm_plugin.core.contract import ModelContract

OPSET = 17


def contract_for_tests(**overrides) -> ModelContract:
    base = ModelContract(
        tile_size=64,
        tiles_overlap=25.0,
        resolution=100.0,
        standardization_mean=[0.0],
        standardization_std=[1.0],
        height_units="gsd",
        height_reference="tile_mean",
        sun_mode="none",
        sun_azimuth=270.0,
        input_percentiles=[0.0, 100.0],
        version="test",
        training_data="none",
        code_revision="test",
    )
    return dataclasses.replace(base, **overrides)


def _graph(kind: str, seed: int) -> tuple[list, list]:
    if kind == "identity":
        return [helper.make_node("Identity", ["image"], ["height"])], []
    if kind == "abs":
        return [helper.make_node("Abs", ["image"], ["height"])], []
    if kind == "offsets":
        constants = [
            numpy_helper.from_array(np.array(1000.0, np.float32), "k_in"),
            numpy_helper.from_array(np.array(500.0, np.float32), "k_out"),
        ]
        nodes = [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Mul", ["m", "k_in"], ["m_scaled"]),
            helper.make_node("Sin", ["m_scaled"], ["s"]),
            helper.make_node("Mul", ["s", "k_out"], ["offset"]),
            helper.make_node("Add", ["image", "offset"], ["height"]),
        ]
        return nodes, constants
    if kind == "ramp":
        nodes = [
            helper.make_node("Mul", ["image", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "one"], ["ones"]),
            helper.make_node("CumSum", ["ones", "axis"], ["height"]),
        ]
        constants = [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(3, np.int64), "axis"),
        ]
        return nodes, constants
    if kind == "nan":  # log(-1) on every pixel
        return ([helper.make_node("Abs", ["image"], ["a"]),
                 helper.make_node("Add", ["a", "one"], ["b"]),
                 helper.make_node("Neg", ["b"], ["c"]),
                 helper.make_node("Log", ["c"], ["height"])],
                [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    if kind == "two_channels":  # the image twice, as two channels
        return [helper.make_node("Concat", ["image", "image"], ["height"], axis=1)], []
    if kind == "one_tile":  # identity through a reshape that takes exactly one 64 px tile
        shape = numpy_helper.from_array(np.array([1, 1, 64, 64], np.int64), "one_tile_shape")
        return [helper.make_node("Reshape", ["image", "one_tile_shape"], ["height"])], [shape]
    if kind == "conv":
        rng = np.random.default_rng(seed)
        weight = rng.normal(0, 0.3, (1, 1, 3, 3)).astype(np.float32)
        return (
            [helper.make_node("Conv", ["image", "w"], ["height"], pads=[1, 1, 1, 1])],
            [numpy_helper.from_array(weight, "w")],
        )
    if kind == "blur":
        weight = np.full((1, 1, 3, 3), 1 / 9, np.float32)
        return (
            [helper.make_node("Conv", ["image", "w"], ["height"], pads=[1, 1, 1, 1])],
            [numpy_helper.from_array(weight, "w")],
        )
    raise ValueError(f"unknown test model kind {kind!r}")


def write_test_model(path: str | Path, kind: str = "identity", seed: int = 0,
                     metadata: dict[str, str] | None = None, dims: list | None = None,
                     **contract) -> Path:
    """Write a contract-carrying ONNX model; ``metadata`` replaces the contract's props;
    ``dims``: the input and output shape (default: all dynamic but the channel)."""
    nodes, initializers = _graph(kind, seed)
    dims = dims or ["batch", 1, "height_px", "width_px"]
    graph = helper.make_graph(
        nodes,
        f"test_{kind}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("height", TensorProto.FLOAT,
                                       [*dims[:1], "channels", *dims[2:]]
                                       if kind == "two_channels" else dims)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    props = contract_for_tests(**contract).to_metadata() if metadata is None else metadata
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, path)
    return path
