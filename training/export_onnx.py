"""Export a training checkpoint to the ONNX file the plugin runs.

``python -m training.export_onnx CHECKPOINT OUT.onnx [--version V] [--training-data TEXT]``

Opset 17, input ``image`` and output ``height`` ([N, 1, H, W], dynamic N, H, W), the full model
contract in ``metadata_props``, ``onnx.checker``, then an onnxruntime run compared with PyTorch
at a shape different from the one traced.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from mars_dtm_plugin.core.contract import ModelContract, coarse_pass_arg, parse_contract
from mars_dtm_plugin.core.errors import DtmError
from training.model import Generator, GeneratorConfig, conv_flops, load_checkpoint
from training.train import complete_config

OPSET = 17
# Tiles disagree most at their edges (least context); wide overlaps blend those away. 37.5 %
# (96 px of a 256 px tile) hides most tile-scale seams in hillshades and keeps the engine
# above 1 MP/s on two CPU cores (docs/model-card.md).
DEFAULT_OVERLAP = 37.5
EXPORT_SIDE = 256  # traced at this side (or the size multiple above it); sizes stay dynamic
DEFAULT_TRAINING_DATA = ("synthetic Mars terrain and real DEM shapes (Mars HiRISE, Earth, Moon) "
                         "rendered under many suns; no real image/DTM pairs")


def code_revision(folder: Path = Path(__file__).parent) -> str:
    """The commit of ``folder``'s checkout, marked ``-dirty`` if tracked files were edited."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=folder)

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        if commit.returncode:
            return "unknown"
        edited = git("diff", "--quiet", "HEAD", "--").returncode == 1
    except OSError:
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if edited else "")


def load_generator(checkpoint: str | Path) -> tuple[Generator, dict]:
    """The generator (eval mode) and the run's resolved configuration."""
    state = load_checkpoint(checkpoint)
    missing = {"generator_config", "config", "step"} - set(state)
    if missing:
        raise ValueError(f"{checkpoint} is not a checkpoint of training.train (it lacks "
                         f"{', '.join(sorted(missing))})")
    gen_cfg = state["generator_config"]
    # Fields a checkpoint predates take their defaults, which are how it was trained.
    model = Generator(GeneratorConfig(**{**gen_cfg, "channels": tuple(gen_cfg["channels"])}))
    model.load_state_dict(state["generator"])
    steps = state["step"] + state.get("prior_steps", 0)  # a fine-tune counts its start's too
    return model.eval(), {**complete_config(state["config"]), "trained_steps": int(steps)}


def build_contract(config: dict, model: Generator, version: str, training_data: str,
                   revision: str, tiles_overlap: float = DEFAULT_OVERLAP,
                   coarse_pass: dict | None = None) -> ModelContract:
    tile = int(config["patch_size"])
    if tile % model.size_multiple:
        raise ValueError(f"the checkpoint's patch size {tile} is not a multiple of its U-Net's "
                         f"size multiple {model.size_multiple}, so the engine could not run "
                         "its tiles; train again with a patch size that is")
    return ModelContract(
        # The engine feeds tiles the size of the training patches: the context the model
        # learned (and the length its shading integral runs) is the context it gets.
        tile_size=tile,
        tiles_overlap=tiles_overlap,
        resolution=100.0,
        standardization_mean=[float(config["norm_mean"])],
        standardization_std=[float(config["norm_std"])],
        height_units="gsd",
        height_reference="tile_mean",
        sun_mode="rotate",
        sun_azimuth=float(config["canonical_azimuth"]),
        input_percentiles=[float(p) for p in config["percentiles"]],
        input_scaling=config["input_scaling"],
        coarse_pass=coarse_pass,
        version=version,
        training_data=training_data,
        code_revision=revision,
        extra={
            "marsdtm:size_multiple": model.size_multiple,
            "marsdtm:gflop_per_tile": round(conv_flops(model, tile, tile) / 1e9, 3),
            "marsdtm:architecture": {"name": "unet", "channels": list(model.config.channels),
                                     "shading_prior": model.config.shading_prior,
                                     "prior_window": model.config.prior_window},
            "marsdtm:training_steps": int(config.get("trained_steps", config["steps"])),
            "marsdtm:adversarial": bool(config["gan"]),
        },
    )


