"""Probe: the model's heights for an image without shading, and the model less them.

    python -m training.probes.blank_response MODEL.onnx OUT.onnx

An image of one brightness holds no relief, so whatever a model makes of it is a bias it adds
to every tile. This prints that response for one of the model's tiles (its spread, and its
best-fit plane's rise away from the model's sun) and writes OUT, the model less its response to
a blank copy of its input: ``height = model(image) - model(0 * image)``, the same contract. The
network runs twice in OUT, so OUT is for scoring (``training.probes.coarse_pass --model OUT``),
not for shipping.
Results: docs/experiments.md ("Probe: each tile less the model's blank response").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mars_dtm_plugin.core.model import Generator
from training.evaluate import plane_fit

BLANK = "blank/"  # prefix of the second copy's tensors


def blank_response(model: Path) -> tuple[np.ndarray, float]:
    """The model's heights (its own units) for one of its tiles of zeros, the input of an image
    at its mean brightness under ``mean_ratio`` scaling, and its sun azimuth in its frame."""
    generator = Generator(model, "cpu")
    tile = generator.contract.tile_size
    azimuth = generator.contract.sun_azimuth or 0.0
    return generator.run(np.zeros((1, tile, tile), np.float32))[0], azimuth


def less_blank_response(model: Path, out: Path) -> None:
    """Write ``model`` less its response to a blank copy of its input."""
    proto = onnx.load(str(model))
    graph = proto.graph
    shared = {tensor.name for tensor in graph.initializer} | {""}
    image, height = graph.input[0].name, graph.output[0].name

    def renamed(name: str) -> str:
        return name if name in shared else BLANK + name

    blank = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = node.name and BLANK + node.name  # unnamed nodes stay unnamed
        copy.input[:] = [renamed(name) for name in node.input]
        copy.output[:] = [renamed(name) for name in node.output]
        blank.append(copy)
    for node in graph.node:  # the model's own heights, before the difference
        node.output[:] = ["raw/" + name if name == height else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), BLANK + "zero"))
    graph.node.append(helper.make_node("Mul", [image, BLANK + "zero"], [BLANK + image]))
    graph.node.extend(blank)
    graph.node.append(helper.make_node("Sub", ["raw/" + height, BLANK + height], [height]))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file")
    if args.out.resolve() == args.model.resolve():
        parser.error("OUT must not be MODEL: the model would be overwritten")
    response, azimuth = blank_response(args.model)
    _, per_col, per_row = plane_fit(response, np.ones(response.shape, bool))
    # Towards the sun, in (column, row): up is north, rows run south.
    towards = (math.sin(math.radians(azimuth)), -math.cos(math.radians(azimuth)))
    rise = -(per_col * towards[0] + per_row * towards[1])  # per pixel, away from the sun
    degrees = math.degrees(math.atan(rise))
    print(f"blank response over a {len(response)} px tile: standard deviation "
          f"{response.std():.3f}; rise away from the sun {rise:.5f} per pixel ({degrees:.3f} "
          "degrees where heights are in pixel sizes)")
    less_blank_response(args.model, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
