"""``qsmprep-train evaluate`` / :mod:`qsmprep.dl.evaluate`: metrics against analytic values and
QSM-CI's reference code, an exact oracle ranked perfect, the simulator's and qsm-forward's truth
layouts, pipeline inputs, the DGM labels carried onto tilted grids, the CLI and its exit codes.
TkD and iLSQR need no TensorFlow; only the last test builds (a tiny) Keras model."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

import qsmprep.dl
from qsmprep.cli.train import main
from qsmprep.dl.evaluate import Case, Method, discover, evaluate, format_table, score, tilt_deg
from qsmprep.io import derivatives as contract
from qsmprep.io.errors import MissingInputError
from qsmprep.io.testing import write_training_derivatives
from qsmprep.numerics import metrics as M
from qsmprep.numerics.inversion import tkd

PERFECT = {'nrmse': 0.0, 'nrmse_demeaned': 0.0, 'nrmse_detrended': 0.0, 'hfen': 0.0,
           'hfen_qsmci': 0.0, 'xsim': 1.0, 'xsim_qsmci': 1.0}


def _oracle(case):
    return case.label.copy(), {}


def _scaled(a):
    return lambda case: a * case.label  # a bare map (no info dict) is accepted too


ORACLE = Method('oracle', _oracle, description='the truth label itself')


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    """A simulator-like truth folder (24³, 2 mm, B0 tilted 0/15/30° in the voxel frame)."""
    root = tmp_path_factory.mktemp('evalsyn') / 'bids'
    write_training_derivatives(root / 'derivatives' / 'qsmprep-simulate', subjects=1,
                               orientations=3, source='simulate-truth', seed=3)
    return root


def _smooth(rng, shape=(20, 22, 18), scale=0.05):
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) * scale


def _case(y, mask, dgm=None, labels=()):
    return Case(key='x', field=np.zeros_like(y, np.float32), mask=mask, label=y,
                eval_mask=mask, b0_direction=(0.0, 0.0, 1.0), voxel_size=(1.0, 1.0, 1.0),
                affine=np.eye(4), dgm=dgm, dgm_labels=labels)


# --------------------------------------------------------------------------- metrics

def test_scores_of_exact_scaled_and_shifted_maps():
    rng = np.random.default_rng(0)
    y = _smooth(rng)
    mask = np.zeros(y.shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    y *= mask
    dgm = np.zeros(y.shape, np.int16)
    for i in range(1, 7):  # six slabs with distinct means
        dgm[4:-4, 4:-4, 2 + 2 * i] = i
        y[dgm == i] += 0.02 * i
    case = _case(y, mask, dgm, tuple(range(1, 7)))
    s = score(y, case)
    for k, v in PERFECT.items():
        assert s[k] == pytest.approx(v, abs=1e-12), k
    assert s['dgm_slope'] == pytest.approx(1.0, abs=1e-12)
    s = score(1.1 * y, case)  # a known scaling: every linear error norm is exactly 10 %
    for k in ('nrmse', 'nrmse_demeaned', 'hfen', 'hfen_qsmci'):
        assert s[k] == pytest.approx(10.0, rel=1e-9), k
    assert s['nrmse_detrended'] == pytest.approx(0.0, abs=1e-9)
    assert s['dgm_slope'] == pytest.approx(1.1, rel=1e-12)
    s = score(0.5 * y + 0.01 * mask, case)
    assert s['dgm_slope'] == pytest.approx(0.5, rel=1e-12)
    assert s['nrmse_demeaned'] == pytest.approx(50.0, rel=1e-9)


@pytest.mark.parametrize('a', [0.5, 1.0, 2.0])
def test_xsim_of_constant_images_is_the_luminance_term(a):
    # no variance: SSIM = (2 a c² + C1) / ((1 + a²) c² + C1) for x = a·c, y = c
    c, c1 = 0.1, 1e-4
    y = np.full((9, 9, 9), c)
    expect = (2 * a * c * c + c1) / ((1 + a * a) * c * c + c1)
    assert M.xsim(a * y, y) == pytest.approx(expect, rel=1e-12)
    assert M.xsim_qsmci(a * y, y) == pytest.approx(expect, rel=1e-12)


def test_tilt_angle():
    assert tilt_deg([0, 0, 1]) == 0.0
    assert tilt_deg([1, 0, 0]) == pytest.approx(90.0)
    b = [np.sin(np.deg2rad(40)) * np.cos(1.0), np.sin(np.deg2rad(40)) * np.sin(1.0),
         np.cos(np.deg2rad(40))]
    assert tilt_deg(b) == pytest.approx(40.0, abs=1e-9)


def test_metrics_equal_the_qsm_ci_reference_code():
    qe = pytest.importorskip('qsm_ci.qsm_eval')
    rng = np.random.default_rng(1)
    y = _smooth(rng, (24, 26, 22))
    x = 0.8 * y + _smooth(rng, (24, 26, 22), 0.02)
    mask = np.zeros(y.shape, bool)
    mask[4:-4, 5:-5, 3:-3] = True
    seg = np.zeros(y.shape, np.int16)
    for i in range(1, 8):
        seg[6:-6, 6:-6, 2 + 2 * i] = i
    assert M.xsim_qsmci(x, y, mask) == pytest.approx(qe.xsim(x, y, mask), rel=1e-10)
    assert M.hfen(x, y, mask, variant='qsmci') == pytest.approx(qe.hfen(x, y, mask), rel=1e-10)
    nrmse_ref, detrended_ref = qe.nrmse_challenge(x, y, mask)
    assert M.nrmse(x, y, mask, demean=True) == pytest.approx(nrmse_ref, rel=1e-10)
    assert M.nrmse_detrended(x, y, mask) == pytest.approx(detrended_ref, rel=1e-8)
    assert M.dgm_slope_error(x, y, seg) == pytest.approx(qe.dgm_linearity(x, y, seg),
                                                         rel=1e-10)
    # the MATLAB-reference XSIM (Gaussian 7³ window) is a different number
    assert abs(M.xsim(x, y, mask) - qe.xsim(x, y, mask)) > 1e-3


# --------------------------------------------------------------------------- evaluation

def test_oracle_is_perfect_and_ranked_first(synthetic):
    half = Method('half', _scaled(0.5))
    res = evaluate(synthetic, [half, 'tkd', ORACLE, 'ilsqr'])
    assert res['generator'] == 'qsmprep-simulate' and res['inputs'] == 'truth'
    assert [m['name'] for m in res['methods']] == ['half', 'tkd', 'oracle', 'ilsqr']
    assert res['ranking'][0] == 'oracle' and len(res['cases']) == 3
    for c in res['cases']:
        for k, v in PERFECT.items():
            assert c['results']['oracle'][k] == pytest.approx(v, abs=1e-9), k
        assert c['results']['half']['nrmse'] == pytest.approx(50.0, rel=1e-6)
        assert c['results']['oracle']['dgm_slope'] is None  # no segmentation here
        assert c['dgm']['labels'] == [] and 'orientations.json' in c['dgm']['note']
    # tilts from the sidecars' B0_dir: 0, 15, 30 degrees (write_training_derivatives)
    assert [c['b0_tilt_deg'] for c in res['cases']] == pytest.approx([0.0, 15.0, 30.0],
                                                                      abs=1e-3)
    med = res['summary']['oracle']['median']
    assert med['nrmse'] == pytest.approx(0.0, abs=1e-9) and med['xsim'] == 1.0
    rel = res['relative_nrmse']['oracle']
    assert set(rel) == {'tkd', 'ilsqr'} and rel['ilsqr']['max'] == pytest.approx(0, abs=1e-9)
    assert res['notes'] and res['summary']['ilsqr']['n'] == 3
    assert all('iterations' in c['results']['ilsqr'] for c in res['cases'])
    table = format_table(res)
    assert 'oracle' in table and 'median (3)' in table and 'oracle < ' in table
    assert format_table(res, markdown=True).splitlines()[1].startswith('|---|')


def test_every_method_gets_the_same_inputs(synthetic):
    """The TKD row equals TKD run by hand on the files of that orientation."""
    res = evaluate(synthetic, ['tkd'], orientations=['ori02'])
    (c,) = res['cases']
    mask = np.asarray(nb.load(c['mask']).dataobj) > 0
    field = np.asarray(nb.load(c['field']).dataobj, np.float32) * mask
    label = np.asarray(nb.load(c['label']).dataobj, np.float32) * mask
    chi = tkd(field, voxel_size=c['voxel_size'], b0_direction=c['b0_direction'], mask=mask,
              demean=True)
    assert c['results']['tkd']['nrmse'] == pytest.approx(M.nrmse(chi, label, mask), rel=1e-9)
    assert c['eval_voxels'] == int(mask.sum())


def test_simulator_truth_dgm_labels_follow_the_tilted_head(tiny_dataset):
    root, _ = tiny_dataset
    res = evaluate(root, [ORACLE, Method('half', _scaled(0.5))],
                   orientations=['ori01', 'ori02'])
    truth = root / 'derivatives' / 'qsmprep-simulate' / 'sub-01'
    with (truth / 'sub-01_orientations.tsv').open() as f:
        tilts = {r['acq']: float(r['tilt_deg']) for r in csv.DictReader(f, delimiter='\t')}
    for c in res['cases']:
        assert c['head_tilt_deg'] == pytest.approx(tilts[c['orientation']], abs=1e-3)
        assert len(c['dgm']['labels']) >= 6  # the nuclei (1-14), never the veins (15)
        assert 15 not in c['dgm']['labels']
        assert c['results']['oracle']['dgm_slope'] == pytest.approx(1.0, abs=1e-9)
        assert c['results']['half']['dgm_slope'] == pytest.approx(0.5, abs=1e-9)
    assert res['cases'][1]['head_tilt_deg'] > 15


def test_dgm_labels_are_carried_onto_oblique_flipped_grids(tmp_path):
    """The reference brain mask, carried like the DGM labels onto a tilted acquisition with an
    oblique LAS grid, overlaps that acquisition's own brain mask; left where it is, it does not."""
    from qsmprep.simulate import simulate_dataset

    root = tmp_path / 'obl'
    simulate_dataset(root, preset='tiny', seed=5, orientations=2, oblique=15,
                     grid_orientation='LAS', jobs=1)
    _, specs, _ = discover(root, orientations=['ori02'])
    (spec,) = specs
    assert tilt_deg(spec.b0_direction) > 1.0 and spec.head_tilt_deg > 15  # oblique, tilted
    ref_mask = spec.dgm.replace('desc-dgm_dseg', 'desc-brain_mask')
    spec.dgm, spec.dgm_labels = ref_mask, (1,)
    case = spec.load()

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    raw = np.asarray(nb.load(ref_mask).dataobj) > 0
    assert dice(case.dgm == 1, case.eval_mask) > 0.95 > dice(raw, case.eval_mask) + 0.05
    res = evaluate(root, [ORACLE], orientations=['ori02'])
    assert res['cases'][0]['b0_tilt_deg'] == pytest.approx(tilt_deg(spec.b0_direction), abs=1e-3)


