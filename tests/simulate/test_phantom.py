"""The numerical head phantom: anatomy, tissue values, anisotropy, labels, seeding."""

import numpy as np
import pytest

from qsmprep.numerics.forward import tensor_to_matrix
from qsmprep.simulate import phantom as ph


@pytest.fixture(scope='module')
def head():
    return ph.make_phantom(4.0, rng=np.random.default_rng(0))


def _at(p, mni):
    idx = np.rint(np.linalg.solve(p.affine, [*mni, 1.0])[:3]).astype(int)
    return tuple(idx)


@pytest.mark.slow
def test_template_equals_nilearn_offline_data():
    nilearn_datasets = pytest.importorskip('nilearn.datasets')
    tpl = ph.load_template()
    assert tpl['gm'].shape == (197, 233, 189)
    for key, loader in (('t1', nilearn_datasets.load_mni152_template),
                        ('gm', nilearn_datasets.load_mni152_gm_template),
                        ('wm', nilearn_datasets.load_mni152_wm_template),
                        ('brain', nilearn_datasets.load_mni152_brain_mask)):
        img = loader()
        assert np.array_equal(np.asarray(img.get_fdata(), dtype=np.float32), tpl[key]), key
        assert np.allclose(img.affine, tpl['affine'])


def test_tissue_values_in_physiological_ranges(head):
    v = head.tissue_values
    for name, t in ph.TISSUES.items():
        lo, hi = t['chi']
        assert lo <= v[name]['chi'] <= hi, name
    assert 0.15 <= v['pallidum']['chi'] <= 0.20
    assert 0.01 <= v['wm']['dchi'] <= 0.025
    assert -0.04 <= v['wm']['chi'] <= -0.02


def test_head_compartments(head):
    chi = head.chi_mean
    # air outside the head, bone in a shell, the brain relative to CSF
    assert chi[0, 0, 0] == pytest.approx(ph.AIR_CHI)
    assert (chi < -1.0).sum() > 100  # skull
    assert np.abs(chi[head.brain]).max() < 0.5
    # air-filled cavities inside the head (sinuses, ear canals): air surrounded by tissue
    from scipy import ndimage
    air = np.abs(chi - ph.AIR_CHI) < 1.0
    _, n = ndimage.label(air)
    assert n >= 2  # outside air + at least one enclosed cavity
    assert not (air & head.brain).any()


def test_deep_grey_labels_and_values(head):
    lab = head.labels
    assert set(np.unique(lab)) <= set(ph.LABELS)
    for k in (3, 4, 7, 8):  # putamen, thalamus: large enough at 4 mm
        assert (lab == k).sum() > 0, ph.LABELS[k]
    assert (lab == ph.VEIN_LABEL).sum() > 0
    # iron-rich pallidum above putamen above thalamus
    gp = np.median(head.chi_mean[(lab == 5) | (lab == 6)])
    pu = np.median(head.chi_mean[(lab == 3) | (lab == 4)])
    th = np.median(head.chi_mean[(lab == 7) | (lab == 8)])
    assert gp > pu > th
    # left labels on the left (x < 0 in RAS)
    x = np.argwhere(lab == 3)[:, 0] * head.affine[0, 0] + head.affine[0, 3]
    assert x.mean() < 0


def test_anisotropy_is_traceless_wm_only_with_expected_eigenvalues(head):
    A = head.chi_aniso
    trace = A[..., 0] + A[..., 3] + A[..., 5]
    assert np.abs(trace).max() < 1e-6
    assert np.abs(A[~head.brain]).max() == 0
    M = tensor_to_matrix(A[head.brain].astype(np.float64))
    ev = np.linalg.eigvalsh(M)  # ascending
    # Δχ·w (f fᵀ − I/3): eigenvalues (2/3, −1/3, −1/3)·Δχ·w, w ≤ 1
    dchi = head.tissue_values['wm']['dchi']
    assert ev[:, 2].max() <= 2 / 3 * dchi + 1e-6
    assert ev[:, 2].max() > 0.5 * 2 / 3 * dchi
    assert np.allclose(ev[:, 0], ev[:, 1], atol=1e-6)
    assert np.allclose(ev[:, 2], -2 * ev[:, 0], atol=1e-6)


def test_fibre_field_unit_and_plausible():
    x = np.array([0.0, 22.0, 36.0, -36.0])
    y = np.array([-5.0, -8.0, -20.0, -20.0])
    z = np.array([22.0, 10.0, 28.0, 28.0])
    f = ph.fibre_field(x, y, z)
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert np.abs(f[0, 0]) > 0.9  # corpus callosum left-right
    assert np.abs(f[1, 2]) > 0.9  # internal capsule superior-inferior
    assert np.abs(f[2, 1]) > 0.9 and np.abs(f[3, 1]) > 0.9  # SLF anterior-posterior


def test_same_seed_same_phantom_different_seed_differs(head):
    again = ph.make_phantom(4.0, rng=np.random.default_rng(0))
    assert np.array_equal(again.chi_mean, head.chi_mean)
    assert np.array_equal(again.labels, head.labels)
    other = ph.make_phantom(4.0, rng=np.random.default_rng(1))
    assert not np.array_equal(other.brain, head.brain)  # deformed differently
    assert other.tissue_values['pallidum'] != head.tissue_values['pallidum']


def test_no_deformation_keeps_template_brain():
    p = ph.make_phantom(4.0, rng=np.random.default_rng(0), deformation=0.0, scale_range=0.0)
    tpl = ph.load_template()
    # template brain volume (1 mm voxels) ≈ phantom brain volume (4 mm voxels)
    v_tpl = tpl['brain'].sum()
    v_ph = p.brain.sum() * 64
    assert v_ph == pytest.approx(v_tpl, rel=0.05)
