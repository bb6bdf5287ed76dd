"""Probe: the network run twice on each tile, two ways, written into one ONNX file to score.

    python -m training.probes.doubled less-blank MODEL.onnx OUT.onnx
    python -m training.probes.doubled flip-mean MODEL.onnx OUT.onnx

``less-blank``: an image of one brightness holds no relief, so whatever a model makes of it is a
bias it adds to every tile. This prints that response for one of the model's tiles (its spread,
and its best-fit plane's rise away from the model's sun) and writes the model less its response
to a blank copy of its input: ``height = model(image) - model(0 * image)``.

``flip-mean``: the mean of the model's heights and of its heights for the tile flipped top to
bottom, flipped back: a mirrored scene under the same sun (the model's sun must be at its left
or right), averaged as a two-member ensemble.

OUT keeps the model's contract. It runs the network twice, so it is for scoring
(``training.probes.coarse_pass --model OUT``), not for shipping. Results: docs/experiments.md
("Probe: each tile less the model's blank response", "Probe: each tile averaged with its mirror").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mars_dtm_plugin.core.model import Generator, load_contract
from training.evaluate import plane_fit

FIRST, SECOND = "first/", "second/"  # prefixes of the tensors the two runs add or copy
ROWS_REVERSED = ("starts", [-1]), ("ends", [-(2**62)]), ("axes", [2]), ("steps", [-1])


def blank_response(model: Path) -> np.ndarray:
    """The model's heights (its own units) for one of its tiles of zeros, the input of an image
    at its mean brightness under ``mean_ratio`` scaling."""
    generator = Generator(model, "cpu")
    tile = generator.contract.tile_size
    return generator.run(np.zeros((1, tile, tile), np.float32))[0]


def doubled(model: Path, out: Path, way: str) -> None:
    """Write ``model`` run a second time on each tile and combined with its first run, ``way``
    being ``less-blank`` or ``flip-mean``."""
    proto = onnx.load(str(model))
    graph = proto.graph
    _check_plain(graph)
    image, height = graph.input[0].name, graph.output[0].name
    second = _second_copy(graph)
    first, rerun = FIRST + height, SECOND + height
    for node in graph.node:  # the first run's heights, before they are combined
        node.input[:] = [first if name == height else name for name in node.input]
        node.output[:] = [first if name == height else name for name in node.output]

    def constant(name: str, value: list | float, dtype: type) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), SECOND + name))
        return SECOND + name

    if way == "less-blank":
        feed = [helper.make_node("Mul", [image, constant("zero", 0.0, np.float32)],
                                 [SECOND + image])]
        combine = [helper.make_node("Sub", [first, rerun], [height])]
    else:
        flip = [constant(name, value, np.int64) for name, value in ROWS_REVERSED]
        feed = [helper.make_node("Slice", [image, *flip], [SECOND + image])]
        combine = [helper.make_node("Slice", [rerun, *flip], [SECOND + "back"]),
                   helper.make_node("Add", [first, SECOND + "back"], [SECOND + "sum"]),
                   helper.make_node("Mul", [SECOND + "sum", constant("half", 0.5, np.float32)],
                                    [height])]
    graph.node.extend([*feed, *second, *combine])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def _check_plain(graph: onnx.GraphProto) -> None:
    """Refuse what the copy would get wrong: tensors named with its prefixes, and subgraphs
    (whose outer names it would not rename)."""
    names = {tensor.name for tensor in graph.initializer} | {
        name for node in graph.node for name in [*node.input, *node.output]}
    if any(name.startswith((FIRST, SECOND)) for name in names):
        raise ValueError(f"the model already has tensors named {FIRST}... or {SECOND}...")
    if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attribute in node.attribute):
        raise ValueError("the model has subgraphs (If, Loop, Scan), which this probe does not "
                         "copy")


def _second_copy(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes again, reading and writing ``SECOND``-prefixed tensors (its weights
    shared)."""
    shared = {tensor.name for tensor in graph.initializer} | {""}

    def renamed(name: str) -> str:
        return name if name in shared else SECOND + name

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = node.name and SECOND + node.name  # unnamed nodes stay unnamed
        copy.input[:] = [renamed(name) for name in node.input]
        copy.output[:] = [renamed(name) for name in node.output]
        nodes.append(copy)
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("way", choices=("less-blank", "flip-mean"))
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file")
    if args.out.resolve() == args.model.resolve():
        parser.error("OUT must not be MODEL: the model would be overwritten")
    azimuth = load_contract(args.model).sun_azimuth or 0.0
    if args.way == "flip-mean" and math.sin(math.radians(azimuth)) ** 2 < 1 - 1e-9:
        parser.error("flip-mean needs a model whose sun is at its frame's left or right "
                     f"(azimuth 90 or 270), not {azimuth:g}")
    if args.way == "less-blank":
        response = blank_response(args.model)
        _, per_col, per_row = plane_fit(response, np.ones(response.shape, bool))
        # Towards the sun, in (column, row): up is north, rows run south.
        towards = (math.sin(math.radians(azimuth)), -math.cos(math.radians(azimuth)))
        rise = -(per_col * towards[0] + per_row * towards[1])  # per pixel, away from the sun
        degrees = math.degrees(math.atan(rise))
        print(f"blank response over a {len(response)} px tile: standard deviation "
              f"{response.std():.3f}; rise away from the sun {rise:.5f} per pixel ({degrees:.3f} "
              "degrees where heights are in pixel sizes)")
    try:
        doubled(args.model, args.out, args.way)
    except ValueError as error:
        parser.error(f"{args.model.name}: {error}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
