"""Cohort variation (``variation='cohort'``): reproducible per-subject diversity.

Checks against analytic truths: linear partial-volume mixing of lesions and nuclei, the
pushed-forward fibre directions of a rotated anatomy, the scaling of the brain volume, the
apparent susceptibility b̂ᵀχb̂ of the tensor on each acquisition grid.
"""

import json
import subprocess

import nibabel as nib
import numpy as np
import pytest

from qsmprep.numerics.geometry import apply_affine
from qsmprep.simulate import acquisition as acq
from qsmprep.simulate import cohort, resolve_config, simulate_dataset, simulate_subject
from qsmprep.simulate.phantom import (
    _CENTRE,
    NUCLEUS_TISSUES,
    TISSUES,
    fibre_field,
    make_phantom,
)
from qsmprep.simulate.presets import SimulationConfigError

DERIV = 'derivatives/qsmprep-simulate'
FAST = {'voxel_size': 4.0, 'orientations': 3}


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _variation(seed, k, lesions='all'):
    d = cohort.draw_subject(resolve_config('cohort', seed=seed, lesions=lesions), k)
    return d, {**d['anatomy'], 'lesions': d['lesions']}


def _phantom(seed, k, res=3.0, **change):
    d, var = _variation(seed, k)
    var.update(change)
    ph = make_phantom(res, rng=_rng(seed, k), deformation=d['acquisition']['deformation'],
                      variation=var)
    return d, ph


@pytest.fixture(scope='module')
def cohort_subject():
    return simulate_subject(preset='cohort', seed=7, subject_index=2, lesions='all', **FAST)


@pytest.fixture(scope='module')
def lesion_pair():
    """A 3 mm cohort phantom with every lesion class, and the same subject without lesions."""
    d, with_ = _phantom(11, 1)
    _, without = _phantom(11, 1, lesions=[])
    return d, with_, without


def test_same_seed_same_subject_and_subjects_differ(cohort_subject):
    again = simulate_subject(preset='cohort', seed=7, subject_index=2, lesions='all', **FAST)
    for a, b in ((cohort_subject.tensor, again.tensor),
                 (cohort_subject.acquisitions[1].local, again.acquisitions[1].local),
                 (cohort_subject.labels, again.labels)):
        assert np.array_equal(a, b)
    # subject k of seed s does not depend on the number of subjects
    c3, c50 = (resolve_config('cohort', seed=7, subjects=n) for n in (3, 50))
    assert cohort.draw_subject(c3, 2) == cohort.draw_subject(c50, 2)
    other = simulate_subject(preset='cohort', seed=7, subject_index=3, lesions='all', **FAST)
    assert cohort.draw_subject(c3, 3) != cohort.draw_subject(c3, 2)
    assert other.phantom.chi_mean.shape == cohort_subject.phantom.chi_mean.shape
    assert not np.array_equal(other.phantom.chi_mean, cohort_subject.phantom.chi_mean)


def test_draw_ranges():
    cfg = resolve_config('cohort', seed=0)
    C = cohort.COHORT
    draws = [cohort.draw_subject(cfg, k) for k in range(1, 121)]
    vs = np.array([d['acquisition']['voxel_size'] for d in draws])
    assert vs.min() >= 1.0 and vs.max() <= 2.0 and (vs[:, 2] > vs[:, 0]).any()
    assert (vs[:, 0] == vs[:, 1]).all() and (vs[:, 2] >= vs[:, 0]).all()
    b0 = {d['acquisition']['field_strength'] for d in draws}
    assert b0 == {3.0, 7.0}
    for d in draws:
        a = d['acquisition']
        assert a['echo_times'] == list(C['echo_times_7t' if a['field_strength'] > 5
                                         else 'echo_times_3t'])
        assert C['snr'][0] <= a['snr'] <= C['snr'][1]
        an = d['anatomy']
        g = np.prod(an['scale']) ** (1 / 3)
        assert C['head_scale'][0] * (1 - C['axis_scale']) <= g <= \
            C['head_scale'][1] * (1 + C['axis_scale'])
        assert an['pose_deg'] <= C['pose_deg'] + 1e-9
        assert all(C['iron_factor'][0] <= v <= C['iron_factor'][1]
                   for v in an['iron_factor'].values())
    # explicit settings are not drawn
    fixed = resolve_config('cohort', seed=0, voxel_size=1.5, field_strength=7.0)
    for k in (1, 2, 3):
        a = cohort.subject_config(fixed, cohort.draw_subject(fixed, k))
        assert a['voxel_size'] == [1.5] * 3 and a['field_strength'] == 7.0
        assert a['echo_times'] == list(C['echo_times_7t']) and a['model_resolution'] == 1.5


