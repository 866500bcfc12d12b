"""Echo normalisation and combination (physics.md §6, property 9 of §14)."""

import numpy as np
import pytest

from qsmprep.numerics.constants import GAMMA_BAR, ppm_scale
from qsmprep.numerics.echoes import combine_echoes, inverse_variance_weights, normalize_echoes

B0 = 3.0
TE = np.array([0.004, 0.008, 0.012, 0.016, 0.020, 0.024, 0.028, 0.032])
T2STAR = 0.020  # s


def _to_ppm(omega):
    """Angular frequency (rad/s) → ppm, written out independently of the module."""
    return omega / (2.0 * np.pi * GAMMA_BAR * B0) * 1e6


def _signal(shape, rng, *, omega_max=200.0, phi0=None, sigma=0.0, magnitude=None):
    """φ_t = φ0 + ω·TE_t + noise σ/|S_t| on a (X, Y, Z, E) grid; returns φ, |S|, ω."""
    omega = rng.uniform(-omega_max, omega_max, size=shape)
    if magnitude is None:
        magnitude = np.broadcast_to(np.exp(-TE / T2STAR), (*shape, TE.size)).copy()
    phi = omega[..., None] * TE
    if phi0 is not None:
        phi = phi + phi0[..., None]
    if sigma:
        phi = phi + rng.normal(size=phi.shape) * sigma / magnitude
    return phi, magnitude, omega


def test_units_round_trip_and_sanity_value():
    rng = np.random.default_rng(0)
    phi = rng.uniform(-30, 30, size=(3, 4, 5, TE.size))
    field = normalize_echoes(phi, TE, B0)
    back = field * (2.0 * np.pi * GAMMA_BAR * B0 * TE * 1e-6)
    np.testing.assert_allclose(back, phi, rtol=1e-12, atol=0)
    # 1 ppm at 3 T and TE = 20 ms is 16.05 rad
    one = normalize_echoes(np.full((1, 1, 1, 1), 16.0504), [0.020], 3.0)
    assert abs(float(one[0, 0, 0, 0]) - 1.0) < 1e-4


