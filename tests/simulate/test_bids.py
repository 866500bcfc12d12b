"""The written datasets: layout, sidecars, pybids, BIDS validator, determinism."""

import hashlib
import json
import subprocess

import nibabel as nib
import numpy as np
import pytest

from qsmprep.numerics.constants import GAMMA_BAR
from qsmprep.numerics.geometry import b0_direction_from_affine
from qsmprep.simulate import simulate_dataset
from qsmprep.simulate.acquisition import arbitrary_to_phase

DERIV = 'derivatives/qsmprep-simulate'


def _digest(root):
    out = {}
    for p in sorted(root.rglob('*')):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_tiny_layout_and_sidecars(tiny_dataset):
    root, summary = tiny_dataset
    cfg = summary.config
    anat = root / 'sub-01' / 'anat'
    files = sorted(anat.glob('*_MEGRE.nii.gz'))
    assert len(files) == cfg['orientations'] * len(cfg['echo_times']) * 2
    desc = json.loads((root / 'dataset_description.json').read_text())
    assert desc['DatasetType'] == 'raw' and desc['GeneratedBy'][0]['Name'] == 'qsmprep-simulate'
    for ori in range(1, cfg['orientations'] + 1):
        for e, te in enumerate(cfg['echo_times'], start=1):
            stem = anat / f'sub-01_acq-ori{ori:02d}_echo-{e}_part-phase_MEGRE'
            meta = json.loads(stem.with_suffix('.json').read_text())
            assert meta['EchoTime'] == te and meta['EchoNumber'] == e
            assert meta['MagneticFieldStrength'] == cfg['field_strength']
            assert meta['Units'] == 'rad'
            img = nib.load(f'{stem}.nii.gz')
            assert np.allclose(meta['B0_dir'], b0_direction_from_affine(img.affine))
            ph = np.asarray(img.dataobj)
            assert ph.dtype == np.float32 and ph.min() > -np.pi - 1e-6 and ph.max() <= np.pi
    assert (root / 'README').exists() and (root / 'participants.tsv').exists()


def test_truth_derivatives(tiny_dataset):
    root, _ = tiny_dataset
    d = root / DERIV
    desc = json.loads((d / 'dataset_description.json').read_text())
    assert desc['DatasetType'] == 'derivative'
    assert desc['GeneratedBy'][0]['Name'] == 'qsmprep-simulate'
    anat = d / 'sub-01' / 'anat'
    T = nib.load(anat / 'sub-01_space-ori01_chitensor.nii.gz').get_fdata()
    chi33 = nib.load(anat / 'sub-01_space-ori01_desc-chi33_Chimap.nii.gz').get_fdata()
    mms = nib.load(anat / 'sub-01_space-ori01_desc-mms_Chimap.nii.gz').get_fdata()
    assert T.shape[-1] == 6
    assert np.allclose(chi33, T[..., 5])
    assert np.allclose(mms, T[..., [0, 3, 5]].mean(-1), atol=1e-6)
    # the reference acquisition sees χ33 (its B0 is ẑ of the reference frame)
    app = nib.load(anat / 'sub-01_acq-ori01_desc-apparent_Chimap.nii.gz').get_fdata()
    assert np.allclose(app, chi33, atol=1e-6)
    orient = json.loads((d / 'sub-01' / 'sub-01_orientations.json').read_text())
    for a in orient['Acquisitions']:
        R = np.array(a['rotation'])
        assert np.allclose(a['b0_reference'], R.T @ [0, 0, 1])  # axis-aligned reference grid
        # apparent χ = b_refᵀ T b_ref, voxel by voxel, in the reference-grid acquisition
    b = np.array(orient['Acquisitions'][2]['b0_reference'])
    assert not np.allclose(b, [0, 0, 1])
    labels = (anat / 'sub-01_space-ori01_desc-dgm_dseg.tsv').read_text().splitlines()
    assert labels[0] == 'index\tname' and any('pallidum_L' in r for r in labels)
    # total field = local + background is what the phase encodes (noise-free check below)
    loc = nib.load(anat / 'sub-01_acq-ori02_desc-local_field.nii.gz').get_fdata()
    bg = nib.load(anat / 'sub-01_acq-ori02_desc-background_field.nii.gz').get_fdata()
    assert np.abs(bg).max() > 10 * np.abs(loc).max() > 0


