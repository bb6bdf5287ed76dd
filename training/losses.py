"""Losses on heights in pixel units, each tile relative to its own mean (the model contract).

The generator cannot know a tile's absolute offset, so every term compares mean-removed
heights. The gradient term trains slopes directly (what analysts derive from a DTM and what
shading actually tells); the histogram weighting gives rare tall or deep pixels more say.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    l1: float = 1.0
    gradient: float = 1.0
    scale_invariant: float = 0.0
    adversarial: float = 0.0
    histogram_bins: int = 0
    """0: plain mean; otherwise weight pixels by inverse frequency of their |height| bin."""
    distribution: float = 0.0
    """Weight of the distance between each tile's predicted and true height distributions."""
    distribution_window: int = 0
    """0: the distributions of whole tiles; else of each square window of so many pixels."""


def demean(height: torch.Tensor) -> torch.Tensor:
    """Heights relative to each tile's mean, as the contract's ``tile_mean`` says."""
    return height - height.mean(dim=(-2, -1), keepdim=True)


def gradients(height: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along x and y (height units per pixel = slope when in GSD)."""
    return height[..., :, 1:] - height[..., :, :-1], height[..., 1:, :] - height[..., :-1, :]


def histogram_weights(target: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-pixel weights, inverse to how common the pixel's |height| is within its tile.

    Weights are normalised to mean 1 per tile so they only shift emphasis, not scale.
    """
    magnitude = target.abs()
    top = magnitude.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    index = (magnitude / top * (bins - 1)).round().long()
    flat = index.flatten(1)
    counts = torch.zeros(flat.shape[0], bins, device=target.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    weights = (1.0 / counts.gather(1, flat).clamp_min(1.0)).view_as(target)
    return weights / weights.mean(dim=(-2, -1), keepdim=True)


def l1_height(pred: torch.Tensor, target: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    error = (demean(pred) - demean(target)).abs()
    return (error * weights).mean() if weights is not None else error.mean()


def l1_gradient(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    (px, py), (tx, ty) = gradients(pred), gradients(target)
    return 0.5 * (F.l1_loss(px, tx) + F.l1_loss(py, ty))


def scale_invariant(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 after the least-squares scale that best fits the prediction to the target.

    Rewards the right shape even when the overall relief is off (shading fixes slope only up
    to the unknown albedo and contrast).
    """
    p, t = demean(pred), demean(target)
    scale = (p * t).sum(dim=(-2, -1), keepdim=True) / (p * p).sum(
        dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (scale.detach() * p - t).abs().mean()


def height_distribution(pred: torch.Tensor, target: torch.Tensor,
                        window: int = 0) -> torch.Tensor:
    """Wasserstein-1 distance between each tile's (or ``window``'s) predicted and true height
    distributions.

    Sorting ignores where each height lies, so this term only asks for the right relief and
    skew (how far peaks rise and pits sink); L1 alone shrinks towards the mean wherever the
    image leaves the height uncertain.
    """
    if window:
        pred, target = _windows(pred, window), _windows(target, window)
    p, t = demean(pred).flatten(1), demean(target).flatten(1)
    return (p.sort(dim=1).values - t.sort(dim=1).values).abs().mean()


def _windows(height: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] as a batch of its non-overlapping ``size`` windows (ragged edges dropped)."""
    n, c, h, w = height.shape
    rows, cols = h // size, w // size
    tiles = height[..., :rows * size, :cols * size].reshape(n, c, rows, size, cols, size)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(n * rows * cols, c, size, size)


def generator_loss(pred: torch.Tensor, target: torch.Tensor, w: LossWeights,
                   fake_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Weighted terms and their total (``"total"``); ``fake_logits`` from the discriminator."""
    weights = histogram_weights(demean(target), w.histogram_bins) if w.histogram_bins else None
    terms = {"l1": l1_height(pred, target, weights), "gradient": l1_gradient(pred, target)}
    if w.scale_invariant:
        terms["scale_invariant"] = scale_invariant(pred, target)
    if w.distribution:
        terms["distribution"] = height_distribution(pred, target, w.distribution_window)
    if fake_logits is not None and w.adversarial:
        # Least-squares GAN: the generator wants its pairs judged real (1).
        terms["adversarial"] = F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    total = sum(getattr(w, name) * value for name, value in terms.items())
    terms["total"] = total
    return terms


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss for the discriminator (real -> 1, generated -> 0)."""
    return 0.5 * (F.mse_loss(real_logits, torch.ones_like(real_logits))
                  + F.mse_loss(fake_logits, torch.zeros_like(fake_logits)))
