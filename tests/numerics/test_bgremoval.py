"""Tests for qsmprep.numerics.bgremoval (physics.md §5 and §14 properties 10-12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
from scipy import ndimage

from qsmprep.numerics import fft
from qsmprep.numerics.bgremoval import (
    erode_mask,
    sharp,
    smv_kernel,
    sphere_offsets,
    vsharp,
    vsharp_radii,
    vsharp_shells,
)
from qsmprep.numerics.forward import dipole_forward


def rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def ball(voxel_size, r):
    """Independent binary ball |x| ≤ r (mm) on the voxel lattice."""
    h = [int(np.floor(r / v + 1e-9)) for v in voxel_size]
    x, y, z = np.meshgrid(*[np.arange(-n, n + 1) * v for n, v in zip(h, voxel_size,
                                                                      strict=True)],
                          indexing='ij')
    return x**2 + y**2 + z**2 <= r * r * (1 + 1e-9)


def sphere_mask(shape, radius, centre=None):
    c = [(n - 1) / 2.0 for n in shape] if centre is None else centre
    x, y, z = np.meshgrid(*[np.arange(n) - ci for n, ci in zip(shape, c, strict=True)],
                          indexing='ij')
    return x**2 + y**2 + z**2 <= radius**2


@pytest.fixture(scope='module')
def phantom():
    """Brain sphere (r = 20) + local blobs inside; air spheres and a shell outside (64³)."""
    n, radius, gap = 64, 20.0, 5.0
    x, y, z = np.mgrid[:n, :n, :n] - (n - 1) / 2.0
    r = np.sqrt(x**2 + y**2 + z**2)
    mask = r <= radius
    chi_bg = np.zeros((n,) * 3)
    chi_bg[(r >= radius + gap) & (r <= radius + gap + 3)] = 2.0
    for (cx, cy, cz), rad in [((0.0, radius + gap + 4, 8.0), 4.0),
                              ((-(radius + gap + 2) / 1.4, 0.0, -(radius + gap + 2) / 1.4), 3.0)]:
        chi_bg[(x - cx)**2 + (y - cy)**2 + (z - cz)**2 <= rad**2] = -9.0
    chi_bg = ndimage.gaussian_filter(chi_bg, 1.0)
    assert np.abs(chi_bg[mask]).max() < 1e-4  # sources are outside the mask only
    rng = np.random.default_rng(0)
    chi_loc = np.zeros((n,) * 3)
    for _ in range(10):
        c = rng.uniform(-radius / 2, radius / 2, 3)
        rad, val = rng.uniform(2.0, 4.0), rng.uniform(-0.15, 0.15)
        chi_loc[(x - c[0])**2 + (y - c[1])**2 + (z - c[2])**2 <= rad**2] += val
    chi_loc = ndimage.gaussian_filter(chi_loc, 0.7) * mask
    f_bg = dipole_forward(chi_bg, 1.0, (0.0, 0.0, 1.0), padding=n // 2)
    f_loc = dipole_forward(chi_loc, 1.0, (0.0, 0.0, 1.0), padding=n // 2)
    return {'mask': mask, 'f_bg': f_bg, 'f_loc': f_loc}


@pytest.fixture(scope='module')
def vsharp_results(phantom):
    m = phantom['mask']
    out = {}
    for name, f in (('bg', phantom['f_bg']), ('loc', phantom['f_loc']),
                    ('total', phantom['f_bg'] + phantom['f_loc'])):
        out[name], out['mask'] = vsharp(f, m)
    return out


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize(('shape', 'vs', 'r'), [
    ((16, 16, 16), (1.0, 1.0, 1.0), 3.0),
    ((30, 27, 21), (1.0, 0.8, 1.5), 4.0),
    ((25, 24, 23), (0.5, 0.7, 1.1), 3.3),
])
def test_smv_kernel_is_normalised_sphere(shape, vs, r):
    S = smv_kernel(shape, vs, r)
    assert S.shape == (shape[0], shape[1], shape[2] // 2 + 1)
    assert S[0, 0, 0] == 1.0  # Ŝ(0) = 1: the kernel sums to 1
    # its inverse transform is the binary ball (built independently), sum-normalised
    b = ball(vs, r)
    ref = np.zeros(shape)
    idx = np.ix_(*[np.arange(-(k // 2), k // 2 + 1) % n for k, n in zip(b.shape, shape,
                                                                        strict=True)])
    ref[idx] = b / b.sum()
    s = np.fft.irfftn(S, shape, axes=(0, 1, 2))
    np.testing.assert_allclose(s, ref, atol=1e-14)
    assert s.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(S, np.fft.rfftn(ref).real, atol=1e-13)


def test_smv_kernel_float32_and_errors():
    assert smv_kernel((16, 16, 16), 1.0, 3.0, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match='smaller than the smallest voxel'):
        smv_kernel((16, 16, 16), 1.0, 0.5)
    with pytest.raises(ValueError, match='does not fit'):
        smv_kernel((16, 16, 16), 1.0, 9.0)
    with pytest.raises(ValueError, match='shape'):
        smv_kernel((16, 16), 1.0, 3.0)


def test_sphere_offsets_counts():
    # lattice points in a ball of radius 2 / 3 voxels: 33 / 123 (Gauss circle problem, 3-D)
    assert int(sphere_offsets(1.0, 2.0).sum()) == 33
    assert int(sphere_offsets(1.0, 3.0).sum()) == 123
    b = sphere_offsets((1.0, 1.0, 2.0), 4.0)
    assert b.shape == (9, 9, 5)
    np.testing.assert_array_equal(b, ball((1.0, 1.0, 2.0), 4.0))


def test_vsharp_radii_default():
    assert vsharp_radii(1.0) == (18.0, 16.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0)
    assert vsharp_radii((0.5, 0.5, 0.5)) == tuple(9.0 - i for i in range(9))
    # anisotropic voxels: the steps miss 2·max(Δ); the smallest radius is still 2·max(Δ)
    assert vsharp_radii((1.0, 1.0, 2.0)) == (18.0, 14.0, 10.0, 6.0, 4.0)
    assert vsharp_radii((1.5, 1.5, 2.0)) == (27.0, 23.0, 19.0, 15.0, 11.0, 7.0, 4.0)
    for vs in ((0.7, 0.7, 3.0), (2.0, 2.0, 2.0), (1.0, 1.2, 1.3)):
        r = vsharp_radii(vs)
        assert r[-1] == pytest.approx(2 * max(vs)) and list(r) == sorted(r, reverse=True)


# --------------------------------------------------------------------------- erosion
@pytest.mark.parametrize('vs', [(1.0, 1.0, 1.0), (1.0, 0.8, 1.5)])
@pytest.mark.parametrize('r', [2.0, 3.5, 6.0])
def test_erode_mask_sphere_equals_binary_erosion(vs, r):
    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((40, 36, 30)), 3.0) > 0.49
    mask[0, 10:20, 10:20] = True  # touches the array border: outside counts as background
    ref = ndimage.binary_erosion(mask, structure=ball(vs, r), border_value=0)
    np.testing.assert_array_equal(erode_mask(mask, radius_mm=r, voxel_size=vs), ref)


def test_erode_mask_voxels_is_city_block():
    rng = np.random.default_rng(1)
    mask = ndimage.gaussian_filter(rng.random((30, 30, 30)), 2.5) > 0.48
    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_cdt(padded, metric='taxicab')[1:-1, 1:-1, 1:-1]
    for n in (1, 3):
        np.testing.assert_array_equal(erode_mask(mask, voxels=n), dist > n)
    np.testing.assert_array_equal(erode_mask(mask, voxels=0), mask)


def test_erode_mask_errors():
    m = np.ones((5, 5, 5), bool)
    with pytest.raises(ValueError, match='exactly one'):
        erode_mask(m)
    with pytest.raises(ValueError, match='exactly one'):
        erode_mask(m, voxels=1, radius_mm=2.0)
    with pytest.raises(ValueError, match='non-negative'):
        erode_mask(m, voxels=-1)
    with pytest.raises(ValueError, match='3-D'):
        erode_mask(np.ones((5, 5), bool), voxels=1)


# --------------------------------------------------------------------------- property 10
@pytest.mark.parametrize('r', [4.0, 6.0, 8.0])
def test_smv_mean_value_property(phantom, r):
    f_bg, mask = phantom['f_bg'], phantom['mask']
    shape = f_bg.shape
    S = smv_kernel(shape, 1.0, r)
    # (δ − S_r) ⊗ f_bg
    residual = f_bg - np.fft.irfftn(np.fft.rfftn(f_bg) * S, shape, axes=(0, 1, 2))
    eroded = erode_mask(mask, radius_mm=r)
    inside = f_bg[mask]
    assert rms(residual[eroded]) <= 0.02 * rms(inside - inside.mean())


# --------------------------------------------------------------------------- property 11
def test_vsharp_background_rejection(phantom, vsharp_results):
    m = vsharp_results['mask']
    inside = phantom['f_bg'][phantom['mask']]
    assert rms(vsharp_results['bg'][m]) <= 0.02 * rms(inside - inside.mean())


def test_vsharp_total_vs_local(vsharp_results):
    total, loc = vsharp_results['total'], vsharp_results['loc']
    assert np.linalg.norm(total - loc) / np.linalg.norm(loc) <= 0.05


def test_vsharp_recovers_local_field(phantom, vsharp_results):
    m = vsharp_results['mask']
    est, ref = vsharp_results['total'][m], phantom['f_loc'][m]
    est, ref = est - est.mean(), ref - ref.mean()
    nrmse = 100 * np.linalg.norm(est - ref) / np.linalg.norm(ref)
    assert nrmse < 40.0


def test_vsharp_masks_and_zero_outside(phantom, vsharp_results):
    mask, m = phantom['mask'], vsharp_results['mask']
    np.testing.assert_array_equal(
        m, ndimage.binary_erosion(mask, structure=ball((1.0, 1.0, 1.0), 2.0), border_value=0))
    for name in ('bg', 'loc', 'total'):
        assert np.all(vsharp_results[name][~m] == 0.0)


@pytest.mark.parametrize('vs', [(1.0, 1.0, 1.0), (1.0, 0.9, 1.4)])
def test_vsharp_shells_partition_final_mask(vs):
    mask = sphere_mask((40, 40, 40), 15.0)
    radii, shells = vsharp_shells(mask, voxel_size=vs, radii=(3.0, 8.0, 5.0, 8.0))
    assert radii == (8.0, 5.0, 3.0)  # descending, duplicates dropped
    stack = np.stack(shells).astype(int)
    assert stack.sum(axis=0).max() == 1  # disjoint
    union = stack.sum(axis=0) > 0
    _, final = vsharp(np.zeros(mask.shape), mask, voxel_size=vs, radii=radii)
    np.testing.assert_array_equal(union, final)
    # the first shell is the mask eroded by the largest radius, the union by the smallest
    ref_first = ndimage.binary_erosion(mask, structure=ball(vs, 8.0), border_value=0)
    ref_final = ndimage.binary_erosion(mask, structure=ball(vs, 3.0), border_value=0)
    np.testing.assert_array_equal(shells[0], ref_first)
    np.testing.assert_array_equal(union, ref_final)
    assert all(s.any() for s in shells)


# --------------------------------------------------------------------------- property 12
def reference_vsharp(f, mask, vs, radii, thr):
    """Step-by-step physics.md §5.3 with numpy.fft, scipy erosion and explicit balls.

    Grid convention of the module: crop to the mask bounding box, pad by
    ceil(r_max/min(Δ)) per side to scipy.fft.next_fast_len(real=True), centred.
    """
    radii = sorted(radii, reverse=True)
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    inner = mask[box].shape
    pad = math.ceil(radii[0] / min(vs))
    shape = tuple(scipy.fft.next_fast_len(n + 2 * pad, real=True) for n in inner)
    off = [(p - n) // 2 for n, p in zip(inner, shape, strict=True)]
    sl = tuple(slice(o, o + n) for o, n in zip(off, inner, strict=True))
    fp = np.zeros(shape)
    fp[sl] = np.where(mask[box], f[box], 0.0)
    mp = np.zeros(shape, bool)
    mp[sl] = mask[box]
    acc = np.zeros(shape)
    prev = np.zeros(shape, bool)
    F = np.fft.rfftn(fp)
    for i, r in enumerate(radii):
        b = ball(vs, r)
        s = np.zeros(shape)
        s[np.ix_(*[np.arange(-(k // 2), k // 2 + 1) % n for k, n in zip(b.shape, shape,
                                                                       strict=True)])] = b
        S = np.fft.rfftn(s / b.sum()).real
        if i == 0:
            C = 1.0 - S
            inv = np.where(np.abs(C) >= thr, 1.0 / np.where(C == 0, 1.0, C), 0.0)
        Mi = ndimage.binary_erosion(mp, structure=b, border_value=0)
        g = fp - np.fft.irfftn(F * S, shape, axes=(0, 1, 2))
        shell = Mi & ~prev
        acc[shell] = g[shell]
        prev = Mi
    out = np.fft.irfftn(np.fft.rfftn(acc) * inv, shape, axes=(0, 1, 2)) * prev
    full = np.zeros(f.shape)
    full[box] = out[sl]
    final = np.zeros(f.shape, bool)
    final[box] = prev[sl]
    return full, final


@pytest.mark.parametrize(('vs', 'radii', 'thr'), [
    ((1.0, 1.0, 1.0), (6.0, 4.0, 2.0), 0.05),
    ((1.0, 0.9, 1.4), (5.0, 3.0), 0.1),
])
def test_vsharp_matches_stepwise_reference(vs, radii, thr):
    rng = np.random.default_rng(2)
    shape = (36, 34, 30)
    mask = sphere_mask(shape, 12.0, centre=(17.0, 16.0, 15.5))
    f = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    out, final = vsharp(f, mask, voxel_size=vs, radii=radii, threshold=thr)
    ref, ref_final = reference_vsharp(f, mask, vs, radii, thr)
    np.testing.assert_array_equal(final, ref_final)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_single_radius_reproduces_sharp():
    rng = np.random.default_rng(3)
    mask = sphere_mask((40, 40, 40), 15.0)
    f = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 2.0)
    for r in (4.0, 6.0):
        a, ma = vsharp(f, mask, radii=[r])
        b, mb = sharp(f, mask, radius=r)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(b).max())
    # SHARP also matches the step-by-step reference (one radius)
    ref, ref_mask = reference_vsharp(f, mask, (1.0, 1.0, 1.0), [5.0], 0.05)
    out, m = sharp(f, mask, radius=5.0)
    np.testing.assert_array_equal(m, ref_mask)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_threshold_changes_result():
    rng = np.random.default_rng(4)
    mask = sphere_mask((40, 40, 40), 15.0)
    f = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0)
    a, _ = vsharp(f, mask, radii=(6.0, 3.0), threshold=0.05)
    b, _ = vsharp(f, mask, radii=(6.0, 3.0), threshold=0.3)
    assert np.linalg.norm(a - b) > 1e-3 * np.linalg.norm(a)


def test_linearity():
    rng = np.random.default_rng(5)
    mask = sphere_mask((40, 40, 40), 15.0)
    f = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
    g = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 3.0)
    a, b = 2.5, -0.7
    lhs, _ = vsharp(a * f + b * g, mask, radii=(8.0, 5.0, 2.0))
    rf, _ = vsharp(f, mask, radii=(8.0, 5.0, 2.0))
    rg, _ = vsharp(g, mask, radii=(8.0, 5.0, 2.0))
    np.testing.assert_allclose(lhs, a * rf + b * rg, rtol=0, atol=1e-10 * np.abs(lhs).max())


@pytest.mark.parametrize('vs', [(1.0, 1.0, 1.0), (0.8, 1.0, 1.6)])
def test_harmonic_field_removed(vs):
    mask = sphere_mask((40, 40, 40), 15.0)
    x, y, z = np.meshgrid(*[(np.arange(40) - 19.5) * v for v in vs], indexing='ij')
    harmonic = 3.0 + 0.2 * x - 0.1 * z + 0.02 * x * y
    if vs[0] == vs[1] == vs[2]:
        # the cubic-lattice ball has equal second moments, so every harmonic quadratic is
        # averaged exactly (not so for anisotropic voxels: only odd terms and x·y cancel)
        harmonic += 0.01 * (x**2 - z**2)
    out, m = vsharp(harmonic, mask, voxel_size=vs, radii=(6.0, 4.0, 2.0))
    assert m.any()
    assert np.abs(out).max() < 1e-9 * np.abs(harmonic).max()


def test_values_outside_mask_ignored():
    rng = np.random.default_rng(6)
    mask = sphere_mask((40, 40, 40), 15.0)
    f = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 2.0)
    garbage = np.where(mask, f, 1e3 * rng.standard_normal(mask.shape))
    a, _ = vsharp(f, mask, radii=(6.0, 3.0))
    b, _ = vsharp(garbage, mask, radii=(6.0, 3.0))
    np.testing.assert_array_equal(a, b)


def test_float32_stays_float32(phantom):
    f, mask = phantom['f_bg'] + phantom['f_loc'], phantom['mask']
    a64, m64 = vsharp(f, mask, radii=(10.0, 6.0, 2.0))
    a32, m32 = vsharp(f.astype(np.float32), mask, radii=(10.0, 6.0, 2.0))
    assert a32.dtype == np.float32
    np.testing.assert_array_equal(m32, m64)
    assert np.linalg.norm(a32 - a64) <= 1e-4 * np.linalg.norm(a64)
    s32, _ = sharp(f.astype(np.float32), mask, radius=6.0)
    assert s32.dtype == np.float32


def test_fft_counts():
    mask = sphere_mask((32, 32, 32), 12.0)
    f = np.random.default_rng(7).standard_normal(mask.shape)
    radii = (8.0, 6.0, 4.0, 2.0)
    vsharp(f, mask, radii=radii)  # builds and caches the SMV kernels (no FFTs either way)
    with fft.count_ffts() as n:
        vsharp(f, mask, radii=radii)
    assert n['total'] == 2 * len(radii) + 4
    with fft.count_ffts() as n:
        sharp(f, mask, radius=5.0)
    assert n['total'] == 6


# --------------------------------------------------------------------------- errors
def test_bad_inputs():
    mask = sphere_mask((24, 24, 24), 9.0)
    f = np.zeros(mask.shape)
    with pytest.raises(ValueError, match='empty'):
        vsharp(f, np.zeros(mask.shape, bool))
    with pytest.raises(ValueError, match='smallest radius'):
        vsharp(f, sphere_mask((24, 24, 24), 1.5), radii=(4.0, 2.0))
    with pytest.raises(ValueError, match='eroded by'):
        sharp(f, sphere_mask((24, 24, 24), 1.5), radius=4.0)
    with pytest.raises(ValueError, match='smaller than the smallest voxel'):
        vsharp(f, mask, radii=(4.0, 0.5))
    with pytest.raises(ValueError, match='radius'):
        vsharp(f, mask, radii=(4.0, -2.0))
    with pytest.raises(ValueError, match='non-empty'):
        vsharp(f, mask, radii=())
    with pytest.raises(ValueError, match='threshold'):
        vsharp(f, mask, threshold=1.5)
    with pytest.raises(ValueError, match='threshold'):
        sharp(f, mask, threshold=0.0)
    with pytest.raises(ValueError, match='shape'):
        vsharp(np.zeros((24, 24, 23)), mask)
    bad = f.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match='non-finite'):
        vsharp(bad, mask)
    with pytest.raises(ValueError, match='3-D'):
        vsharp(np.zeros((24, 24)), mask)
    with pytest.raises(ValueError, match='voxel_size'):
        vsharp(f, mask, voxel_size=(1.0, -1.0, 1.0))
