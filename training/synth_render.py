"""Physically based rendering of a DEM into an 8-bit orbital image, with camera nuisances.

Conventions, shared with the plugin's engine and with ``gdaldem hillshade``: row 0 is north
(image up), column 0 is west; the sun azimuth is in degrees clockwise from north and names the
direction the light comes FROM; elevation is above the horizon (incidence = 90 - elevation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from training.synth_terrain import patch_mask, smooth_field

# JPEG's standard luminance quantisation table (ITU-T T.81, Annex K).
_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=np.float32)


def _unit(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector (east, north, up) toward a direction given by azimuth and elevation."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def surface_normals(dem: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Unit normals (east, north, up), shape (3, H, W). Rows run south, hence the minus sign."""
    d_row, d_col = np.gradient(dem.astype(np.float64), pixel_size_m)
    dz_east, dz_north = d_col, -d_row
    norm = np.sqrt(dz_east**2 + dz_north**2 + 1.0)
    return np.stack([-dz_east / norm, -dz_north / norm, 1.0 / norm])


def cos_incidence(dem: np.ndarray, pixel_size_m: float, sun_azimuth_deg: float,
                  sun_elevation_deg: float) -> np.ndarray:
    """Cosine of the local incidence angle (negative on slopes facing away from the sun)."""
    sun = _unit(sun_azimuth_deg, sun_elevation_deg)
    return np.tensordot(sun, surface_normals(dem, pixel_size_m), axes=1)


def cast_shadows(dem: np.ndarray, pixel_size_m: float, sun_azimuth_deg: float,
                 sun_elevation_deg: float) -> np.ndarray:
    """Fraction (0-1) of each pixel in cast shadow.

    The DEM is resampled on a grid whose rows run along the light; there a pixel at distance u
    is shadowed when some earlier u' has z(u') + u' t > z(u) + u t (t = rise of the ray per
    pixel), which a running maximum answers for all pixels at once: an exact ray march along
    the sun azimuth in O(N). Terrain beyond the patch casts nothing.
    """
    rows, cols = dem.shape
    rise = pixel_size_m * math.tan(math.radians(sun_elevation_deg))
    d_row, d_col = np.gradient(dem)
    if np.sqrt(d_row**2 + d_col**2).max() < rise:
        return np.zeros(dem.shape, np.float32)  # no slope steeper than the sun: no shadow
    az = math.radians(sun_azimuth_deg)
    travel = np.array([math.cos(az), -math.sin(az)])  # (row, col) step the light travels
    across = np.array([travel[1], -travel[0]])
    half = math.ceil(math.hypot(rows, cols) / 2) + 1
    centre = np.array([(rows - 1) / 2, (cols - 1) / 2])
    v, u = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    src = centre[:, None, None] + u * travel[:, None, None] + v * across[:, None, None]
    rotated = ndimage.map_coordinates(dem.astype(np.float64), src, order=1, mode="nearest")
    ray = rotated + (u + half) * rise
    outside = ((src[0] < -0.5) | (src[0] > rows - 0.5) | (src[1] < -0.5) | (src[1] > cols - 0.5))
    before = np.maximum.accumulate(np.where(outside, -np.inf, ray), axis=1)
    shade = np.zeros_like(ray)
    shade[:, 1:] = (before[:, :-1] > ray[:, 1:] + 1e-6 * rise).astype(np.float64)
    back = np.mgrid[0:rows, 0:cols].astype(np.float64) - centre[:, None, None]
    u_back = back[0] * travel[0] + back[1] * travel[1] + half
    v_back = back[0] * across[0] + back[1] * across[1] + half
    return ndimage.map_coordinates(shade, [v_back, u_back], order=1).astype(np.float32)


def lunar_lambert_l(phase_deg: float) -> float:
    """Limb-darkening weight L of the Lunar-Lambert law versus phase angle.

    A cubic fit to the lunar L(g) (near 1 at opposition, falling to ~0.3 at 90 deg); the
    caller jitters it, since martian soils fall between this and a pure Lambert surface.
    """
    g = phase_deg
    return float(np.clip(1.0 - 0.019 * g + 2.42e-4 * g**2 - 1.46e-6 * g**3, 0.0, 1.0))


def reflectance(mu0: np.ndarray, mu: np.ndarray, model: str, limb: float = 0.5) -> np.ndarray:
    """Lambert (mu0) or Lunar-Lambert (McEwen): 2 L mu0/(mu0 + mu) + (1 - L) mu0."""
    mu0 = np.maximum(mu0, 0.0)
    if model == "lambert":
        return mu0
    mu = np.maximum(mu, 1e-3)
    return 2.0 * limb * mu0 / (mu0 + mu) + (1.0 - limb) * mu0


