"""Closing the loop: COSMOS and STI from qsmprep.numerics recover the simulator's truth.

The fields are computed from the simulator's reference-frame tensor with each
orientation's B0 direction **on the reference grid** (no resampling of the object), i.e.
with exactly the discrete operator the inversions invert.  Noise-free, unwrapped and on the
full field of view (not brain-masked), the only information lost is what that operator
cannot see: the mean (``D(0) = 0``, so every component is compared demeaned) and, on even
grid sizes, the Nyquist planes (which per-k STI zeroes) — so the grid is cropped to odd
sizes.  Recovery is then exact to rounding.  (Fields of the rotated acquisitions include
interpolation and partial-volume differences and are tested for consistency, not
exactness, in test_acquisition.py.)
"""

import numpy as np
import pytest

from qsmprep.simulate.acquisition import reference_fields

sti = pytest.importorskip('qsmprep.numerics.sti')


def _odd(a):
    return a[tuple(slice(0, n - 1 + n % 2) for n in a.shape[:3])]


def _nrmse_demeaned(est, truth):
    e = est - est.mean()
    t = truth - truth.mean()
    return np.linalg.norm(e - t) / np.linalg.norm(t)


@pytest.fixture(scope='module')
def truth(tiny_subject):
    s = tiny_subject
    return _odd(s.tensor.astype(np.float64)), s.b0_reference, s.voxel_size


def test_sti_recovers_simulated_tensor(truth):
    T, b, vs = truth
    assert b.shape[0] >= 6
    fields = reference_fields(T, vs, b)
    fit = sti.fit_sti(fields, b, voxel_size=vs)
    for c in range(6):
        assert _nrmse_demeaned(fit.tensor[..., c], T[..., c]) < 1e-8, c


def test_cosmos_recovers_isotropic_truth(truth):
    T, b, vs = truth
    mms = T[..., [0, 3, 5]].mean(-1)
    iso = np.zeros_like(T)
    iso[..., [0, 3, 5]] = mms[..., None]
    fields = reference_fields(iso, vs, b)
    chi = sti.cosmos(fields, b, voxel_size=vs)
    assert _nrmse_demeaned(chi, mms) < 1e-8


def test_wm_anisotropy_is_recoverable(truth):
    # the simulated white-matter anisotropy is visible to STI: the recovered tensor's
    # deviatoric part equals the truth's in the voxels where the truth is anisotropic
    T, b, vs = truth
    fit = sti.fit_sti(reference_fields(T, vs, b), b, voxel_size=vs)

    def deviator(x):
        x = x - x.mean(axis=(0, 1, 2))  # the mean is not measurable
        x[..., [0, 3, 5]] -= x[..., [0, 3, 5]].mean(-1, keepdims=True)
        return x

    raw = T.copy()
    raw[..., [0, 3, 5]] -= T[..., [0, 3, 5]].mean(-1, keepdims=True)
    strong = np.linalg.norm(raw, axis=-1) > 0.004  # anisotropic voxels of the truth
    assert strong.sum() > 50
    assert np.allclose(deviator(fit.tensor)[strong], deviator(T)[strong], atol=1e-6)