def test_noise_free_phase_encodes_true_field(tmp_path):
    root = tmp_path / 'nf'
    s = simulate_dataset(root, preset='tiny', seed=1, snr=None, orientations=2, jobs=1)
    te = s.config['echo_times']
    anat = root / 'sub-01' / 'anat'
    danat = root / DERIV / 'sub-01' / 'anat'
    loc = nib.load(danat / 'sub-01_acq-ori02_desc-local_field.nii.gz').get_fdata()
    bg = nib.load(danat / 'sub-01_acq-ori02_desc-background_field.nii.gz').get_fdata()
    p1 = nib.load(anat / 'sub-01_acq-ori02_echo-1_part-phase_MEGRE.nii.gz').get_fdata()
    p2 = nib.load(anat / 'sub-01_acq-ori02_echo-2_part-phase_MEGRE.nii.gz').get_fdata()
    dphi = np.angle(np.exp(1j * (p2 - p1)))
    expected = 2 * np.pi * GAMMA_BAR * s.config['field_strength'] * (te[1] - te[0]) * \
        (loc + bg) * 1e-6
    err = np.angle(np.exp(1j * (dphi - expected)))
    assert np.abs(err).max() < 1e-3


def test_pybids_finds_megre_files(tiny_dataset):
    bids = pytest.importorskip('bids')
    root, summary = tiny_dataset
    layout = bids.BIDSLayout(root, validate=False)
    files = layout.get(suffix='MEGRE', extension='.nii.gz')
    n_ori, n_echo = summary.config['orientations'], len(summary.config['echo_times'])
    assert len(files) == n_ori * n_echo * 2
    assert sorted(layout.get_acquisitions()) == [f'ori{i:02d}' for i in range(1, n_ori + 1)]
    ents = [f.get_entities() for f in files]
    assert {str(e['echo']) for e in ents} == {str(i) for i in range(1, n_echo + 1)}
    assert {e['part'] for e in ents} == {'mag', 'phase'}
    phase = layout.get(suffix='MEGRE', part='phase', acquisition='ori02', echo=2,
                       extension='.nii.gz')
    assert len(phase) == 1 and phase[0].get_metadata()['Units'] == 'rad'
    # the ground truth is an indexable derivatives dataset
    deriv = bids.BIDSLayout(root, derivatives=True, validate=False)
    chimaps = deriv.get(scope='qsmprep-simulate', suffix='Chimap', extension='.nii.gz')
    assert {f.get_entities().get('desc') for f in chimaps} == {'apparent', 'chi33', 'mms'}
    masks = deriv.get(scope='qsmprep-simulate', suffix='mask', desc='brain',
                      extension='.nii.gz')
    assert len(masks) == n_ori + 1


def _validate(exe, path):
    res = subprocess.run([exe, str(path), '--format', 'json', '--no-color'],
                         capture_output=True, text=True, timeout=300)
    out = json.loads(res.stdout)
    issues = out['issues']['issues']
    errors = [i for i in issues if i.get('severity') == 'error']
    return errors, out


def test_bids_validator_raw_and_derivatives(tiny_dataset, bids_validator):
    root, _ = tiny_dataset
    errors, _ = _validate(bids_validator, root)
    assert errors == [], errors[:3]
    errors, _ = _validate(bids_validator, root / DERIV)
    assert errors == [], errors[:3]


