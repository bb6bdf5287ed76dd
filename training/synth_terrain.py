"""Procedural Mars-like terrain: heights built in pixel units, then scaled to metres.

Shapes are made in units of the pixel (heights and distances), so the family of slopes an image
shows does not depend on the pixel size: a scene at 0.25 m and one at 1 m look alike and differ
only by the factor applied at the end. See docs/synthetic-terrain.md for the physical choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Shape = tuple[int, int]

REPOSE_DEG = 33.0  # angle of repose of dry sand and talus on Mars (about 30-35 deg)
SATURATION = 1.54  # geometric saturation, N(>D) = 1.54 D^-2 per unit area (Gault 1970)


def _grid(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return rows, cols


def rms_slope(z: np.ndarray) -> float:
    """RMS of the gradient magnitude, in height units per pixel."""
    gy, gx = np.gradient(z)
    return float(np.sqrt(np.mean(gx * gx + gy * gy))) or 1.0


def fractal_surface(rng: np.random.Generator, shape: Shape, hurst: float,
                    anisotropy: float = 1.0, angle: float = 0.0,
                    min_wavelength: float = 2.0, oversample: int = 2) -> np.ndarray:
    """Gaussian self-affine surface, zero mean and unit RMS slope.

    Its 2-D power spectrum falls as k^-(2+2H), so every 1-D profile across it falls as
    k^-(1+2H): slopes of -2 to -2.8 for H = 0.5-0.9, the range measured on Mars from
    metre to kilometre baselines. It is drawn on a grid ``oversample`` times larger and
    cropped, so it is not periodic and carries wavelengths longer than the patch.
    ``anisotropy`` > 1 stretches it along ``angle`` (radians, from the column axis), for
    wind- or slope-aligned textures.
    """
    big = (oversample * shape[0], oversample * shape[1])
    fy = np.fft.fftfreq(big[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(big[1]).astype(np.float32)[None, :]
    u = fx * math.cos(angle) + fy * math.sin(angle)
    v = -fx * math.sin(angle) + fy * math.cos(angle)
    k2 = (u / anisotropy) ** 2 + v**2
    k2[0, 0] = np.inf
    amplitude = k2 ** np.float32(-(1.0 + hurst) / 2)
    amplitude[fx**2 + fy**2 > min_wavelength**-2] = 0.0
    noise = rng.standard_normal((2, *amplitude.shape), dtype=np.float32)
    spectrum = (noise[0] + 1j * noise[1]) * amplitude
    field = np.fft.irfft2(spectrum, s=big)[: shape[0], : shape[1]].astype(np.float32)
    field -= field.mean()
    return field / np.float32(rms_slope(field))


def smooth_field(rng: np.random.Generator, shape: Shape, hurst: float = 0.9,
                 anisotropy: float = 1.0, angle: float = 0.0, decimate: int = 4) -> np.ndarray:
    """A long-wavelength fractal (zero mean, unit std) for masks and warps, drawn coarse and
    interpolated: it has no power at the pixel scale anyway."""
    small = (max(shape[0] // decimate, 8), max(shape[1] // decimate, 8))
    coarse = fractal_surface(rng, small, hurst, anisotropy, angle, min_wavelength=2.0)
    field = ndimage.zoom(coarse, (shape[0] / small[0], shape[1] / small[1]), order=1,
                         grid_mode=True, mode="nearest")
    return _standardise(field)


def _standardise(z: np.ndarray) -> np.ndarray:
    return (z - z.mean()) / (z.std() or 1.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------------------------
# Craters
# ---------------------------------------------------------------------------------------------

def crater_profile(r: np.ndarray, depth: float, rim: float, floor_fill: float = 0.0
                   ) -> np.ndarray:
    """Height of a simple crater relative to the surface it formed on, r in crater radii.

    Inside: a parabolic bowl from the floor (``depth`` below the rim crest) up to the rim,
    ``rim`` above the old surface. Outside: ejecta thinning as r^-3, the decay measured around
    lunar and martian simple craters, cut off at 4 radii. ``floor_fill`` (0-1 of the depth)
    is a flat infill of the floor by sediment or dust.
    """
    inside = (rim - depth) + depth * np.minimum(r, 1.0) ** 2
    if floor_fill > 0:
        inside = np.maximum(inside, rim - depth * (1.0 - floor_fill))
    cut = 4.0 ** -3
    outside = rim * np.clip((np.maximum(r, 1.0) ** -3 - cut) / (1.0 - cut), 0.0, None)
    return np.where(r < 1.0, inside, outside)


def crater_diameters(rng: np.random.Generator, area_px: float, density: float,
                     d_min: float, d_max: float, limit: int = 1500) -> np.ndarray:
    """Diameters (px) drawn from a cumulative power law N(>D) ∝ D^-2.

    ``density`` is the fraction of geometric saturation; small fresh-crater populations on
    Mars sit near a -2 cumulative slope in equilibrium, from young plains (~0.1 %) to heavily
    cratered surfaces (~10 %).
    """
    expected = density * SATURATION * area_px * (d_min**-2 - d_max**-2)
    count = min(int(rng.poisson(expected)), limit)
    u = rng.random(count)
    tail = (d_min / d_max) ** 2
    return np.sort(d_min * (1.0 - u * (1.0 - tail)) ** -0.5)[::-1]


def stamp_crater(z: np.ndarray, row: float, col: float, diameter: float, depth_ratio: float,
                 rim_ratio: float, floor_fill: float = 0.0) -> None:
    """Add one crater in place. Inside the rim the old surface is mostly replaced by the bowl
    (the excavated cavity), keeping a fraction of its relief so the floor follows any slope."""
    radius = diameter / 2.0
    reach = 4.0 * radius + 1
    r0, r1 = max(int(row - reach), 0), min(int(row + reach) + 2, z.shape[0])
    c0, c1 = max(int(col - reach), 0), min(int(col + reach) + 2, z.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.ogrid[r0:r1, c0:c1]
    r = np.hypot(rr - row, cc - col) / radius
    window = z[r0:r1, c0:c1]
    profile = crater_profile(r, depth_ratio * diameter, rim_ratio * diameter, floor_fill)
    inside = r < 1.0
    if inside.any():
        level = float(window[inside].mean())
        blend = _smoothstep((1.0 - r) * 4.0) * 0.7
        window += blend * (level - window)
    window += profile.astype(z.dtype)


def stamp_small_craters(z: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                        diameters: np.ndarray, depth_ratios: np.ndarray,
                        rim_ratios: np.ndarray) -> None:
    """Add many small craters at once (additive, no cavity blending): one window per crater,
    summed into ``z`` with a single bincount."""
    if diameters.size == 0:
        return
    half = math.ceil(2.0 * diameters.max()) + 1  # the ejecta reach, 4 radii
    offsets = np.arange(-half, half + 1)
    r_idx = np.floor(rows).astype(np.int64)[:, None, None] + offsets[None, :, None]
    c_idx = np.floor(cols).astype(np.int64)[:, None, None] + offsets[None, None, :]
    radius = (diameters / 2.0)[:, None, None]
    r = np.hypot(r_idx - rows[:, None, None], c_idx - cols[:, None, None]) / radius
    profile = crater_profile(r, (depth_ratios * diameters)[:, None, None],
                             (rim_ratios * diameters)[:, None, None])
    r_idx, c_idx = np.broadcast_arrays(r_idx, c_idx)
    keep = (r_idx >= 0) & (r_idx < z.shape[0]) & (c_idx >= 0) & (c_idx < z.shape[1])
    flat = r_idx[keep] * z.shape[1] + c_idx[keep]
    z += np.bincount(flat, profile[keep], minlength=z.size).reshape(z.shape).astype(z.dtype)


def add_craters(rng: np.random.Generator, z: np.ndarray, density: float, epochs: int,
                diffusion: float) -> None:
    """Crater population in ``epochs`` generations, oldest first.

    After each generation the whole surface is diffused (hillslope creep: a Gaussian of
    sigma = sqrt(2 kappa t)), so older craters are softer and shallower; diffusion acts on
    a crater over a time proportional to D^2, so small old craters vanish first, as on Mars.
    """
    pad = 0.25
    rows, cols = z.shape
    area = rows * cols * (1 + 2 * pad) ** 2
    for epoch in range(epochs):
        fresh = epoch == epochs - 1
        d = crater_diameters(rng, area / epochs, density, 3.0, 1.2 * max(rows, cols))
        ratio = rng.uniform(0.17, 0.22, d.size)  # fresh simple craters: d/D about 0.2
        rim = ratio * rng.uniform(0.18, 0.25, d.size)  # rim height about 0.04 D
        fill = np.zeros(d.size) if fresh else rng.uniform(0.0, 0.5, d.size) * rng.random(d.size)
        at_row = rng.uniform(-pad, 1 + pad, d.size) * rows
        at_col = rng.uniform(-pad, 1 + pad, d.size) * cols
        big = d >= 8.0
        for i in np.flatnonzero(big):
            stamp_crater(z, at_row[i], at_col[i], d[i], ratio[i], rim[i], fill[i])
        small = ~big
        stamp_small_craters(z, at_row[small], at_col[small], d[small], ratio[small], rim[small])
        if not fresh:
            z[:] = ndimage.gaussian_filter(z, diffusion * (epochs - epoch) / epochs)


# ---------------------------------------------------------------------------------------------
# Aeolian, layered, fluvial and mass-wasting forms
# ---------------------------------------------------------------------------------------------

def dune_field(rng: np.random.Generator, shape: Shape, wavelength: float, lee_fraction: float,
               lee_slope_deg: float = REPOSE_DEG) -> np.ndarray:
    """Transverse dunes: a sawtooth across the wind, gentle stoss and steep lee.

    The lee (slip face) stands at ``lee_slope_deg`` over ``lee_fraction`` of the wavelength;
    the stoss side takes the rest, so with lee_fraction 0.2-0.35 it slopes at 5-15 deg, as on
    martian barchanoid and transverse dunes. Sinuous crests and defects come from warping the
    phase with a fractal field.
    """
    angle = rng.uniform(0.0, 2 * math.pi)
    rows, cols = _grid(shape)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    warp = smooth_field(rng, shape) * rng.uniform(0.1, 0.35)
    phase = np.mod(along / wavelength + warp, 1.0)
    height = math.tan(math.radians(lee_slope_deg)) * lee_fraction * wavelength
    stoss = 1.0 - lee_fraction
    profile = np.where(phase < stoss, phase / stoss, (1.0 - phase) / lee_fraction)
    crest = ndimage.gaussian_filter(profile * height, 0.6)
    return crest.astype(np.float32)


def patch_mask(rng: np.random.Generator, shape: Shape, cover: float,
               bias: np.ndarray | None = None, softness: float = 0.3) -> np.ndarray:
    """Smooth 0-1 mask covering about ``cover`` of the area; ``bias`` favours where it grows;
    ``softness`` widens the edges (in standard deviations of the underlying field)."""
    field = smooth_field(rng, shape)
    if bias is not None:
        field = field + bias
    threshold = np.quantile(field, 1.0 - cover)
    return _smoothstep((field - threshold) / (field.std() * softness + 1e-6)).astype(np.float32)


def eroded_surface(rng: np.random.Generator, shape: Shape, hurst: float, style: str
                   ) -> np.ndarray:
    """Base relief, unit RMS slope. ``gaussian`` is the plain self-affine surface; ``ridged``
    folds it into sharp crests and rounded hollows (bedrock spurs and ravines); ``billowy``
    into rounded knobs and sharp hollows (mantled, pitted terrain). Real topography is not
    Gaussian: crests and valleys differ, and these give the model both kinds."""
    base = fractal_surface(rng, shape, hurst)
    if style == "gaussian":
        return base
    folded = np.abs(np.tanh(_standardise(base)))
    z = -folded if style == "ridged" else folded
    z = z + 0.3 * _standardise(base)  # keep part of the long wavelengths
    return (z / rms_slope(z)).astype(np.float32)


def boulders(rng: np.random.Generator, shape: Shape, density: float) -> np.ndarray:
    """Scattered boulders, 1-3 px high knobs: HiRISE resolves metre-size blocks, and their
    bright sunlit sides and shadows are a large part of rocky texture."""
    count = rng.poisson(density * shape[0] * shape[1])
    points = np.zeros(shape, np.float32)
    rows = rng.integers(0, shape[0], count)
    cols = rng.integers(0, shape[1], count)
    np.add.at(points, (rows, cols), rng.uniform(1.0, 3.0, count).astype(np.float32))
    return ndimage.gaussian_filter(points, 0.8) * (2 * math.pi * 0.8**2)


def ridged(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Yardang / ridge texture: sharp-crested ridges elongated along the wind (unit RMS slope)."""
    base = _standardise(fractal_surface(rng, shape, 0.8, anisotropy=rng.uniform(3, 8),
                                        angle=rng.uniform(0, math.pi), min_wavelength=3.0))
    ridges = (1.0 - np.abs(np.tanh(base))) ** 2
    return (ridges / rms_slope(ridges)).astype(np.float32)