def _fake_pipeline(root, truth_anat, out, orientations):
    anat = out / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    masks = {}
    for ori in orientations:
        pre = f'sub-01_acq-{ori}'
        img = nb.load(str(truth_anat / f'{pre}_desc-brain_mask.nii.gz'))
        mask = ndimage.binary_erosion(np.asarray(img.dataobj) > 0, iterations=1)
        field = np.asarray(nb.load(str(truth_anat / f'{pre}_desc-local_field.nii.gz')
                                   ).dataobj) * mask
        nb.Nifti1Image(field.astype(np.float32), img.affine).to_filename(
            str(anat / contract.name('local_field', ori=pre)))
        nb.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(
            str(anat / contract.name('local_mask', ori=pre)))
        shutil.copy(truth_anat / f'{pre}_desc-local_field.json',
                    anat / contract.name('local_field', ori=pre).replace('.nii.gz', '.json'))
        masks[ori] = mask
    return masks


def test_pipeline_inputs_are_scored_inside_the_pipeline_mask(synthetic, tmp_path):
    truth_anat = synthetic / 'derivatives' / 'qsmprep-simulate' / 'sub-01' / 'anat'
    out = tmp_path / 'out' / 'qsmprep'
    masks = _fake_pipeline(synthetic, truth_anat, out, ['ori01', 'ori03'])
    res = evaluate(synthetic, [ORACLE, 'tkd'], inputs='pipeline', derivatives=out)
    assert res['inputs'] == 'pipeline' and res['derivatives'] == str(out.absolute())
    assert [c['orientation'] for c in res['cases']] == ['ori01', 'ori03']  # ori02: none
    for c in res['cases']:
        assert c['eval_voxels'] == int(masks[c['orientation']].sum())
        assert c['field'].startswith(str(out)) and c['results']['oracle']['nrmse'] == 0.0
    assert 'pipeline local mask' in res['evaluation_mask']
    with pytest.raises(MissingInputError) as err:
        evaluate(synthetic, ['tkd'], inputs='pipeline', derivatives=tmp_path / 'nothing')
    assert err.value.exit_code == 66
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(MissingInputError, match='no qsmprep local field matches'):
        evaluate(synthetic, ['tkd'], inputs='pipeline', derivatives=empty)


