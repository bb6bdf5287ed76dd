import numpy as np
import torch

from training.losses import (
    LossWeights,
    demean,
    generator_loss,
    height_distribution,
    histogram_weights,
    l1_gradient,
    l1_height,
    scale_invariant,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_l1_ignores_a_constant_offset_and_matches_hand_values():
    target = _t([[0.0, 2.0], [4.0, 6.0]])
    assert float(l1_height(target + 100.0, target)) == 0.0
    pred = _t([[1.0, 1.0], [1.0, 1.0]])  # flat: error = |target - mean| = 3, 1, 1, 3
    assert np.isclose(float(l1_height(pred, target)), 2.0)


def test_gradient_term_by_hand():
    target = _t([[0.0, 2.0], [4.0, 6.0]])  # dx = 2, 2; dy = 4, 4
    pred = torch.zeros_like(target)
    assert np.isclose(float(l1_gradient(pred, target)), 0.5 * (2.0 + 4.0))


def test_scale_invariant_forgives_scale_only():
    target = demean(_t([[0.0, 2.0], [4.0, 7.0]]))
    assert float(scale_invariant(3.0 * target, target)) < 1e-6
    assert float(scale_invariant(torch.flip(target, [-1]), target)) > 0.1


def test_height_distribution_ignores_where_heights_lie_not_their_spread():
    target = _t([[0.0, 2.0], [4.0, 10.0]])  # mean 4: sorted -4, -2, 0, 6
    shuffled = _t([[10.0, 0.0], [2.0, 4.0]]) + 50.0
    assert float(height_distribution(shuffled, target)) == 0.0
    # Half the relief: sorted -2, -1, 0, 3 -> mean |difference| = (2 + 1 + 0 + 3) / 4.
    assert np.isclose(float(height_distribution(0.5 * target, target)), 1.5)


def test_histogram_weights_favour_rare_heights():
    target = _t([[0.0, 0.0, 0.0, 9.0]])
    w = histogram_weights(target, bins=4)
    assert np.isclose(float(w.mean()), 1.0)
    assert float(w[..., 3]) > 2.5 * float(w[..., 0])


def test_total_is_the_weighted_sum():
    target = _t([[0.0, 2.0], [4.0, 6.0]])
    pred = torch.zeros_like(target)
    terms = generator_loss(pred, target, LossWeights(l1=2.0, gradient=0.5))
    assert np.isclose(float(terms["total"]), 2.0 * 2.0 + 0.5 * 3.0)


def test_height_distribution_over_windows_compares_each_windows_own_relief():
    # Two 2 x 2 windows side by side: the same relief in each, at heights 100 apart.
    target = _t([[0.0, 2.0, 100.0, 102.0], [4.0, 10.0, 104.0, 110.0]])
    swapped = _t([[100.0, 102.0, 0.0, 2.0], [104.0, 110.0, 4.0, 10.0]])
    assert float(height_distribution(swapped, target, window=2)) == 0.0
    # Per window the offset between windows is not relief; over the whole tile it is.
    level = _t([[0.0, 2.0, 0.0, 2.0], [4.0, 10.0, 4.0, 10.0]])
    assert float(height_distribution(level, target, window=2)) == 0.0
    # sorted, less their means: -4 -4 -2 -2 0 0 6 6 against -54 -52 -50 -44 46 48 50 56
    assert np.isclose(float(height_distribution(level, target)), 376 / 8)
    # Half the relief in each window: (2 + 1 + 0 + 3) / 4, as over one tile.
    assert np.isclose(float(height_distribution(0.5 * target, target, window=2)), 1.5)