def test_lesion_classes_sign_and_magnitude(lesion_pair):
    d, ph, ref = lesion_pair
    V = float(np.prod(ph.voxel_size))
    classes = {rec['class'] for rec in ph.lesions}
    assert classes == set(cohort.LESIONS)
    assert len(ph.lesions) == len(d['lesions'])
    wm_chi = ph.tissue_values['wm']['chi']
    dchi = ph.chi_mean - ref.chi_mean
    for rec in ph.lesions:
        spec = cohort.LESIONS[rec['class']]
        lab = ph.labels == rec['label']
        assert lab.any(), rec['class']
        # voxels of this lesion: within its extent of its centre
        idx = np.argwhere(lab)
        dist = np.linalg.norm(apply_affine(ph.affine, idx) - rec['centre_mm'], axis=1)
        ext = max(rec['radii_mm']) + rec.get('rim_mm', 0.0) + ph.voxel_size[0]
        assert (dist <= ext).any()
        if 'chi' in spec:
            lo, hi = spec['chi']
            assert lo <= rec['chi_ppm'] <= hi
            # every voxel mixes linearly: χ = (1 - f) χ_before + f χ_lesion, 0 <= f <= 1
            box = np.linalg.norm(apply_affine(ph.affine, np.argwhere(np.ones(ph.shape, bool)))
                                 - rec['centre_mm'], axis=1).reshape(ph.shape) <= ext
            f = dchi[box] / (rec['chi_ppm'] - ref.chi_mean[box])
            assert f.min() > -1e-4 and f.max() < 1 + 1e-4
            # the lesion's moment: sum of f·V is its volume (4³ sub-samples per voxel)
            if min(rec['radii_mm']) >= 1.5:
                assert np.sum(f) * V == pytest.approx(rec['volume_mm3'], rel=0.15)
            # sign of the drawn χ against the tissue around it
            assert np.sign(rec['chi_ppm'] - wm_chi) == np.sign(dchi[box].sum())
        else:  # MS-like: relative to the subject's white matter
            lo, hi = spec['delta_chi']
            assert lo <= rec['chi_ppm'] - wm_chi <= hi
    rims = [r for r in ph.lesions if r['class'] == 'ms_rim']
    for rec in rims:
        lo, hi = cohort.LESIONS['ms_rim']['rim_delta_chi']
        assert lo <= rec['rim_chi_ppm'] - wm_chi <= hi
    # the paramagnetic rim is above the white matter, the cores and iso lesions near it
    rim = ph.labels == 18
    assert (ph.chi_mean[rim] > wm_chi).mean() > 0.9
    for label in (16, 17):
        m = ph.labels == label
        assert np.abs(np.median(ph.chi_mean[m]) - wm_chi) < 0.03
    # demyelinated: the anisotropy is gone where a lesion fills the voxel
    full = np.isin(ph.labels, (16, 17)) & (np.abs(dchi) < 1)
    norm = np.linalg.norm(ph.chi_aniso, axis=-1)
    wm_norm = np.linalg.norm(ref.chi_aniso, axis=-1)
    assert norm[full].mean() < 0.5 * wm_norm[full].mean()
    # outside the lesions nothing changed (lesions draw from their own stream)
    inside = np.zeros(ph.shape, bool)
    for rec in ph.lesions:
        c = (np.asarray(rec['centre_mm']) - ph.affine[:3, 3]) / ph.voxel_size
        r = int(np.ceil((max(rec['radii_mm']) + rec.get('rim_mm', 0)) / ph.voxel_size[0])) + 2
        sl = tuple(slice(max(round(float(v)) - r, 0), round(float(v)) + r + 1) for v in c)
        inside[sl] = True
    assert np.array_equal(ph.chi_mean[~inside], ref.chi_mean[~inside])
    assert ph.lesions[0]['centre_mm'] != ph.lesions[1]['centre_mm']


def test_iron_scaling_shows_in_nuclei_means():
    lo = dict.fromkeys(NUCLEUS_TISSUES, 0.7)
    hi = dict.fromkeys(NUCLEUS_TISSUES, 1.3)
    _, a = _phantom(3, 1, res=4.0, iron_factor=lo, lesions=[])
    _, b = _phantom(3, 1, res=4.0, iron_factor=hi, lesions=[])
    assert np.array_equal(a.labels, b.labels)
    for i, tis in enumerate(NUCLEUS_TISSUES):
        nominal = 0.5 * sum(TISSUES[tis]['chi'])
        assert a.tissue_values[tis]['chi'] == pytest.approx(0.7 * nominal)
        for side in (1, 2):
            m = a.labels == 2 * i + side
            if not m.any():
                continue
            diff = b.chi_mean[m].mean() - a.chi_mean[m].mean()
            # labels mark fractions >= 1/2 of the nucleus: the mean moves by f̄·0.6·χ_nominal
            assert 0.5 * 0.6 * nominal - 1e-6 <= diff <= 0.6 * nominal + 1e-6, tis