def test_qsm_forward_dataset(qsm_forward_dataset):
    res = evaluate(qsm_forward_dataset, [ORACLE, 'tkd', 'ilsqr'])
    assert res['generator'] == 'qsm-forward'
    assert [c['orientation'] for c in res['cases']] == ['axial', 'rotx1', 'roty1']
    assert [c['b0_tilt_deg'] for c in res['cases']] == pytest.approx([0, 25, 25], abs=1e-4)
    assert [c['head_tilt_deg'] for c in res['cases']] == pytest.approx([0, 25, 25], abs=1e-4)
    for c in res['cases']:
        assert c['field_source'].startswith('forward model')  # no _fieldmap-local saved
        assert c['results']['oracle']['nrmse'] == 0.0 and c['dgm']['labels'] == []
    assert res['ranking'][0] == 'oracle' and any('DGM labels 1-6' in n for n in res['notes'])


def test_qsm_forward_local_field_is_used_when_saved(tmp_path):
    qsm_forward = pytest.importorskip('qsm_forward')
    b0 = np.array([0.0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))])
    chi = qsm_forward.generate_susceptibility_phantom(
        resolution=[32, 32, 32], background=0, large_cylinder_val=0.005,
        small_cylinder_radii=[3, 3, 3, 5], small_cylinder_vals=[0.05, 0.1, 0.2, 0.5])
    recon = qsm_forward.ReconParams(
        subject='1', session=None, acq='tilt', run=None, TR=50e-3, TEs=np.array([0.004]),
        flip_angle=15, B0=3, B0_dir=b0, phase_offset=0, generate_phase_offset=False,
        generate_shim_field=False, voxel_size=np.array([1.0, 1.0, 1.0]), peak_snr=np.inf,
        random_seed=1, save_phase=True, suffix='MEGRE')
    qsm_forward.generate_bids(qsm_forward.TissueParams(chi=chi), recon, str(tmp_path / 'qf'),
                              save_field=True)
    _, (spec,), _ = discover(tmp_path / 'qf')
    assert spec.field.endswith('_fieldmap-local.nii') and spec.field_source == 'file'
    assert spec.b0_direction == pytest.approx(tuple(b0), abs=1e-7)
    case = spec.load()
    qf_field = np.asarray(nb.load(spec.field).dataobj) * case.mask
    np.testing.assert_array_equal(case.field, qf_field.astype(np.float32))