def test_options_sessions_arbitrary_oblique_anisotropic(tmp_path, bids_validator):
    root = tmp_path / 'opt'
    s = simulate_dataset(root, preset='tiny', seed=2, sessions=2, orientations=2, echoes=2,
                         phase_units='arbitrary', b0_dir_sidecar=False, oblique=15.0,
                         voxel_size=(4.0, 4.0, 5.0), magnitude_dtype='int16', jobs=1)
    assert len(s.subjects[0]['sessions']) == 2
    anat = root / 'sub-01' / 'ses-02' / 'anat'
    stem = anat / 'sub-01_ses-02_acq-ori02_echo-2_part-phase_MEGRE'
    meta = json.loads(stem.with_suffix('.json').read_text())
    assert meta['Units'] == 'arbitrary' and 'B0_dir' not in meta
    img = nib.load(f'{stem}.nii.gz')
    v = np.asarray(img.dataobj)
    assert v.dtype == np.int16 and v.min() >= -4096 and v.max() <= 4095
    assert np.abs(arbitrary_to_phase(v)).max() <= np.pi
    assert np.allclose(img.header.get_zooms(), (4.0, 4.0, 5.0))
    b0 = b0_direction_from_affine(img.affine)
    assert not np.allclose(b0, [0, 0, 1])  # oblique prescription
    orient = json.loads((root / DERIV / 'sub-01' / 'ses-02' /
                         'sub-01_ses-02_orientations.json').read_text())
    acq2 = orient['Acquisitions'][1]
    assert np.allclose(acq2['b0_voxel'], b0)
    P0 = np.array(orient['Acquisitions'][0]['prescription'])
    R = np.array(acq2['rotation'])
    assert np.allclose(acq2['b0_reference'], P0.T @ R.T @ [0, 0, 1])
    mag = np.asarray(nib.load(anat / 'sub-01_ses-02_acq-ori02_echo-1_part-mag_MEGRE.nii.gz')
                     .dataobj)
    assert mag.dtype == np.int16
    errors, _ = _validate(bids_validator, root)
    assert errors == [], errors[:3]
    errors, _ = _validate(bids_validator, root / DERIV)
    assert errors == [], errors[:3]


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    kw = {'preset': 'tiny', 'orientations': 2, 'echoes': 2, 'jobs': 1}
    simulate_dataset(tmp_path / 'a', seed=5, **kw)
    simulate_dataset(tmp_path / 'b', seed=5, **kw)
    simulate_dataset(tmp_path / 'c', seed=6, **kw)
    a, b, c = (_digest(tmp_path / k) for k in 'abc')
    assert a == b
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k] and k.endswith('.nii.gz')]
    assert len(differ) > len([k for k in a if k.endswith('.nii.gz')]) // 2


def test_worker_processes_do_not_change_results(tmp_path):
    kw = {'preset': 'tiny', 'orientations': 3, 'echoes': 1, 'seed': 9}
    simulate_dataset(tmp_path / 'one', jobs=1, **kw)
    simulate_dataset(tmp_path / 'two', jobs=2, **kw)
    assert _digest(tmp_path / 'one') == _digest(tmp_path / 'two')


def test_refuses_non_empty_and_overwrites_own_dataset(tmp_path):
    from qsmprep.simulate import OutputExistsError

    other = tmp_path / 'other'
    other.mkdir()
    (other / 'keep.txt').write_text('x')
    with pytest.raises(OutputExistsError, match='not empty'):
        simulate_dataset(other, preset='tiny', orientations=1, echoes=1, jobs=1)
    with pytest.raises(OutputExistsError, match='not hold a dataset written by'):
        simulate_dataset(other, preset='tiny', orientations=1, echoes=1, overwrite=True,
                         jobs=1)
    assert (other / 'keep.txt').exists()
    own = tmp_path / 'own'
    simulate_dataset(own, preset='tiny', orientations=2, echoes=1, jobs=1, truth=False)
    (own / 'stale.txt').write_text('x')
    simulate_dataset(own, preset='tiny', orientations=1, echoes=1, overwrite=True, jobs=1,
                     truth=False)
    assert not (own / 'stale.txt').exists()
    assert not list(own.rglob('*acq-ori02*'))
