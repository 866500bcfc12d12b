"""Tests for qsmprep.numerics.unwrap (physics.md §4 and §14 properties 6-8)."""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.numerics import fft
from qsmprep.numerics.unwrap import laplacian_unwrap, wrap_phase, wrapped_laplacian

TWO_PI = 2.0 * np.pi


def gaussian_bump(shape, voxel_size, amplitude, sigma_mm):
    """Smooth phase bump (rad) centred in the grid, ≈ 0 at the borders."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * v for n, v in zip(shape, voxel_size, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing='ij')
    return amplitude * np.exp(-(x**2 + y**2 + z**2) / (2.0 * sigma_mm**2))


def max_neighbour_difference(phi):
    return max(np.abs(np.diff(phi, axis=d)).max() for d in range(3))


def laplacian_7pt(u, voxel_size=(1.0, 1.0, 1.0)):
    """Independent 7-point Laplacian (periodic np.roll stencil)."""
    out = np.zeros_like(u)
    for d, v in enumerate(voxel_size):
        out += (np.roll(u, -1, d) - 2.0 * u + np.roll(u, 1, d)) / v**2
    return out


@pytest.fixture(scope='module')
def bump():
    """Property 6 phantom: 20 rad Gaussian bump, |∇φ| < 1.1 rad/voxel, ≈ 0 at the borders."""
    phi = gaussian_bump((80, 80, 80), (1.0, 1.0, 1.0), 20.0, 12.0)
    assert max_neighbour_difference(phi) < 1.1
    assert np.abs(phi[0]).max() < 0.1 and phi.max() > 19.9
    return phi


# --------------------------------------------------------------------------- wrap_phase
def test_wrap_phase_range_and_congruence():
    rng = np.random.default_rng(0)
    x = rng.uniform(-50.0, 50.0, 10_000)
    w = wrap_phase(x)
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    k = (x - w) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    small = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_array_equal(wrap_phase(small), small)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_wrap_phase_convention_at_the_boundaries(dtype):
    """[−π, π) in the array's own precision: +π → −π, −π stays, odd multiples → −π;
    idempotent (bit for bit) and exp(iφ) unchanged, also for large multiples of 2π."""
    pi = dtype(np.pi)
    eps = np.finfo(dtype).eps
    below, above = np.nextafter(pi, dtype(0)), np.nextafter(-pi, dtype(0))
    # exactly ±π (as represented in this dtype)
    assert wrap_phase(pi) == -pi and wrap_phase(pi).dtype == dtype
    assert wrap_phase(-pi) == -pi
    assert wrap_phase(below) == below and wrap_phase(above) == above  # inside: unchanged
    # odd multiples of π are the same angle as −π (to the rounding of the multiple)
    for m in (3, -3, 5, -5, 101, -101):
        x = dtype(m) * pi
        w = wrap_phase(x)
        assert -pi <= w < pi
        assert np.cos(np.float64(w) - np.float64(x)) == pytest.approx(1.0, abs=1e-6)
        assert abs(abs(w) - pi) <= 4 * abs(m) * eps * pi  # lands next to ±π
    # large multiples of 2π plus an offset: the offset comes back, up to |x|·eps
    phi0 = np.linspace(-3.1, 3.1, 9).astype(dtype)
    for k in (1, -1, 7, -7, 1000, -1000, 10**5, -(10**5)):
        x = (phi0.astype(np.float64) + 2 * np.pi * k).astype(dtype)
        w = wrap_phase(x)
        assert w.dtype == dtype and np.all(w >= -pi) and np.all(w < pi)
        tol = 8 * eps * (abs(k) * 2 * np.pi + np.pi)
        d = np.angle(np.exp(1j * (w.astype(np.float64) - phi0)))
        assert np.abs(d).max() <= tol
    # idempotent, bit for bit, on values around every boundary and far away
    rng = np.random.default_rng(3)
    x = np.concatenate([
        np.array([pi, -pi, below, above, 3 * pi, -3 * pi, 0, -0.0], dtype=dtype),
        rng.uniform(-1e4, 1e4, 5000).astype(dtype),
        (pi * rng.integers(-50, 50, 500)).astype(dtype),
        np.nextafter(pi * rng.integers(-50, 50, 500).astype(dtype), dtype(np.inf)),
    ])
    w = wrap_phase(x)
    assert np.all(w >= -pi) and np.all(w < pi)
    np.testing.assert_array_equal(wrap_phase(w), w)
    np.testing.assert_allclose(np.exp(1j * w.astype(np.float64)),
                               np.exp(1j * x.astype(np.float64)),
                               atol=8 * eps * (1e4 + np.pi))


def test_wrap_phase_agrees_with_numpy_angle_except_at_plus_pi():
    """np.angle gives (−π, π]; the two conventions differ only where np.angle returns +π."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-40, 40, 2000), [np.pi, -np.pi, 3 * np.pi]])
    a = np.angle(np.exp(1j * x))
    w = wrap_phase(a)
    np.testing.assert_array_equal(w[a < np.pi], a[a < np.pi])
    assert np.all(w[a == np.pi] == -np.pi)
    np.testing.assert_allclose(np.exp(1j * wrap_phase(x)), np.exp(1j * x), atol=1e-12)