def tilted_plane(rng: np.random.Generator, shape: Shape, slope: float) -> np.ndarray:
    """A regional slope (crater wall, scarp flank) at ``slope`` px/px toward a random azimuth."""
    angle = rng.uniform(0.0, 2 * math.pi)
    rows, cols = _grid(shape)
    return (slope * (cols * math.cos(angle) + rows * math.sin(angle))).astype(np.float32)


def terraces(z: np.ndarray, rng: np.random.Generator, thickness: float,
             riser: float) -> np.ndarray:
    """Layered deposits: alternating resistant and weak beds turn a slope into a staircase.

    Bed thicknesses vary randomly around ``thickness`` (px); each bed has a flat bench and a
    steep riser taking ``riser`` of its height range, the form of eroded layered sediments.
    """
    lo, hi = float(z.min()), float(z.max())
    count = int((hi - lo) / thickness) + 2
    tops = lo + np.concatenate([[0.0], np.cumsum(rng.uniform(0.5, 1.5, count) * thickness)])
    index = np.interp(z, tops, np.arange(tops.size))
    whole = np.floor(index)
    step = np.clip((index - whole - (1.0 - riser)) / riser, 0.0, 1.0)
    return np.interp(whole + _smoothstep(step), np.arange(tops.size), tops).astype(np.float32)