@pytest.mark.parametrize('method', ['average', 'weighted', 'linear-fit'])
def test_noise_free_every_method_returns_omega(method):
    rng = np.random.default_rng(1)
    phi, mag, omega = _signal((4, 5, 6), rng)
    field = combine_echoes(phi, TE, B0, method=method, magnitude=mag)
    np.testing.assert_allclose(field, _to_ppm(omega), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('method', ['average', 'weighted', 'linear-fit'])
def test_noisy_every_method_unbiased_within_noise(method):
    rng = np.random.default_rng(2)
    shape = (20, 20, 20)
    phi, mag, omega = _signal(shape, rng, sigma=0.05)
    err = combine_echoes(phi, TE, B0, method=method, magnitude=mag) - _to_ppm(omega)
    # bias within 5 standard errors of the mean, and errors are at noise level
    assert abs(err.mean()) < 5 * err.std() / np.sqrt(err.size)
    sigma_ppm_first_echo = _to_ppm(0.05 / mag[0, 0, 0, 0] / TE[0])
    assert err.std() < sigma_ppm_first_echo


def test_inverse_variance_weights_have_lowest_variance():
    rng = np.random.default_rng(3)
    sigma = 0.1
    shape = (8, 8, 8)
    errs = {k: [] for k in ('average', 'weighted', 'linear-fit', 'weighted-fit')}
    for _ in range(100):  # 100 draws of an 8³ volume
        phi, mag, omega = _signal(shape, rng, sigma=sigma)
        truth = _to_ppm(omega)
        errs['average'].append(combine_echoes(phi, TE, B0) - truth)
        errs['weighted'].append(
            combine_echoes(phi, TE, B0, method='weighted', magnitude=mag) - truth)
        errs['linear-fit'].append(combine_echoes(phi, TE, B0, method='linear-fit') - truth)
        errs['weighted-fit'].append(
            combine_echoes(phi, TE, B0, method='linear-fit', magnitude=mag) - truth)
    var = {k: float(np.var(np.stack(v))) for k, v in errs.items()}
    assert var['weighted'] < var['average']
    assert var['weighted'] < var['linear-fit']  # unweighted fit with intercept
    assert var['weighted'] < var['weighted-fit']  # the intercept costs variance too
    assert var['weighted-fit'] < var['linear-fit']  # magnitude weights help the fit
    # Gauss–Markov variance σ² / ((2πγ̄B0)² Σ|S_t|² TE_t²), in ppm²
    mag = np.exp(-TE / T2STAR)
    expected = _to_ppm(1.0) ** 2 * sigma ** 2 / np.sum(mag ** 2 * TE ** 2)
    assert abs(var['weighted'] / expected - 1) < 0.05


def test_offset_biases_average_not_linear_fit():
    rng = np.random.default_rng(4)
    shape = (5, 6, 7)
    phi0 = rng.uniform(-1.0, 1.0, size=shape)
    phi, _, omega = _signal(shape, rng, phi0=phi0)
    field, intercept = combine_echoes(phi, TE, B0, method='linear-fit', return_intercept=True)
    np.testing.assert_allclose(field, _to_ppm(omega), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(intercept, phi0, rtol=1e-9, atol=1e-12)
    bias = combine_echoes(phi, TE, B0, method='average') - _to_ppm(omega)
    expected = np.mean(phi0[..., None] / TE, axis=-1) / (2 * np.pi * GAMMA_BAR * B0) * 1e6
    np.testing.assert_allclose(bias, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(bias).max() > 0.05  # ~0.1 ppm for a 1 rad offset: above tissue contrast


def test_weighted_linear_fit_ignores_zero_magnitude_echoes():
    rng = np.random.default_rng(5)
    phi, mag, omega = _signal((3, 3, 3), rng)
    phi[..., 0] += 5.0  # corrupt echo 1 ...
    mag[..., 0] = 0.0  # ... and give it zero weight
    phi0 = rng.uniform(-1, 1, size=(3, 3, 3))
    phi += phi0[..., None]
    field, intercept = combine_echoes(phi, TE, B0, method='linear-fit', magnitude=mag,
                                      return_intercept=True)
    np.testing.assert_allclose(field, _to_ppm(omega), rtol=1e-9)
    np.testing.assert_allclose(intercept, phi0, rtol=1e-9, atol=1e-12)
    # a voxel with a single usable echo cannot be fitted: 0
    mag[0, 0, 0, 1:] = 0.0
    mag[0, 0, 0, 3] = 1.0
    out = combine_echoes(phi, TE, B0, method='linear-fit', magnitude=mag)
    assert out[0, 0, 0] == 0.0


def test_inverse_variance_weights():
    rng = np.random.default_rng(6)
    mag = rng.uniform(0.1, 2.0, size=(4, 4, 4, TE.size))
    w = inverse_variance_weights(mag, TE)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-12)
    ratio = w / (mag ** 2 * TE ** 2)
    np.testing.assert_allclose(ratio, ratio[..., :1] * np.ones(TE.size), rtol=1e-12)
    mag[0, 0, 0] = 0.0
    assert np.all(inverse_variance_weights(mag, TE)[0, 0, 0] == 0.0)


def test_single_echo_and_mask_and_dtype():
    rng = np.random.default_rng(7)
    phi = rng.normal(size=(4, 4, 4, 1))
    mag = np.ones_like(phi)
    single = phi[..., 0] / ppm_scale(0.02, B0)
    for method in ('average', 'weighted'):
        np.testing.assert_allclose(
            combine_echoes(phi, [0.02], B0, method=method, magnitude=mag), single, rtol=1e-12)
    with pytest.raises(ValueError, match='at least 2 echoes'):
        combine_echoes(phi, [0.02], B0, method='linear-fit')
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    out = combine_echoes(phi, [0.02], B0, mask=mask)
    assert np.all(out[~mask] == 0) and np.all(out[mask] == single[mask])
    phi32 = rng.normal(size=(4, 4, 4, 3)).astype(np.float32)
    for method in ('average', 'weighted', 'linear-fit'):
        out = combine_echoes(phi32, TE[:3], B0, method=method, magnitude=np.ones_like(phi32))
        assert out.dtype == np.float32
        ref = combine_echoes(phi32.astype(np.float64), TE[:3], B0, method=method,
                             magnitude=np.ones(phi32.shape))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(('kwargs', 'error', 'match'), [
    ({'echo_times': TE[:3]}, ValueError, '8 echoes'),
    ({'echo_times': TE[::-1]}, ValueError, 'strictly increasing'),
    ({'echo_times': -TE}, ValueError, 'positive'),
    ({'echo_times': TE * 1000}, ValueError, 'milliseconds'),
    ({'field_strength': 0.0}, ValueError, 'field_strength'),
    ({'field_strength': 'x'}, TypeError, 'field_strength'),
    ({'method': 'median'}, ValueError, 'method must be one of'),
    ({'method': 'weighted'}, ValueError, 'magnitude'),
    ({'return_intercept': True}, ValueError, 'intercept'),
    ({'magnitude': np.ones((2, 2, 2, 3))}, ValueError, 'magnitude has shape'),
    ({'magnitude': -np.ones((2, 2, 2, 8))}, ValueError, 'non-negative'),
    ({'mask': np.ones((3, 3, 3))}, ValueError, 'mask has shape'),
    ({'weights': 'pixel'}, ValueError, "weights must be 'voxel' or 'echo'"),
    ({'unwrapped_phase': np.zeros((2, 2, 8))}, ValueError, '4-D'),
    ({'unwrapped_phase': np.full((2, 2, 2, 8), np.nan)}, ValueError, 'non-finite'),
])
def test_bad_inputs(kwargs, error, match):
    args = {'unwrapped_phase': np.zeros((2, 2, 2, 8)), 'echo_times': TE, 'field_strength': B0}
    for k in ('unwrapped_phase', 'echo_times', 'field_strength'):
        if k in kwargs:
            args[k] = kwargs.pop(k)
    with pytest.raises(error, match=match):
        combine_echoes(args['unwrapped_phase'], args['echo_times'], args['field_strength'],
                       **kwargs)


def test_normalize_bad_echo_count():
    with pytest.raises(ValueError, match='echo'):
        normalize_echoes(np.zeros((2, 2, 2, 3)), [0.01, 0.02], B0)


def _laplacian(f):
    """7-point Laplacian at interior points (exact for quadratic polynomials)."""
    out = -6.0 * f[1:-1, 1:-1, 1:-1]
    for ax in range(3):
        out = out + np.roll(f, 1, ax)[1:-1, 1:-1, 1:-1] + np.roll(f, -1, ax)[1:-1, 1:-1, 1:-1]
    return out


@pytest.mark.parametrize('method', ['weighted', 'linear-fit'])
def test_echo_weights_keep_per_echo_harmonic_offsets_harmonic(method):
    """Laplacian unwrapping leaves φ_t + h_t with a different harmonic h_t per echo.  With one
    weight per echo the combination error Σ c_t h_t is harmonic (∇² = 0: background removal
    takes it away); voxel-wise magnitude weights make it non-harmonic."""
    n = 16
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float) - n / 2] * 3, indexing='ij')
    rng = np.random.default_rng(5)
    harmonic = [x, y, z, x * y, y * z, x * z, x * x - y * y, y * y - z * z]
    h = np.stack([sum(rng.normal() * 0.05 * b for b in harmonic) for _ in TE], axis=-1)
    assert np.abs(_laplacian(h[..., 3])).max() < 1e-12  # the offsets are harmonic
    # tissue-like magnitude with a spatial T2* and proton-density pattern
    t2s = 0.02 + 0.01 * np.sin(x / 3.0) * np.cos(y / 4.0)
    mag = (1.0 + 0.3 * np.cos(z / 5.0))[..., None] * np.exp(-TE / t2s[..., None])
    omega = 50.0 * np.sin(x / 5.0) * np.cos(z / 6.0)
    phi = omega[..., None] * TE + h
    truth = _to_ppm(omega)
    lap = {}
    for weights in ('echo', 'voxel'):
        err = combine_echoes(phi, TE, B0, method=method, magnitude=mag, weights=weights) - truth
        lap[weights] = np.abs(_laplacian(err)).max()
        # without the offsets the result is exact either way
        exact = combine_echoes(omega[..., None] * TE, TE, B0, method=method, magnitude=mag,
                               weights=weights)
        np.testing.assert_allclose(exact, truth, rtol=1e-9, atol=1e-12)
    scale = np.abs(truth).max()
    assert lap['echo'] < 1e-10 * scale
    assert lap['voxel'] > 1e-4 * scale  # what voxel-wise weights would leave after V-SHARP


def test_echo_weights_are_the_rms_magnitude_over_the_mask():
    rng = np.random.default_rng(6)
    phi, _, _ = _signal((4, 4, 4), rng)
    mag = rng.uniform(0.1, 1.0, size=phi.shape)
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    rms = np.sqrt(np.mean(mag[mask] ** 2, axis=0))
    got = combine_echoes(phi, TE, B0, method='weighted', magnitude=mag, mask=mask,
                         weights='echo')
    want = combine_echoes(phi, TE, B0, method='weighted',
                          magnitude=np.broadcast_to(rms, phi.shape).copy(), mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