def test_wrap_phase_dtype():
    x = np.linspace(-10, 10, 11, dtype=np.float32)
    assert wrap_phase(x).dtype == np.float32
    assert wrap_phase(np.arange(5)).dtype == np.float64
    with pytest.raises(TypeError):
        wrap_phase(np.array([1j]))


# --------------------------------------------------------------------------- property 6
def test_wrapped_difference_exact(bump):
    w = wrap_phase(bump)
    out = laplacian_unwrap(w, offset='mean')
    assert np.abs(out - (bump - bump.mean())).max() < 1e-9
    # default 'congruent' offset: the mean of the bump (≈ 1.1 rad) lies in [−π, π), so the
    # documented convention returns the true phase itself
    assert -np.pi <= bump.mean() < np.pi
    assert np.abs(laplacian_unwrap(w) - bump).max() < 1e-9
    # without padding (periodic solve on the array itself) as well
    out0 = laplacian_unwrap(w, padding=0, offset='mean')
    assert np.abs(out0 - (bump - bump.mean())).max() < 1e-9


def test_sincos_continuous_kernel_accurate(bump):
    w = wrap_phase(bump)
    out = laplacian_unwrap(w, method='sin-cos', offset='mean')
    err = np.abs(out - (bump - bump.mean())).max() / bump.max()
    assert err < 1e-4


def test_sincos_discrete_kernel_underestimates(bump):
    w = wrap_phase(bump)
    out = laplacian_unwrap(w, method='sin-cos', solver_kernel='discrete')
    ratio = np.ptp(out) / np.ptp(bump)
    assert 0.9 <= ratio <= 1.0


def test_wrapped_laplacian_matches_true_laplacian():
    # smooth periodic phase with neighbour differences < π: wrapped Laplacian is exact
    x, y, z = np.meshgrid(*[np.arange(16)] * 3, indexing='ij')
    phi = 6.0 * np.sin(TWO_PI * x / 16) + 3.0 * np.cos(TWO_PI * (y + 2 * z) / 16)
    assert max_neighbour_difference(phi) < np.pi
    vs = (1.0, 0.8, 1.5)
    lap = wrapped_laplacian(wrap_phase(phi), vs)
    np.testing.assert_allclose(lap, laplacian_7pt(phi, vs), atol=1e-12)
    assert abs(lap.sum()) < 1e-9  # telescoping: consistent periodic Poisson problem