def gullies(rng: np.random.Generator, shape: Shape, spacing: float, depth: float
            ) -> tuple[np.ndarray, float]:
    """Parallel drainage cut downslope: V-shaped valleys, deepening downhill, with tributaries.

    Returns the (negative) incision in px and the downhill direction (radians from the column
    axis), so the caller can add a regional slope falling the same way.
    """
    angle = rng.uniform(0.0, 2 * math.pi)
    rows, cols = _grid(shape)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    across = -cols * math.sin(angle) + rows * math.cos(angle)
    span = float(along.max() - along.min()) or 1.0
    downhill = 0.3 + 0.7 * _smoothstep((along - along.min()) / span * 1.5)
    warp = smooth_field(rng, shape, anisotropy=4.0, angle=angle) * spacing * 0.4
    cut = np.zeros(shape, np.float32)
    for scale, weight in ((1.0, 1.0), (0.4, 0.35)):
        phase = np.mod((across + warp * scale) / (spacing * scale), 1.0)
        v_shape = 1.0 - 2.0 * np.minimum(phase, 1.0 - phase)  # 1 on the thalweg
        cut -= weight * depth * scale * v_shape**1.5
    return (ndimage.gaussian_filter(cut * downhill, 0.7), angle)


def thermal_relax(z: np.ndarray, max_slope_deg: float, iterations: int = 20) -> np.ndarray:
    """Talus creep: material moves down wherever a slope exceeds ``max_slope_deg``.

    Loose slopes on Mars stand at or below the angle of repose; only bedrock cliffs stand
    steeper, so capping slopes keeps the family within what HiRISE DTMs show.
    """
    # Per axis, so a diagonal slope may reach sqrt(2) times the axis limit: aim between.
    limit = math.tan(math.radians(max_slope_deg)) * 0.8
    z = z.copy()
    for _ in range(iterations):
        for view in (z, z.T):
            diff = view[1:] - view[:-1]
            excess = (diff - np.clip(diff, -limit, limit)) * 0.4
            view[:-1] += excess  # the lower cell of each pair gains
            view[1:] -= excess
    return z