def albedo_map(rng: np.random.Generator, dem: np.ndarray, photometry: float = 1.0) -> np.ndarray:
    """Normal albedo factor around 1: bright and dark units, dust, sand in lows, mottling.

    Albedo contrast between martian units is tens of percent (dark basaltic sand against
    bright dust); inside a unit it varies by a few percent. ``photometry`` scales every contrast.
    """
    shape = dem.shape
    albedo = np.ones(shape, np.float32)
    if rng.random() < 0.5:  # a second unit: dust-mantled against dust-free, sand on rock
        unit = patch_mask(rng, shape, rng.uniform(0.1, 0.6), softness=rng.uniform(0.3, 1.5))
        albedo *= 1.0 + rng.uniform(-0.25, 0.25) * photometry * unit
    mottle = smooth_field(rng, shape, 0.8, decimate=2).clip(-3, 3) / 3
    albedo *= 1.0 + rng.uniform(0.0, 0.08) * photometry * mottle
    relief = dem - ndimage.gaussian_filter(dem, 6.0)
    lows = np.tanh(relief / (relief.std() + 1e-6))
    # Dark sand in hollows, or bright dust.
    albedo *= 1.0 + rng.uniform(-0.15, 0.15) * photometry * lows
    speckle = rng.standard_normal(shape).astype(np.float32)
    albedo *= 1.0 + rng.uniform(0.0, 0.05) * photometry * ndimage.gaussian_filter(speckle, 0.7)
    return np.clip(albedo, 0.2, 2.0)


def _radiance(dem: np.ndarray, pixel_size_m: float, azimuth: float, elevation: float,
              rng: np.random.Generator, photometry: float) -> np.ndarray:
    """Direct sunlight (photometric law, cast shadows) plus diffuse skylight, times albedo."""
    normals = surface_normals(dem, pixel_size_m)
    view = _unit(rng.uniform(0, 360), 90.0 - rng.uniform(0.0, 15.0))  # near-nadir look
    mu0 = np.tensordot(_unit(azimuth, elevation), normals, axes=1)
    mu = np.tensordot(view, normals, axes=1)
    if rng.random() < 0.3:
        direct = reflectance(mu0, mu, "lambert")
    else:
        limb = lunar_lambert_l(90.0 - elevation) + rng.normal(0.0, 0.15 * photometry)
        direct = reflectance(mu0, mu, "lunar-lambert", float(np.clip(limb, 0.0, 1.0)))
    direct *= 1.0 - cast_shadows(dem, pixel_size_m, azimuth, elevation)
    # Share of skylight: dusty martian sky, tau ~0.3-1. The factor moves the upper bound only.
    sky = rng.uniform(0.03, float(np.clip(0.3 * photometry, 0.03, 0.9)))
    diffuse = (1.0 + normals[2]) / 2.0  # sky-view factor of a tilted facet
    light = (1.0 - sky) * direct + sky * diffuse * math.sin(math.radians(elevation))
    return light * albedo_map(rng, dem, photometry)


def jpeg_artefacts(image: np.ndarray, quality: int) -> np.ndarray:
    """Quantise 8x8 DCT blocks like a baseline JPEG of the given quality (luma only)."""
    rows, cols = image.shape
    pr, pc = -rows % 8, -cols % 8
    padded = np.pad(image.astype(np.float32) - 128.0, ((0, pr), (0, pc)), mode="edge")
    n = np.arange(8)
    basis = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    basis[0] /= np.sqrt(2)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255)
    blocks = padded.reshape(padded.shape[0] // 8, 8, padded.shape[1] // 8, 8).swapaxes(1, 2)
    coeffs = basis @ blocks @ basis.T
    restored = basis.T @ (np.round(coeffs / table) * table) @ basis
    out = restored.swapaxes(1, 2).reshape(padded.shape)[:rows, :cols] + 128.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _camera(radiance: np.ndarray, rng: np.random.Generator, photometry: float) -> np.ndarray:
    """Haze, optics (PSF), detector noise, stretch and gamma, 8-bit quantisation."""
    haze = rng.uniform(0.0, 0.35 * photometry)  # path radiance, a share of the scene's
    signal = radiance + haze * float(radiance.mean())
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.4, 1.3))
    scale = float(np.percentile(signal, 99.5)) or 1.0
    signal = signal / scale
    shot = rng.uniform(0.0, 0.0008)  # noise variance ~ a*S + b: photon and read noise
    read = rng.uniform(0.0, 0.008)
    signal = signal + rng.standard_normal(signal.shape) * np.sqrt(shot * np.maximum(signal, 0)
                                                                  + read**2)
    lo, hi = np.percentile(signal, [rng.uniform(0.0, 2.0), rng.uniform(98.0, 100.0)])
    gamma = rng.uniform(0.7**photometry, 1.4**photometry)
    stretched = np.clip((signal - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** gamma
    out_lo, out_hi = rng.uniform(0.0, 70.0), rng.uniform(150.0, 255.0)
    image = np.round(out_lo + stretched * (out_hi - out_lo)).astype(np.uint8)
    if rng.random() < 0.3:
        image = jpeg_artefacts(image, int(rng.integers(35, 95)))
    return image


def render(dem: np.ndarray, pixel_size_m: float, sun_azimuth_deg: float,
           sun_elevation_deg: float, rng: np.random.Generator,
           photometry: float = 1.0) -> np.ndarray:
    """Render ``dem`` (metres) into a uint8 image of the same shape.

    Photometry (Lambert or Lunar-Lambert with near-nadir emission), cast shadows, skylight,
    albedo units, haze, blur, noise, stretch, gamma and sometimes JPEG artefacts are all
    randomised through ``rng``; the sun geometry is the caller's. ``photometry`` scales the
    ranges of albedo contrast, limb-darkening jitter, skylight and haze by that factor and
    raises the gamma bounds to its power; at 1 the draws, and so the images, are the defaults'.
    """
    radiance = _radiance(dem, pixel_size_m, sun_azimuth_deg, sun_elevation_deg, rng, photometry)
    return _camera(radiance, rng, photometry)