# --------------------------------------------------------------------------- property 7
@pytest.mark.parametrize('padding', [0, 12])
def test_harmonic_ambiguity(bump, padding):
    n = bump.shape[0]
    ramp = 0.05 * np.arange(n)[:, None, None] * np.ones_like(bump)
    outs = {}
    for name, h in {'none': 0.0, 'const': 1.3, 'ramp': ramp}.items():
        outs[name] = laplacian_unwrap(wrap_phase(bump + h), padding=padding, offset='none')
    interior = (slice(2, -2),) * 3
    for name in ('const', 'ramp'):
        delta = outs[name] - outs['none']
        lap = laplacian_7pt(delta)[interior]
        assert np.abs(lap).max() < 1e-9, name
    # periodic solve, no padding: a constant is lost and nothing else
    if padding == 0:
        delta = outs['const'] - outs['none']
        assert np.ptp(delta) < 1e-9
    # a ramp is not recovered (documented): the difference is not the ramp
    delta = outs['ramp'] - outs['none']
    assert np.abs((delta - delta.mean()) - (ramp - ramp.mean())).max() > 0.5


@pytest.mark.parametrize('kernel', ['continuous', 'discrete'])
def test_harmonic_ambiguity_sincos(bump, kernel):
    w = wrap_phase(bump)
    a = laplacian_unwrap(w, method='sin-cos', solver_kernel=kernel, padding=0, offset='none')
    # a global constant is a global phase factor e^{ic}: invisible to Im(e^{-iφ}∇²e^{iφ})
    b = laplacian_unwrap(wrap_phase(bump + 1.3), method='sin-cos', solver_kernel=kernel,
                         padding=0, offset='none')
    assert np.abs(a - b).max() < 1e-9
    # a ramp changes the output by an (approximately, the estimator is nonlinear) harmonic
    # function; measured ≈ 1-4% of the bump's Laplacian
    ramp = 0.05 * np.arange(bump.shape[0])[:, None, None] * np.ones_like(bump)
    c = laplacian_unwrap(wrap_phase(bump + ramp), method='sin-cos', solver_kernel=kernel)
    a = laplacian_unwrap(w, method='sin-cos', solver_kernel=kernel)
    interior = (slice(3, -3),) * 3
    lap_delta = laplacian_7pt(c - a)[interior]
    lap_bump = laplacian_7pt(bump)[interior]
    assert np.abs(lap_delta).max() < 0.05 * np.abs(lap_bump).max()


def test_multiples_of_two_pi_are_invisible(bump):
    rng = np.random.default_rng(0)
    w = wrap_phase(bump)
    jumps = TWO_PI * rng.integers(-3, 4, bump.shape)
    a = laplacian_unwrap(w)
    b = laplacian_unwrap(w + jumps)
    assert np.abs(a - b).max() < 1e-9


# --------------------------------------------------------------------------- property 8
@pytest.mark.parametrize('method', ['wrapped-difference', 'sin-cos'])
def test_output_congruent_with_input(bump, method):
    w = wrap_phase(bump)
    out = laplacian_unwrap(w, method=method)
    well_sampled = np.ones(bump.shape, bool)  # |∇φ| < 1.1 rad/voxel everywhere
    assert np.abs(wrap_phase(out - w))[well_sampled].max() < 0.1


# --------------------------------------------------------------------------- grids, dtypes
def test_anisotropic_voxels():
    vs = (0.8, 1.0, 1.5)
    shape = (110, 88, 60)
    phi = gaussian_bump(shape, vs, 22.0, 13.0)
    assert max_neighbour_difference(phi) < np.pi
    w = wrap_phase(phi)
    out = laplacian_unwrap(w, voxel_size=vs, offset='mean')
    assert np.abs(out - (phi - phi.mean())).max() < 1e-9
    out = laplacian_unwrap(w, voxel_size=vs, method='sin-cos', offset='mean')
    assert np.abs(out - (phi - phi.mean())).max() / phi.max() < 1e-4


@pytest.mark.parametrize('method', ['wrapped-difference', 'sin-cos'])
def test_float32_stays_float32(method):
    phi = gaussian_bump((48, 48, 48), (1.0, 1.0, 1.0), 12.0, 7.0)
    w32 = wrap_phase(phi).astype(np.float32)
    out32 = laplacian_unwrap(w32, method=method)
    out64 = laplacian_unwrap(w32.astype(np.float64), method=method)
    assert out32.dtype == np.float32
    assert np.abs(out32 - out64).max() < 1e-3