# ---------------------------------------------------------------------------------------------
# The mixture
# ---------------------------------------------------------------------------------------------

@dataclass
class Recipe:
    """What goes into one scene. Lengths and heights in pixels, slopes in px/px; 0 = absent."""

    hurst: float = 0.7
    style: str = "gaussian"
    roughness: float = 0.1
    regional_slope: float = 0.0
    relief_slope: float = 0.0
    mesa_height: float = 0.0
    layer_thickness: float = 0.0
    layer_riser: float = 0.3
    gully_spacing: float = 0.0
    crater_density: float = 0.0
    crater_epochs: int = 3
    diffusion: float = 2.0
    ridge_slope: float = 0.0
    dune_wavelength: float = 0.0
    dune_lee_fraction: float = 0.25
    dune_cover: float = 0.5
    fine_roughness: float = 0.03
    boulder_density: float = 0.0
    max_slope_deg: float = 38.0


def random_recipe(rng: np.random.Generator, size: int) -> Recipe:
    """A broad mixture: each landform is present in a share of the scenes, with varied scales."""
    def maybe(p: float, value: float) -> float:
        return value if rng.random() < p else 0.0

    return Recipe(
        hurst=rng.uniform(0.5, 0.9),
        style=str(rng.choice(["gaussian", "ridged", "billowy"], p=[0.4, 0.4, 0.2])),
        roughness=math.tan(math.radians(rng.uniform(1.0, 12.0))),
        regional_slope=maybe(0.5, math.tan(math.radians(rng.uniform(2.0, 20.0)))),
        relief_slope=maybe(0.6, math.tan(math.radians(rng.uniform(3.0, 15.0)))),
        mesa_height=maybe(0.2, rng.uniform(0.02, 0.08) * size),
        layer_thickness=maybe(0.25, rng.uniform(2.0, 12.0)),
        layer_riser=rng.uniform(0.25, 0.6),
        gully_spacing=maybe(0.25, rng.uniform(8.0, 40.0)),
        crater_density=maybe(0.75, 10 ** rng.uniform(-3.0, -1.0)),
        crater_epochs=int(rng.integers(1, 5)),
        diffusion=rng.uniform(0.5, 4.0),
        ridge_slope=maybe(0.15, math.tan(math.radians(rng.uniform(3.0, 15.0)))),
        dune_wavelength=maybe(0.25, rng.uniform(8.0, 60.0)),
        dune_lee_fraction=rng.uniform(0.15, 0.5),
        dune_cover=rng.uniform(0.2, 1.0),
        fine_roughness=math.tan(math.radians(rng.uniform(0.3, 4.0))),
        boulder_density=maybe(0.3, 10 ** rng.uniform(-3.5, -2.0)),
        max_slope_deg=rng.uniform(34.0, 45.0),
    )