def export(model: Generator, contract: ModelContract, out: str | Path) -> Path:
    """Trace, add the contract, check; returns the written path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: "batch", 2: "height_px", 3: "width_px"}
    with torch.no_grad():
        side = -(-EXPORT_SIDE // model.size_multiple) * model.size_multiple
        torch.onnx.export(model, (torch.zeros(1, 1, side, side),), str(out), dynamo=False,
                          opset_version=OPSET, input_names=["image"], output_names=["height"],
                          dynamic_axes={"image": dims, "height": dims}, do_constant_folding=True)
    proto = onnx.load(str(out))
    # One channel of heights, as the contract says; the tracer leaves it a symbol.
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    onnx.helper.set_model_props(proto, contract.to_metadata())
    proto.doc_string = "Mars DTM generator: image -> heights in pixel units, tile-mean relative."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    parse_contract({p.key: p.value for p in proto.metadata_props}, str(out))
    return out


def parity(model: Generator, path: str | Path, shape: tuple[int, int, int, int] | None = None,
           seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| at ``shape`` (default: 5 by 7 size multiples, not the
    traced shape), in pixel units."""
    import onnxruntime as ort

    shape = shape or (2, 1, 5 * model.size_multiple, 7 * model.size_multiple)

    x = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["height"], {"image": x})[0]
    if got.shape != expected.shape:
        raise AssertionError(f"onnxruntime gave shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint (last.pt)")
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--version", help="model version in the contract (default: 0.0.0+ "
                        "the code revision, a development build)")
    parser.add_argument("--training-data", default=DEFAULT_TRAINING_DATA,
                        help="one line on what the model learned from")
    parser.add_argument("--tiles-overlap", type=float, default=DEFAULT_OVERLAP,
                        help="default overlap of the engine's tiles, percent of the tile size")
    parser.add_argument("--coarse-pass", type=coarse_pass_arg, metavar="FACTORxSIGMA",
                        help="ask the engine for a second pass over the image averaged in "
                             "FACTOR x FACTOR blocks, for the wavelengths beyond SIGMA pixels "
                             "(e.g. 3x24; default: one pass)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest allowed |ONNX - PyTorch| output difference (pixel units)")
    args = parser.parse_args(argv)
    revision = code_revision()
    version = f"0.0.0+{revision}" if args.version is None else args.version.strip()
    if not version:
        parser.error("--version must not be empty")
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        parser.error(f"{args.out} is the checkpoint itself; give the ONNX file another name")
    if Path(args.out).is_dir():
        parser.error(f"{args.out} is a folder; give the ONNX file's name, such as "
                     f"{Path(args.out) / 'model.onnx'}")
    try:
        model, config = load_generator(args.checkpoint)
        contract = build_contract(config, model, version, args.training_data, revision,
                                  args.tiles_overlap, args.coarse_pass)
        parse_contract(contract.to_metadata(), "The exported model")  # before any writing
    except (ValueError, DtmError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    # Written aside and renamed once it passes: a failed export leaves no file at OUT.
    partial = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        export(model, contract, partial)
        diff = parity(model, partial)
        if not math.isfinite(diff):
            print(f"error: the model in {args.checkpoint} gives heights that are not numbers "
                  "(a run that diverged?); nothing was written", file=sys.stderr)
            return 1
        if diff > args.tolerance:
            print(f"error: ONNX output differs from PyTorch by {diff:.2e}", file=sys.stderr)
            return 1
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.2f} MB); onnxruntime vs PyTorch max |diff| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