# --------------------------------------------------------------------------- command line

def test_cli_scores_tkd_and_ilsqr_and_writes_json(synthetic, tmp_path, capsys):
    out = tmp_path / 'res' / 'eval.json'
    assert main(['evaluate', 'tkd', str(synthetic), '--out', str(out),
                 '--orientation', 'ori01', 'ori02']) == 0
    text = capsys.readouterr().out
    assert 'ilsqr' in text and 'tkd' in text and 'median (2)' in text
    res = json.loads(out.read_text())
    assert [m['name'] for m in res['methods']] == ['tkd', 'ilsqr']
    assert res['format'] == 'qsmprep-evaluate/1' and len(res['cases']) == 2
    assert main(['evaluate', 'ilsqr', str(synthetic), '--no-baselines',
                 '--orientation', 'ori03', '--markdown']) == 0
    assert '| ori03 |' in capsys.readouterr().out


def test_cli_errors(synthetic, tmp_path, capsys):
    notmodel = tmp_path / 'notmodel'
    notmodel.mkdir()
    no_truth = tmp_path / 'raw'
    no_truth.mkdir()
    cases = [
        (['evaluate', str(tmp_path / 'missing'), str(synthetic)], 66, 'model not found'),
        (['evaluate', str(notmodel), str(synthetic)], 64, 'not a qsmprep model'),
        (['evaluate', 'tkd', str(no_truth)], 66, 'no ground truth'),
        (['evaluate', 'tkd', str(tmp_path / 'nodata')], 66, 'does not exist'),
        (['evaluate', 'tkd', str(synthetic), '--model', 'tkd'], 64, 'same name'),
        (['evaluate', 'tkd', str(synthetic), '--inputs', 'pipeline'], 66,
         'derivatives folder'),
        (['evaluate', 'tkd', str(synthetic), '--out', str(tmp_path)], 73, 'directory'),
        (['evaluate', 'tkd', str(synthetic), '--inputs', 'both'], 64, 'invalid choice'),
    ]
    for argv, code, msg in cases:
        assert main(argv) == code, argv
        assert msg in capsys.readouterr().err, argv
    (notmodel / 'model.json').write_text('{"kind": "fcn"}')
    assert main(['evaluate', str(notmodel), str(synthetic)]) == 64
    assert 'model.keras is missing' in capsys.readouterr().err


