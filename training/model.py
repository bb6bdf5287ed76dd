"""Generator (U-Net, image -> height) and conditional PatchGAN discriminator.

The generator maps one normalised grey image [N, 1, H, W] to heights in units of the pixel
size [N, 1, H, W]; H and W must be multiples of ``Generator.size_multiple``. It is kept small
(1.8 GFLOP per 256 x 256 tile) so that the plugin runs at more than a megapixel per second
on a laptop CPU.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Brings integrated shading near the image's range; fixed, so any tile size sees the same.
PRIOR_INPUT_SCALE = 1 / 16


@dataclass(frozen=True)
class GeneratorConfig:
    """Width and depth of the U-Net; saved in every checkpoint to rebuild it."""

    channels: tuple[int, ...] = (8, 16, 32, 64, 96, 128)
    """Feature channels per level; one stride-2 downsampling between levels."""
    shading_prior: bool = False
    """Also give the network the image integrated along the sun (see ``shading_integral``)."""
    prior_window: int = 0
    """Odd width in px of the running mean taken off the integrated shading; 0: the row's mean
    over the tile (0.4.0 and before), which makes a pixel's prior depend on where its tile
    starts."""


def shading_integral(image: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Each row's running sum from the sun's side, minus the row's mean (``window`` 0) or
    minus its running mean over ``window`` px (edge values repeated beyond the tile), which
    depends only on the image within ``window // 2`` px away from the tile's edges.

    With ``mean_ratio`` input and the sun from the image's left (azimuth 270), an input pixel
    is the linearised slope along its row, rising away from the sun (ground that faces the sun
    is brighter), so its running sum along a row is linear shape
    from shading's height profile in pixel units: the long, smooth relief a U-Net's receptive
    field cannot integrate by itself. Across the sun it knows nothing; the network does the rest.
    """
    profile = torch.cumsum(image, dim=-1)
    if not window:
        return profile - profile.mean(dim=-1, keepdim=True)
    half = window // 2
    if torch.onnx.is_in_onnx_export():
        # The same mean as a difference of running sums, a few operations per pixel, where
        # onnxruntime's sliding window adds up all ``window`` of them (bench.throughput: the
        # whole pipeline about 7 % slower). Training keeps the window: the shipped weights were
        # trained through it, and a rerun of the recipe gives them bit for bit.
        sums = torch.cumsum(F.pad(profile, (half + 1, half, 0, 0), mode="replicate"), dim=-1)
        return profile - (sums[..., window:] - sums[..., :-window]) / window
    padded = F.pad(profile, (half, half, 0, 0), mode="replicate")
    return profile - F.avg_pool2d(padded, (1, 2 * half + 1), stride=1)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # BatchNorm folds into the convolution at export, so it costs nothing at inference.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Generator(nn.Module):
    """U-Net: strided-conv encoder, bilinear-upsampling decoder, concatenated skips."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        ch = list(self.config.channels)
        self.size_multiple = 2 ** (len(ch) - 1)
        inputs = 2 if self.config.shading_prior else 1
        self.stem = nn.Sequential(_conv_block(inputs, ch[0]), _conv_block(ch[0], ch[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_block(ch[i], ch[i + 1], stride=2),
                          _conv_block(ch[i + 1], ch[i + 1]))
            for i in range(len(ch) - 1)
        )
        self.up = nn.ModuleList(
            nn.Sequential(_conv_block(ch[i + 1] + ch[i], ch[i]), _conv_block(ch[i], ch[i]))
            for i in reversed(range(len(ch) - 1))
        )
        self.head = nn.Conv2d(ch[0], 1, 1)
        # How much of the integrated shading goes straight to the output (learned).
        self.prior_gain = nn.Parameter(torch.zeros(())) if self.config.shading_prior else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prior = (shading_integral(image, self.config.prior_window)
                 if self.config.shading_prior else None)
        if prior is not None:
            image = torch.cat([image, prior * PRIOR_INPUT_SCALE], dim=1)
        skips = [self.stem(image)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            # A constant factor (the sizes are multiples of size_multiple): read from the
            # tensors' shapes, it made onnxruntime dequantise them whole, in 8 bits, to read it.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        height = self.head(x)
        return height if prior is None else height + self.prior_gain * prior


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN on (image, height) pairs: one real/fake logit per ~46 px patch."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(2, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2**i, 8)
            blocks += [nn.Conv2d(c, c_next, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(c_next), nn.LeakyReLU(0.2, True)]
            c = c_next
        blocks += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
        # Heights are compared by shape, not by offset: remove each tile's mean.
        height = height - height.mean(dim=(-2, -1), keepdim=True)
        return self.net(torch.cat([image, height], dim=1))


def conv_flops(model: nn.Module, height: int, width: int) -> float:
    """Floating-point operations (2 per multiply-add) of the convolutions for one input."""
    total = 0.0

    def hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2.0 * k * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, height, width))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A training checkpoint's state; ``ValueError`` with one sentence if it is none."""
    if str(path).lower().endswith(".onnx"):
        raise ValueError(f"{path} is an exported ONNX model, not a training checkpoint: give "
                         "a training run's last.pt instead")
    if not Path(path).is_file():
        raise ValueError(f"cannot read the checkpoint {path}: there is no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read the checkpoint {path}: it is no file that torch.save "
                         "wrote")
    with zipfile.ZipFile(path) as archive:  # torch.load does not check the parts' CRCs
        if damaged := archive.testzip():
            raise ValueError(f"cannot read the checkpoint {path}: its part {damaged} is "
                             "damaged (its checksum does not match)")
    try:
        # Tensors and plain values only: unpickling anything else can run code from the file.
        with torch.serialization.safe_globals(_OLDER_CHECKPOINTS_NUMPY):
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(_refusal(path)) from exc
    except (OSError, RuntimeError, EOFError, KeyError, IndexError, TypeError,
            ValueError) as exc:
        raise ValueError(f"cannot read the checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or "generator" not in state:
        raise ValueError(f"{path} is not a training checkpoint (no generator weights)")
    return state


def _older_checkpoints_numpy() -> list:
    """What checkpoints saved before they held plain values only carry: numpy's random state
    (a uint32 array) and a learning rate (a float64), under numpy 1's names and numpy 2's."""
    rebuild_array, rebuild_scalar = np.zeros(0).__reduce__()[0], np.float64(0).__reduce__()[0]
    allowed: list = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64))]
    for package in ("numpy.core", "numpy._core"):
        allowed += [(rebuild_array, f"{package}.multiarray._reconstruct"),
                    (rebuild_scalar, f"{package}.multiarray.scalar")]
    return allowed


_OLDER_CHECKPOINTS_NUMPY = _older_checkpoints_numpy()


def _refusal(path: str | Path) -> str:
    """Why a checkpoint that ``torch.load`` refused to unpickle was not loaded: one sentence."""
    allowed = {name for item in _OLDER_CHECKPOINTS_NUMPY if isinstance(item, tuple)
               for name in item[1:]} | {"numpy.ndarray", "numpy.dtype"}
    named = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
             if name not in allowed]
    if not named:
        return f"{path} holds numpy values that no checkpoint of this trainer holds: not loaded"
    return (f"{path} holds objects that are neither tensors nor plain values "
            f"({', '.join(named)}), which no training checkpoint does and which could run code "
            "when read: not loaded")