def build_terrain(rng: np.random.Generator, shape: Shape, recipe: Recipe) -> np.ndarray:
    """Heights in pixel units, older landforms first so younger ones sit on top of them."""
    z = eroded_surface(rng, shape, recipe.hurst, recipe.style) * recipe.roughness
    if recipe.regional_slope:
        z += tilted_plane(rng, shape, recipe.regional_slope)
    if recipe.relief_slope:  # hills, hollows and wall curvature wider than the patch
        hills = smooth_field(rng, shape, 0.9, decimate=8)
        z += hills * (recipe.relief_slope / rms_slope(hills))
    if recipe.mesa_height:
        z += patch_mask(rng, shape, rng.uniform(0.3, 0.7), softness=1.2) * recipe.mesa_height
    if recipe.layer_thickness:
        z = terraces(z, rng, recipe.layer_thickness, recipe.layer_riser)
    if recipe.gully_spacing:
        cut, angle = gullies(rng, shape, recipe.gully_spacing, recipe.gully_spacing * 0.3)
        rows, cols = _grid(shape)
        fall = math.tan(math.radians(rng.uniform(8.0, 25.0)))
        z += cut - fall * (cols * math.cos(angle) + rows * math.sin(angle))
    if recipe.crater_density:
        add_craters(rng, z, recipe.crater_density, recipe.crater_epochs, recipe.diffusion)
    if recipe.ridge_slope:
        z += ridged(rng, shape) * recipe.ridge_slope
    if recipe.dune_wavelength and recipe.regional_slope < 0.15:  # sand does not rest on walls
        lows = -_standardise(ndimage.gaussian_filter(z, 8.0))  # sand gathers in lows
        mask = patch_mask(rng, shape, recipe.dune_cover, bias=lows)
        z += mask * dune_field(rng, shape, recipe.dune_wavelength, recipe.dune_lee_fraction)
    fine = fractal_surface(rng, shape, 0.5, min_wavelength=2.5, oversample=1)
    z += fine * recipe.fine_roughness
    if recipe.boulder_density:
        z += boulders(rng, shape, recipe.boulder_density)
    return thermal_relax(z, recipe.max_slope_deg)
