"""NIfTI helpers: value scans, 3-D checks, phase wrapping and arbitrary-unit rescaling."""

import nibabel as nib
import numpy as np
import pytest

from qsmprep.io.errors import DataError
from qsmprep.io.nifti import (
    check_3d,
    read_volume,
    rescale_arbitrary_phase,
    same_grid,
    scan_volume,
    wrap_phase,
)
from qsmprep.numerics.unwrap import wrap_phase as numerics_wrap_phase


def _save(tmp_path, data, name='x.nii.gz', affine=None):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


@pytest.mark.parametrize('chunk', [1, 64, 2**25])
def test_scan_volume_counts_nonfinite_in_any_chunking(tmp_path, chunk):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 7)).astype(np.float32)
    x[1, 2, 3] = np.nan
    x[4, 0, 6] = np.inf
    x[0, 0, 0] = -10.0
    stats = scan_volume(nib.load(_save(tmp_path, x)), chunk_voxels=chunk, integer=True)
    assert stats.n_nonfinite == 2
    finite = x[np.isfinite(x)]
    assert stats.minimum == pytest.approx(float(finite.min()))
    assert stats.maximum == pytest.approx(float(finite.max()))
    assert not stats.integer_valued
    assert stats.n_nonzero == np.count_nonzero(finite)


def test_scan_volume_detects_integer_values_and_applies_scaling(tmp_path):
    x = np.arange(-8, 16, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(x, np.eye(4))
    img.header.set_slope_inter(0.5, 0.0)  # stored ints, real values = 0.5 * ints
    path = tmp_path / 's.nii'
    nib.save(img, path)
    stats = scan_volume(nib.load(path), integer=True)
    assert (stats.minimum, stats.maximum) == (-4.0, 7.5)
    assert not stats.integer_valued  # 0.5-steps after scaling
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, path)
    stats = scan_volume(nib.load(path), integer=True)
    assert stats.integer_valued and (stats.minimum, stats.maximum) == (-15.0, 31.0)
    assert not scan_volume(nib.load(path)).integer_valued  # float data, check not asked
    raw = tmp_path / 'i.nii'
    nib.save(nib.Nifti1Image(x, np.eye(4)), raw)
    assert scan_volume(nib.load(raw)).integer_valued  # integer dtype


def test_check_3d_accepts_trailing_singleton_and_rejects_4d(tmp_path):
    p = _save(tmp_path, np.zeros((3, 3, 2, 1), np.float32))
    assert check_3d(nib.load(p), p) == (3, 3, 2)
    assert read_volume(p).shape == (3, 3, 2)
    p4 = _save(tmp_path, np.zeros((3, 3, 2, 4), np.float32), 'four.nii.gz')
    with pytest.raises(DataError, match='more than one volume') as info:
        check_3d(nib.load(p4), p4)
    assert 'four.nii.gz' in str(info.value) and 'echo-<index>' in str(info.value)


def test_same_grid_tolerance():
    A = np.diag([1.0, 1.0, 2.0, 1.0])
    assert same_grid((4, 4, 4), A, (4, 4, 4), A + 5e-4)
    assert not same_grid((4, 4, 4), A, (4, 4, 4), A + 5e-3)


def test_wrap_phase_range_and_congruence():
    rng = np.random.default_rng(0)
    x = rng.uniform(-30, 30, 1000)
    w = wrap_phase(x)
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    k = (x - w) / (2 * np.pi)
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert wrap_phase(np.float32(np.pi)).dtype == np.float32
    # one implementation, one convention ([-π, π)): the numerics one
    assert wrap_phase is numerics_wrap_phase
    assert wrap_phase(np.pi) == -np.pi and wrap_phase(-np.pi) == -np.pi


def test_rescale_integer_siemens_range_is_exact():
    x = np.arange(-4096, 4096)
    phi = rescale_arbitrary_phase(x, -4096, 4095, integer=True)
    np.testing.assert_allclose(phi, x * np.pi / 4096, atol=1e-12)
    # unsigned 12-bit range [0, 4095]: x·2π/4096 − π
    u = np.arange(0, 4096)
    np.testing.assert_allclose(rescale_arbitrary_phase(u, 0, 4095, integer=True),
                               u * 2 * np.pi / 4096 - np.pi, atol=1e-12)


def test_rescale_preserves_phase_differences_mod_2pi():
    rng = np.random.default_rng(1)
    true = rng.uniform(-np.pi, np.pi, 500)
    stored = np.round((true + np.pi) / (2 * np.pi) * 4096)  # scanner integers 0..4096
    stored[stored == 4096] = 0
    phi = rescale_arbitrary_phase(stored, 0, 4095, integer=True)
    d = wrap_phase(phi - true)
    assert np.max(np.abs(d)) < 2 * np.pi / 4096  # one quantisation step
    with pytest.raises(ValueError, match='constant'):
        rescale_arbitrary_phase(stored, 3, 3, integer=False)