def test_drawn_iron_tracks_label_means(cohort_subject):
    s = cohort_subject
    chis, means = [], []
    for i, tis in enumerate(NUCLEUS_TISSUES):
        for side in (1, 2):
            m = s.phantom.labels == 2 * i + side
            if m.sum() >= 2:
                chis.append(s.phantom.tissue_values[tis]['chi'])
                means.append(s.phantom.chi_mean[m].mean())
    assert len(chis) >= 8
    assert np.corrcoef(chis, means)[0, 1] > 0.9
    nominal = {t: 0.5 * sum(TISSUES[t]['chi']) for t in NUCLEUS_TISSUES}
    for t, k in s.cohort['anatomy']['iron_factor'].items():
        assert s.phantom.tissue_values[t]['chi'] == pytest.approx(k * nominal[t])


def test_head_size_scales_brain_volume():
    base = {'scale': [1.0] * 3, 'pose': np.eye(3).tolist(), 'lesions': []}
    vol = {}
    for s in (0.92, 1.08):
        ph = make_phantom(4.0, rng=_rng(2, 1), deformation=0.0,
                          variation={**base, 'scale': [s] * 3})
        vol[s] = ph.brain.sum()
    ref = make_phantom(4.0, rng=_rng(2, 1), deformation=0.0, variation=base).brain.sum()
    for s, v in vol.items():
        assert v / ref == pytest.approx(s ** 3, rel=0.04)


def test_fibres_follow_the_rotated_anatomy():
    R = cohort.random_rotation(_rng(5), 25.0)
    R = R if np.degrees(np.arccos((np.trace(R) - 1) / 2)) > 10 else \
        acq.rotation_about((1.0, 0.0, 0.0), 20.0)
    ph = make_phantom(4.0, rng=_rng(4, 1), deformation=0.0,
                      variation={'scale': [1.0] * 3, 'pose': R.tolist(), 'lesions': []})
    A = ph.chi_aniso
    norm = np.linalg.norm(A, axis=-1)
    idx = np.argwhere(norm > 0.5 * norm.max())[::7][:300]
    x = apply_affine(ph.affine, idx)
    t = _CENTRE + (x - _CENTRE) @ R  # template coordinate Rᵀ (x − C) + C
    f_tpl = fibre_field(t[:, 0], t[:, 1], t[:, 2])
    expect = f_tpl @ R.T  # pushed forward: R f
    for (i, j, k), e in zip(idx, expect, strict=True):
        c = A[i, j, k]
        M = np.array([[c[0], c[1], c[2]], [c[1], c[3], c[4]], [c[2], c[4], c[5]]])
        v = np.linalg.eigh(M)[1][:, -1]
        assert abs(v @ e) > 0.999
    assert ph.deformation['min_jacobian_det_wm'] == pytest.approx(1.0, abs=1e-5)


def test_warp_does_not_fold(cohort_subject):
    assert cohort_subject.phantom.deformation['min_jacobian_det_wm'] > 0.2


def test_apparent_label_is_bTchib_of_tensor_on_each_grid(cohort_subject):
    s = cohort_subject
    for i, g in enumerate(s.geometries):
        f = acq.simulate_acquisition(s.phantom, g, padding=s.config['padding'],
                                     keep_tensor=True)
        assert np.array_equal(f.apparent, s.acquisitions[i].apparent)
        T, b = f.tensor.astype(float), g.b0_voxel
        bb = np.array([b[0] * b[0], 2 * b[0] * b[1], 2 * b[0] * b[2], b[1] * b[1],
                       2 * b[1] * b[2], b[2] * b[2]])
        assert np.allclose(f.apparent, T @ bb, atol=1e-6)
        if i == 0:
            assert np.allclose(s.tensor, f.tensor) and np.allclose(f.apparent, T[..., 5],
                                                                   atol=1e-6)
        else:  # anisotropy makes the apparent map depend on the orientation
            assert np.abs(f.apparent - f.chi_mean)[f.brain].max() > 1e-3
    tilts = [g.tilt_deg for g in s.geometries]
    assert tilts[0] == 0 and max(tilts) <= 45.0 + 1e-6