def test_without_tensorflow_baselines_work_and_models_say_how_to_install(synthetic, tmp_path,
                                                                         monkeypatch, capsys):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kw):
        return None if name in ('tensorflow', 'keras') else real(name, *args, **kw)

    monkeypatch.setattr(qsmprep.dl.importlib.util, 'find_spec', find_spec)
    model = tmp_path / 'model'
    model.mkdir()
    (model / 'model.json').write_text('{"kind": "fcn", "name": "fcn"}')
    (model / 'model.keras').write_bytes(b'')
    assert main(['evaluate', str(model), str(synthetic)]) == 69
    err = capsys.readouterr().err
    assert "pip install 'qsmprep[dl]'" in err and 'evaluate' in err
    assert main(['evaluate', 'tkd', str(synthetic), '--orientation', 'ori01']) == 0


def test_baselines_never_import_tensorflow(synthetic):
    code = ('import sys; from qsmprep.dl.evaluate import evaluate; '
            f'evaluate({str(synthetic)!r}, ["tkd", "ilsqr"], orientations=["ori01"]); '
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            'assert not bad, bad')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr


def test_trained_model_next_to_the_baselines(synthetic, dataset3d, tmp_path, capsys):
    pytest.importorskip('tensorflow')
    from qsmprep.dl.config import TrainConfig
    from qsmprep.dl.train import train

    model = tmp_path / 'fcn'
    train(dataset3d, model, TrainConfig(model='fcn', model_params={'width': 4, 'depth': 2},
                                        epochs=1, steps_per_epoch=2, batch_size=2,
                                        validation_batches=1))
    out = tmp_path / 'eval.json'
    assert main(['evaluate', str(model), str(synthetic), '--out', str(out), '--mode',
                 'whole', '--threads', '1', '--orientation', 'ori01', 'ori03']) == 0
    res = json.loads(out.read_text())
    name = json.loads((model / 'model.json').read_text()).get('name') or 'fcn'
    assert [m['name'] for m in res['methods']] == [name, 'tkd', 'ilsqr']
    assert [c['b0_tilt_deg'] for c in res['cases']] == pytest.approx([0, 30], abs=1e-3)
    meta = res['methods'][0]
    assert meta['kind'] == 'model' and meta['model_kind'] == 'fcn' and len(meta['sha256']) == 64
    for c in res['cases']:
        assert set(c['results']) == {name, 'tkd', 'ilsqr'}
        assert np.isfinite(c['results'][name]['nrmse'])
    assert set(res['relative_nrmse'][name]) == {'tkd', 'ilsqr'}
    assert name in capsys.readouterr().out
    # two models with one model.json name are told apart by their folders
    shutil.copytree(model, tmp_path / 'fcn-copy')
    res = evaluate(synthetic, [model, tmp_path / 'fcn-copy'], orientations=['ori02'],
                   mode='whole')
    assert [m['name'] for m in res['methods']] == ['fcn', 'fcn-copy']
    (c,) = res['cases']
    assert c['results']['fcn']['nrmse'] == c['results']['fcn-copy']['nrmse']
