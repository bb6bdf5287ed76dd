"""The generator's shading prior: the integral it adds is linear shape from shading."""

import numpy as np
import torch

from training.model import Generator, GeneratorConfig, shading_integral


def test_shading_integral_by_hand():
    row = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    np.testing.assert_allclose(shading_integral(row)[0, 0, 0].numpy(),
                               [-7 / 3, -1 / 3, 8 / 3], rtol=1e-6)


def test_shading_integral_recovers_a_profile_from_its_slopes():
    columns = np.arange(64)
    profile = 5 * np.sin(columns / 7.0) + 0.1 * columns  # pixel units
    slopes = np.diff(profile, prepend=profile[0])  # what a mean_ratio pixel measures
    image = torch.from_numpy(np.tile(slopes, (3, 1))[None, None])
    got = shading_integral(image)[0, 0].numpy()
    expected = profile - profile.mean()
    np.testing.assert_allclose(got, np.tile(expected, (3, 1)), atol=1e-9)


def test_a_prior_with_a_running_mean_does_not_depend_on_where_the_tile_starts():
    image = torch.randn(1, 1, 4, 300, dtype=torch.float64)
    whole = shading_integral(image, window=31)
    shifted = shading_integral(image[..., 40:], window=31)
    # Away from both tiles' edges (15 px), the same pixel gets the same prior.
    np.testing.assert_allclose(whole[..., 55:285].numpy(), shifted[..., 15:245].numpy(),
                               atol=1e-9)
    # The tile row's mean (window 0) shifts with the tile's start.
    assert not np.allclose(shading_integral(image)[..., 55:285].numpy(),
                           shading_integral(image[..., 40:])[..., 15:245].numpy(), atol=1e-3)


def test_generator_with_the_prior_starts_as_a_plain_unet_and_keeps_its_shape():
    torch.manual_seed(0)
    model = Generator(GeneratorConfig(channels=(4, 8, 16), shading_prior=True)).eval()
    assert model.prior_gain.item() == 0.0
    x = torch.randn(2, 1, 32, 48)
    assert model(x).shape == (2, 1, 32, 48)
    with torch.no_grad():
        model.prior_gain.fill_(1.0)
        base = model(x) - shading_integral(x)
        model.prior_gain.fill_(0.0)
        np.testing.assert_allclose(model(x).numpy(), base.numpy(), atol=1e-5)
