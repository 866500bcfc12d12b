"""Dipole kernel and forward models against analytic truths (physics §14.1-5).

The B0 direction from affines and transforms: tests/numerics/test_geometry.py.
"""

import numpy as np
import pytest

from qsmprep.numerics import fft
from qsmprep.numerics.constants import GAMMA_BAR, ppm_to_rad, rad_to_hz, rad_to_ppm
from qsmprep.numerics.dipole import dipole_kernel, nyquist_mask
from qsmprep.numerics.forward import (
    apparent_susceptibility,
    dipole_forward,
    rotate_tensor,
    tensor_forward,
    tensor_to_matrix,
)

OBLIQUE = np.array([np.sin(np.deg2rad(23)), 0.0, np.cos(np.deg2rad(23))])


def _rot(axis, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    if axis == 'x':
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 'y':
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# --- units -------------------------------------------------------------------------------

def test_units_round_trip_and_sanity_value():
    rng = np.random.default_rng(0)
    phi = rng.uniform(-50, 50, 1000)
    back = ppm_to_rad(rad_to_ppm(phi, 0.017, 2.89), 0.017, 2.89)
    np.testing.assert_allclose(back, phi, rtol=1e-12)
    # 1 ppm at 3 T, TE 20 ms = 2π·42.577e6·3·0.02·1e-6 rad
    assert ppm_to_rad(1.0, 0.020, 3.0) == pytest.approx(16.05, abs=0.005)
    assert ppm_to_rad(1.0, 0.020, 3.0) == pytest.approx(2 * np.pi * GAMMA_BAR * 3 * 0.02 * 1e-6)
    assert rad_to_hz(ppm_to_rad(1.0, 0.02, 3.0), 0.02) == pytest.approx(127.73, abs=0.01)


def test_units_reject_bad_parameters():
    with pytest.raises(ValueError, match='echo_time must all be positive'):
        rad_to_ppm(1.0, -0.01, 3.0)
    with pytest.raises(ValueError, match='field_strength must be positive'):
        rad_to_ppm(1.0, 0.01, 0.0)


# --- kernel ------------------------------------------------------------------------------

@pytest.mark.parametrize('nyquist', ['symmetrize', 'zero', 'none'])
def test_kernel_range_dc_and_sign_symmetry(nyquist):
    shape, vs = (16, 18, 20), (1.0, 1.2, 0.9)
    D = dipole_kernel(shape, vs, OBLIQUE, nyquist=nyquist)
    assert D[0, 0, 0] == 0.0
    assert D.min() >= -2 / 3 - 1e-12 and D.max() <= 1 / 3 + 1e-12
    np.testing.assert_array_equal(D, dipole_kernel(shape, vs, -OBLIQUE, nyquist=nyquist))
    # the relative sign of the components matters
    flipped = OBLIQUE * [-1, 1, 1]
    assert not np.allclose(D, dipole_kernel(shape, vs, flipped, nyquist=nyquist))


def test_kernel_axial_symmetric_under_kx_ky_swap():
    D = dipole_kernel((16, 16, 12), (0.8, 0.8, 2.0), (0, 0, 1), rfft=False)
    np.testing.assert_allclose(D, D.transpose(1, 0, 2), atol=1e-15)


def test_kernel_matches_definition_off_nyquist():
    shape, vs = (12, 10, 8), (1.0, 2.0, 0.5)
    D = dipole_kernel(shape, vs, OBLIQUE, rfft=False, nyquist='symmetrize')
    k = np.meshgrid(*[np.fft.fftfreq(n, v) for n, v in zip(shape, vs)], indexing='ij')
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    with np.errstate(invalid='ignore', divide='ignore'):
        ref = 1 / 3 - (k[0] * OBLIQUE[0] + k[1] * OBLIQUE[1] + k[2] * OBLIQUE[2]) ** 2 / k2
    ref[0, 0, 0] = 0
    off = ~nyquist_mask(shape, rfft=False)
    np.testing.assert_allclose(D[off], ref[off], atol=1e-14)


def test_anisotropic_voxels_match_isotropic_grid_at_same_k():
    """A 2 mm grid of N voxels samples the same k values as a 1 mm grid of 2N voxels."""
    b = OBLIQUE
    coarse = dipole_kernel((8, 8, 8), (2.0, 1.0, 1.0), b, rfft=False, nyquist='none')
    fine = dipole_kernel((16, 8, 8), (1.0, 1.0, 1.0), b, rfft=False, nyquist='none')
    # coarse kx = m/(8·2) = fine kx = m/16 for |m| < 4
    for m in (0, 1, 2, 3, -1, -2, -3):
        np.testing.assert_allclose(coarse[m], fine[m], atol=1e-15)


@pytest.mark.parametrize('nyquist', ['symmetrize', 'zero'])
def test_hermitian_consistency_oblique_even_grid(nyquist):
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((16, 20, 24))
    D = dipole_kernel(chi.shape, 1.0, OBLIQUE, rfft=False, nyquist=nyquist)
    f = np.fft.ifftn(D * np.fft.fftn(chi))
    assert np.abs(f.imag).max() <= 1e-12 * np.abs(f.real).max()
    # and the rfft path used by qsmprep gives the same real field
    np.testing.assert_allclose(
        dipole_forward(chi, 1.0, OBLIQUE, nyquist=nyquist), f.real, atol=1e-12)


def test_raw_kernel_is_not_hermitian_on_even_grid():
    """The pitfall the symmetrisation fixes (guards against removing it unknowingly)."""
    rng = np.random.default_rng(1)
    chi = rng.standard_normal((16, 16, 16))
    D = dipole_kernel(chi.shape, 1.0, OBLIQUE, rfft=False, nyquist='none')
    f = np.fft.ifftn(D * np.fft.fftn(chi))
    assert np.abs(f.imag).max() > 1e-3 * np.abs(f.real).max()


def test_kernel_rejects_bad_input():
    with pytest.raises(ValueError, match='unit vector'):
        dipole_kernel((8, 8, 8), 1.0, (0, 0, 2))
    with pytest.raises(ValueError, match='voxel_size'):
        dipole_kernel((8, 8, 8), (1.0, -1.0, 1.0), (0, 0, 1))
    with pytest.raises(ValueError, match='nyquist'):
        dipole_kernel((8, 8, 8), 1.0, (0, 0, 1), nyquist='bogus')
    with pytest.raises(ValueError, match='shape'):
        dipole_kernel((8, 8), 1.0, (0, 0, 1))


# --- forward models ----------------------------------------------------------------------

def test_sphere_field_matches_analytic():
    n, a, dchi = 64, 8.0, 1.0
    x = np.arange(n) - n // 2
    X, Y, Z = np.meshgrid(x, x, x, indexing='ij')
    chi = dchi * ((X**2 + Y**2 + Z**2) <= a**2).astype(float)
    f = dipole_forward(chi, 1.0, (0, 0, 1))
    c = n // 2
    r = int(2 * a)
    on_z = dchi / 3 * (a / r) ** 3 * 2.0    # θ = 0: 3cos²θ − 1 = 2
    on_x = dchi / 3 * (a / r) ** 3 * -1.0   # θ = 90°: −1
    for val in (f[c, c, c + r], f[c, c, c - r]):
        assert val == pytest.approx(on_z, rel=0.03)
    for val in (f[c + r, c, c], f[c - r, c, c], f[c, c + r, c]):
        assert val == pytest.approx(on_x, rel=0.03)
    # Lorentz-corrected: ≈ 0 inside (relative to the external maximum)
    assert abs(f[c, c, c]) < 0.05 * dchi / 3 * 2


def test_dipole_forward_padding_crops_exactly_and_reduces_wraparound():
    chi = np.zeros((24, 24, 24))
    chi[12, 12, 12] = 1.0
    f0 = dipole_forward(chi, 1.0, (0, 0, 1))
    f1 = dipole_forward(chi, 1.0, (0, 0, 1), padding=24)
    assert f1.shape == chi.shape
    # far from the source both agree in sign; the padded one decays further (less wrap)
    assert abs(f1[12, 12, 0]) < abs(f0[12, 12, 0])


def test_isotropic_tensor_equals_scalar_model_and_apparent_susceptibility():
    rng = np.random.default_rng(2)
    chi = rng.standard_normal((12, 14, 10))
    T = np.zeros((*chi.shape, 6))
    T[..., 0] = T[..., 3] = T[..., 5] = chi
    for b in ((0, 0, 1), OBLIQUE, np.array([1.0, 2.0, 2.0]) / 3):
        np.testing.assert_allclose(tensor_forward(T, (1, 1.5, 2), b),
                                   dipole_forward(chi, (1, 1.5, 2), b), atol=1e-12)
        np.testing.assert_allclose(apparent_susceptibility(T, b), chi, atol=1e-14)


def test_tensor_forward_is_rotation_consistent():
    """A constant-direction tensor field in a rotated frame gives the field of the
    apparent susceptibility only in the uniform (k→0-free) sense: check linearity instead:
    the field of T is Σ_c field(e_c χ_c), and bᵀχb matches the matrix form."""
    rng = np.random.default_rng(3)
    T = rng.standard_normal((8, 8, 8, 6))
    b = np.array([0.3, -0.4, 0.866])
    b /= np.linalg.norm(b)
    M = tensor_to_matrix(T)
    np.testing.assert_allclose(apparent_susceptibility(T, b),
                               np.einsum('i,...ij,j->...', b, M, b), atol=1e-13)
    R = _rot('x', 30) @ _rot('z', 50)
    # rotating the tensor values by R and the direction by R leaves bᵀχb unchanged
    np.testing.assert_allclose(apparent_susceptibility(rotate_tensor(T, R), R @ b),
                               apparent_susceptibility(T, b), atol=1e-13)
    total = sum(tensor_forward(np.where(np.arange(6) == c, T, 0.0), 1.0, b) for c in range(6))
    np.testing.assert_allclose(total, tensor_forward(T, 1.0, b), atol=1e-12)


def test_forward_rejects_bad_input():
    with pytest.raises(ValueError, match='non-finite'):
        dipole_forward(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match='3-D'):
        dipole_forward(np.zeros((4, 4)))
    with pytest.raises(ValueError, match='6 components'):
        tensor_forward(np.zeros((4, 4, 4, 3)))


# --- FFT helpers -------------------------------------------------------------------------

def test_pad_crop_exact_and_fast_shape():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((21, 22, 16)).astype(np.float32)
    shp = fft.fast_shape(x.shape, 12)
    assert all(s >= n + 24 for s, n in zip(shp, x.shape))
    np.testing.assert_array_equal(fft.crop(fft.pad(x, shp), x.shape), x)
    assert fft.fast_shape((210, 224, 160), 12) == (240, 250, 192)
    with pytest.raises(ValueError):
        fft.pad(x, (10, 10, 10))


def test_fft_counter_counts_forward_model():
    chi = np.zeros((8, 8, 8))
    with fft.count_ffts() as n:
        dipole_forward(chi)
        tensor_forward(np.zeros((8, 8, 8, 6)))
    assert n['total'] == 2 + 7
