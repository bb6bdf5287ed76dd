"""Quantise an exported generator to 8-bit integers, for speed on CPUs.

``python -m training.quantize MODEL.onnx OUT.onnx --data POOL_TRAIN_DIR [--samples 64]``

Static quantisation in onnxruntime's QDQ form: weights per output channel, activations per
tensor, their ranges calibrated on training patches fed as training feeds them. Weights take 7
bits (``reduce_range``): CPUs without VNNI multiply 8-bit pairs into 16-bit sums that would
saturate. The shading prior is computed in floating point (its running sums would not fit 8
bits), and so is the head (whose output is the height), so heights keep their resolution; so
are the ``--float-convs`` convolutions whose quantisation alone moves the heights most on other
training patches.
The contract is carried over, its version given a ``+int8`` suffix unless ``--version`` says
otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError

from mars_dtm_plugin.core.contract import ModelContract, parse_contract
from mars_dtm_plugin.core.errors import DtmError
from training.data import Normalisation, ShardPatches, list_shards

QUANTISED_OPS = ["Conv", "Relu", "Concat", "Resize"]
BATCH = 8


def read_contract(model: Path) -> tuple[onnx.ModelProto, ModelContract]:
    try:
        proto = onnx.load(str(model))
    except DecodeError as exc:  # a checkpoint, say
        raise ValueError(f"{model} is not an ONNX model") from exc
    return proto, parse_contract({p.key: p.value for p in proto.metadata_props}, model.name)


def calibration_tiles(contract: ModelContract, data: Path, samples: int,
                      seed: int) -> np.ndarray:
    """``samples`` training patches of the model's tile size, standardised as its contract says
    ([N, 1, H, W]); the pool's augmentation widens them as training did, and a small pool is
    read again, augmented afresh."""
    norm = Normalisation(tuple(contract.input_percentiles), contract.standardization_mean[0],
                         contract.standardization_std[0], contract.input_scaling)
    patches = ShardPatches(list_shards(data), seed, norm, contract.sun_azimuth,
                           size=contract.tile_size, scene_mean=True)

    def epochs() -> Iterator[torch.Tensor]:
        for epoch in itertools.count():
            patches.set_epoch(epoch)
            read = 0
            for x, _ in patches:
                read += 1
                yield x
            if not read:
                raise ValueError(f"the pool {data} holds no patches of {contract.tile_size} px "
                                 "to calibrate on")

    return np.stack([x.numpy() for x in itertools.islice(epochs(), samples)]).astype(np.float32)


def heights(model: Path, tiles: np.ndarray) -> np.ndarray:
    """The model's heights for ``tiles``, each less its mean (the engine's tile reference)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: tiles[i:i + BATCH]})[0]
                          for i in range(0, len(tiles), BATCH)])
    return out - out.mean(axis=(-2, -1), keepdims=True)


def quantise(prepared: Path, out: Path, calibration: np.ndarray, float_nodes: list[str]) -> Path:
    """``prepared`` (``quant_pre_process``ed) in QDQ form, ``float_nodes`` left as they are."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // BATCH)))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTISED_OPS, nodes_to_exclude=float_nodes,
                    per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def rms_gap(reference: np.ndarray, model: Path, tiles: np.ndarray) -> float:
    return float(np.sqrt(np.mean((heights(model, tiles) - reference) ** 2)))


def most_sensitive(prepared: Path, calibration: np.ndarray, check: np.ndarray,
                   reference: np.ndarray, convs: list[str], head: str, count: int,
                   work: Path) -> list[str]:
    """The ``count`` convolutions whose staying in floating point, each on its own, brings the
    quantised heights closest to the original's on ``check``."""
    trial = work / "trial.onnx"
    gaps = {conv: rms_gap(reference, quantise(prepared, trial, calibration, [head, conv]), check)
            for conv in convs if conv != head} if count else {}
    return sorted(gaps, key=gaps.get)[:count]


def carry_over(source: onnx.ModelProto, quantised: onnx.ModelProto, version: str) -> None:
    """``source``'s contract onto ``quantised``, under ``version``, and only the operator sets
    its graph uses: the pre-processing's optimiser declares others, which older onnxruntimes
    need not know."""
    used = {node.domain for node in quantised.graph.node} | {""}
    kept = [o for o in quantised.opset_import if o.domain in used]
    del quantised.opset_import[:]
    quantised.opset_import.extend(kept)
    del quantised.metadata_props[:]
    for prop in source.metadata_props:
        entry = quantised.metadata_props.add()
        entry.key = prop.key
        entry.value = json.dumps(version) if prop.key == "marsdtm:version" else prop.value
    onnx.checker.check_model(quantised)


def main(argv: list[str] | None = None) -> int:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an exported generator (training.export_onnx)")
    parser.add_argument("out", type=Path, help="the 8-bit ONNX file to write")
    parser.add_argument("--data", type=Path, required=True,
                        help="folder of training pool shards to calibrate on")
    parser.add_argument("--samples", type=int, default=64,
                        help="calibration patches, and as many more drawn after them to check "
                             "against")
    parser.add_argument("--float-convs", type=int, default=1,
                        help="convolutions besides the head kept in floating point")
    parser.add_argument("--seed", type=int, default=0, help="which patches, and how augmented")
    parser.add_argument("--version", help="the contract's version (default: the model's +int8)")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.model.resolve():
        parser.error("OUT must not be the model it quantises")
    if args.out.is_dir():
        parser.error(f"OUT {args.out} is a folder; give the file to write")
    if args.samples < 1 or args.float_convs < 0:
        parser.error("--samples must be at least 1 and --float-convs at least 0")
    try:
        source, contract = read_contract(args.model)
        tiles = calibration_tiles(contract, args.data, 2 * args.samples, args.seed)
    except (OSError, ValueError, DtmError) as exc:  # onnx's load errors are OSError or its own
        print(f"error: {exc}", file=sys.stderr)
        return 1
    calibration, check = tiles[: args.samples], tiles[args.samples:]
    reference = heights(args.model, check)
    convs = [n.name for n in source.graph.node if n.op_type == "Conv"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prepared = work / "prepared.onnx"
        # auto_merge: the decoder's Resize doubles symbolic sizes, which the symbolic shape
        # inference can only carry by merging them.
        quant_pre_process(str(args.model), str(prepared), auto_merge=True)
        kept = [convs[-1], *most_sensitive(prepared, calibration, check, reference, convs,
                                           convs[-1], args.float_convs, work)]
        quantised = onnx.load(str(quantise(prepared, work / "int8.onnx", calibration, kept)))
    version = args.version or f"{contract.version}+int8"
    carry_over(source, quantised, version)
    parse_contract({p.key: p.value for p in quantised.metadata_props}, args.out.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".part")  # no half-written model
    try:
        onnx.save(quantised, str(partial))
        partial.replace(args.out)
    finally:
        partial.unlink(missing_ok=True)
    gap = rms_gap(reference, args.out, check)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, version {version}), "
          f"in floating point: {', '.join(kept)}; RMS height gap to {args.model.name} on "
          f"{len(check)} other training patches: {gap:.4f} px "
          f"(the original's heights: RMS {np.sqrt(np.mean(reference ** 2)):.2f} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