def test_mask_zeroes_outside_and_ignores_outside_values():
    phi = gaussian_bump((48, 48, 48), (1.0, 1.0, 1.0), 12.0, 7.0)
    x, y, z = np.mgrid[:48, :48, :48] - 23.5
    mask = x**2 + y**2 + z**2 <= 18**2
    w = wrap_phase(phi)
    rng = np.random.default_rng(0)
    noisy = np.where(mask, w, rng.uniform(-np.pi, np.pi, w.shape))
    for method in ('wrapped-difference', 'sin-cos'):
        a = laplacian_unwrap(w, mask=mask, method=method)
        b = laplacian_unwrap(noisy, mask=mask, method=method)
        assert np.all(a[~mask] == 0.0)
        np.testing.assert_array_equal(a, b)
    # inside the mask the phase is still recovered up to a constant
    a = laplacian_unwrap(w, mask=mask, offset='mean')
    ref = phi[mask] - phi[mask].mean()
    assert np.abs(a[mask] - ref).max() < 0.2
    assert abs(a[mask].mean()) < 1e-9


def test_offset_none_and_mean():
    phi = gaussian_bump((32, 32, 32), (1.0, 1.0, 1.0), 10.0, 5.0)
    w = wrap_phase(phi)
    raw = laplacian_unwrap(w, offset='none')
    mean = laplacian_unwrap(w, offset='mean')
    assert abs(mean.mean()) < 1e-12
    assert np.ptp(raw - mean) < 1e-12
    # raw: zero mean over the padded grid = −(padding share) · …, generally not 0 here
    assert abs(raw.mean()) > 1e-3


def test_fft_counts():
    w = wrap_phase(gaussian_bump((20, 20, 20), (1.0, 1.0, 1.0), 8.0, 4.0))
    with fft.count_ffts() as n:
        laplacian_unwrap(w)
    assert n['total'] == 2 and n['rfftn'] == 1 and n['irfftn'] == 1
    with fft.count_ffts() as n:
        laplacian_unwrap(w, method='sin-cos')
    assert n['total'] == 4 and n['fftn'] == 1 and n['ifftn'] == 1


def test_padding_to_fast_shape_and_exact_crop():
    # an awkward size (prime) is padded internally; the output has the input shape
    phi = gaussian_bump((37, 41, 29), (1.0, 1.0, 1.0), 8.0, 5.0)
    out = laplacian_unwrap(wrap_phase(phi), padding=5, offset='mean')
    assert out.shape == phi.shape
    assert np.abs(out - (phi - phi.mean())).max() < 1e-9


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(('kwargs', 'exc', 'match'), [
    ({'method': 'quality-guided'}, ValueError, 'method'),
    ({'solver_kernel': 'spectral'}, ValueError, 'solver_kernel'),
    ({'solver_kernel': 'continuous'}, ValueError, 'discrete'),
    ({'offset': 'median'}, ValueError, 'offset'),
    ({'padding': -1}, ValueError, 'padding'),
    ({'padding': 2.5}, ValueError, 'padding'),
    ({'voxel_size': (1.0, 0.0, 1.0)}, ValueError, 'voxel_size'),
    ({'mask': np.ones((4, 4, 5), bool)}, ValueError, 'shape'),
    ({'mask': np.zeros((4, 4, 4), bool)}, ValueError, 'empty'),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        laplacian_unwrap(np.zeros((4, 4, 4)), **kwargs)


def test_bad_phase():
    with pytest.raises(ValueError, match='3-D'):
        laplacian_unwrap(np.zeros((4, 4)))
    with pytest.raises(TypeError, match='real'):
        laplacian_unwrap(np.zeros((4, 4, 4), complex))
    bad = np.zeros((4, 4, 4))
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        laplacian_unwrap(bad)
