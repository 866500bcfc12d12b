"""Cross-check with the independent simulator qsm-forward (offline 'simple' mode).

Convention differences of ``qsm_forward.generate_field`` (qsm-forward 0.32), all handled
here so that the two must agree to rounding:

* it pads χ to twice its size with the value of the last voxel ``chi[-1, -1, -1]``, the
  object at the start of the padded array, and crops the first ``N`` voxels back — the same
  padding is reproduced for qsmprep's :func:`~qsmprep.numerics.forward.dipole_forward`;
* its kernel has ``D(0) = 1/3`` (``k² = eps`` at the origin) where qsmprep uses ``D(0) = 0``:
  its field carries an extra constant ``mean(χ_padded)/3``;
* it takes the real part of a full complex FFT with the raw kernel, qsmprep symmetrises the
  kernel on the Nyquist planes of even grids (and qsm-forward's padded grid is always
  even).  With qsmprep's raw kernel (``nyquist='none'``) and the same real part the fields
  agree to rounding for every B0 direction; qsmprep's default ``dipole_forward`` agrees to
  rounding for B0 along an axis (no cross terms, nothing to symmetrise) and, for oblique B0,
  up to the Nyquist-plane content of χ (tiny for the smooth χ used here);
* its ``meshgrid`` uses 'xy' indexing and scales the k coordinate of array axis 0 with
  ``voxel_size[1]`` and of axis 1 with ``voxel_size[0]``; the B0 components do go with
  their array axes.  The fields agree only for equal in-plane voxel sizes (tested with
  (1, 1, 2) mm; a case with unequal in-plane sizes documents the difference).
"""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.numerics.forward import dipole_forward
from qsmprep.simulate.acquisition import tensor_field

qsm_forward = pytest.importorskip('qsm_forward')


def _smooth_chi(shape, seed=0):
    rng = np.random.default_rng(seed)
    chi = np.zeros(shape)
    for _ in range(6):
        c = [rng.integers(6, n - 6) for n in shape]
        chi[tuple(c)] = rng.uniform(-1, 1)
    chi = ndimage.gaussian_filter(chi, 3.0, mode='constant') * 50
    return chi  # corner value is ~0 but not exactly: the padding value matters


def _qsmprep_like_qsm_forward(chi, voxel_size, b0):
    n = np.array(chi.shape)
    padded = np.full(2 * n, chi[-1, -1, -1])
    padded[:n[0], :n[1], :n[2]] = chi
    f = dipole_forward(padded, voxel_size, b0)
    # D(0) = 1/3 in qsm-forward: add the DC term mean(χ_padded)/3
    return f[:n[0], :n[1], :n[2]] + padded.mean() / 3.0, padded


B0_DIRS = [(0.0, 0.0, 1.0), (0.0, np.sin(0.4), np.cos(0.4)), (0.3, -0.2, np.sqrt(0.87))]


def _raw_kernel_field(padded, voxel_size, b0):
    from qsmprep.numerics import fft
    from qsmprep.numerics.dipole import dipole_kernel

    D = dipole_kernel(padded.shape, voxel_size, b0, rfft=False, nyquist='none')
    return np.real(fft.ifftn(D * fft.fftn(padded)))


@pytest.mark.parametrize('b0', B0_DIRS)
@pytest.mark.parametrize('voxel_size', [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_same_field_as_qsm_forward(b0, voxel_size):
    chi = _smooth_chi((24, 28, 20))
    ref = qsm_forward.generate_field(chi, voxel_size=list(voxel_size), B0_dir=list(b0))
    scale = np.abs(ref).max()
    assert scale > 1e-3
    ours, padded = _qsmprep_like_qsm_forward(chi, voxel_size, b0)
    dc = padded.mean() / 3.0
    # the same kernel and procedure: equal to rounding for every direction
    raw = _raw_kernel_field(padded, voxel_size, b0)[:24, :28, :20] + dc
    assert np.abs(raw - ref).max() < 1e-10 * scale
    # qsmprep's forward model (Nyquist symmetrised): to rounding for B0 along an axis, up
    # to the (tiny) Nyquist content of χ otherwise
    rel = 1e-10 if np.count_nonzero(b0) == 1 else 1e-5
    assert np.abs(ours - ref).max() < rel * scale
    # the simulator's field function is qsmprep's forward model
    sim = tensor_field(padded, None, voxel_size, b0)[:24, :28, :20] + dc
    assert np.abs(sim - ours).max() < 1e-10 * scale


def test_qsm_forward_voxel_size_axes_differ_for_unequal_in_plane_sizes():
    chi = _smooth_chi((24, 28, 20), seed=1)
    b0 = (0.0, np.sin(0.4), np.cos(0.4))
    ref = qsm_forward.generate_field(chi, voxel_size=[1.0, 2.0, 1.0], B0_dir=list(b0))
    _, padded = _qsmprep_like_qsm_forward(chi, (1.0, 2.0, 1.0), b0)
    dc = padded.mean() / 3.0
    ours = _raw_kernel_field(padded, (1.0, 2.0, 1.0), b0)[:24, :28, :20] + dc
    swapped = _raw_kernel_field(padded, (2.0, 1.0, 1.0), b0)[:24, :28, :20] + dc
    scale = np.abs(ref).max()
    assert np.abs(swapped - ref).max() < 1e-10 * scale  # its axes 0/1 use swapped sizes
    assert np.abs(ours - ref).max() > 1e-3 * scale


def test_pybids_reads_qsm_forward_dataset(qsm_forward_dataset):
    bids = pytest.importorskip('bids')
    layout = bids.BIDSLayout(qsm_forward_dataset, validate=False)
    files = layout.get(suffix='MEGRE', extension=['.nii', '.nii.gz'])
    assert len(files) == 3 * 2 * 2  # 3 orientations × 2 echoes × {mag, phase}
    assert sorted(layout.get_acquisitions()) == ['axial', 'rotx1', 'roty1']
    ents = [f.get_entities() for f in files]
    assert {e['part'] for e in ents} == {'mag', 'phase'}
    assert {str(e['echo']) for e in ents} == {'1', '2'}
    meta = layout.get(suffix='MEGRE', part='phase', acquisition='rotx1', echo=1,
                      extension=['.nii', '.nii.gz'])[0].get_metadata()
    assert meta['EchoTime'] == pytest.approx(0.004)
    assert np.allclose(meta['B0_dir'], [0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))])
    assert 'Units' not in meta  # qsm-forward omits the (BIDS-required) phase Units