def test_7t_and_anisotropic_voxels():
    s = simulate_subject(preset='cohort', seed=1, subject_index=1, voxel_size=(3.0, 3.0, 4.5),
                         field_strength=7.0, orientations=2, lesions='none')
    assert s.config['field_strength'] == 7.0
    assert s.config['echo_times'] == list(cohort.COHORT['echo_times_7t'])
    assert np.allclose(s.geometries[1].voxel_size, (3.0, 3.0, 4.5))
    assert s.config['model_resolution'] == 3.0 and not s.phantom.lesions
    assert set(np.unique(s.phantom.labels)) <= set(range(16))


def test_lesions_need_cohort():
    with pytest.raises(SimulationConfigError, match="needs variation='cohort'"):
        resolve_config('tiny', lesions='all')
    with pytest.raises(SimulationConfigError, match='variation'):
        resolve_config('cohort', variation='wild')
    assert resolve_config('tiny')['variation'] == 'none'
    assert resolve_config('cohort')['lesions'] == 'random'


def test_cohort_dataset_bids_valid_and_truth(tmp_path, bids_validator):
    root = tmp_path / 'cohort'
    simulate_dataset(root, preset='cohort', subjects=2, seed=4, lesions='all', jobs=1,
                     **FAST)
    for path in (root, root / DERIV):
        res = subprocess.run([bids_validator, str(path), '--format', 'json', '--no-color'],
                             capture_output=True, text=True, timeout=300)
        issues = json.loads(res.stdout)['issues']['issues']
        assert not [i for i in issues if i.get('severity') == 'error'], path
    for k in (1, 2):
        sub = f'sub-{k:02d}'
        meta = json.loads((root / DERIV / sub / f'{sub}_cohort.json').read_text())
        assert {r['class'] for r in meta['Lesions']} == set(cohort.LESIONS)
        assert meta['Acquisition']['voxel_size'] == [4.0] * 3
        sc = json.loads((root / sub / 'anat' /
                         f'{sub}_acq-ori01_echo-1_part-phase_MEGRE.json').read_text())
        assert sc['MagneticFieldStrength'] == meta['Acquisition']['field_strength']
        assert sc['EchoTime'] == meta['Acquisition']['echo_times'][0]
        anat = root / DERIV / sub / 'anat'
        rows = (anat / f'{sub}_space-ori01_desc-dgm_dseg.tsv').read_text().splitlines()
        names = dict(r.split('\t') for r in rows[1:])
        assert names['5'] == 'pallidum_L' and names['15'] == 'veins'
        assert names['19'] == 'microbleed' and names['21'] == 'haemorrhage'
        seg = np.asarray(nib.load(anat / f'{sub}_space-ori01_desc-dgm_dseg.nii.gz').dataobj)
        assert seg.max() > 15
    # subject 2 of a 2-subject dataset is the in-memory subject 2
    s2 = simulate_subject(preset='cohort', seed=4, subject_index=2, lesions='all', **FAST)
    T = nib.load(root / DERIV / 'sub-02' / 'anat' /
                 'sub-02_space-ori01_chitensor.nii.gz').get_fdata(dtype=np.float32)
    assert np.array_equal(T, s2.tensor)


def test_fibre_jitter_is_smooth_and_bounded():
    base = {'scale': [1.0] * 3, 'pose': np.eye(3).tolist(), 'lesions': []}
    ref = make_phantom(4.0, rng=_rng(6, 1), deformation=0.0, variation=base)
    jit = make_phantom(4.0, rng=_rng(6, 1), deformation=0.0,
                       variation={**base, 'fibre_jitter_deg': 15.0, 'fibre_seed': [6, 1, 302]})

    def principal(A, idx):
        out = []
        for i, j, k in idx:
            c = A[i, j, k]
            M = np.array([[c[0], c[1], c[2]], [c[1], c[3], c[4]], [c[2], c[4], c[5]]])
            out.append(np.linalg.eigh(M)[1][:, -1])
        return np.array(out)

    norm = np.linalg.norm(ref.chi_aniso, axis=-1)
    idx = np.argwhere(norm > 0.5 * norm.max())[::5][:400]
    def frobenius(A):
        w = np.array([1.0, 2.0, 2.0, 1.0, 2.0, 1.0])
        return np.sqrt((A[tuple(idx.T)].astype(float) ** 2 * w).sum(-1))

    # a rotation keeps the anisotropy's size (Frobenius norm) and changes its direction
    assert np.allclose(frobenius(jit.chi_aniso), frobenius(ref.chi_aniso), rtol=1e-4)
    ang = np.degrees(np.arccos(np.clip(np.abs(np.sum(principal(ref.chi_aniso, idx) *
                                                     principal(jit.chi_aniso, idx), 1)), 0, 1)))
    assert ang.max() <= 15.0 + 0.1 and np.median(ang) > 1.0
    assert np.array_equal(jit.chi_mean, ref.chi_mean)
