"""Inference: sliding windows vs whole volume with a trained stand-in, NIfTI in/out, the
``qsmprep-train`` CLI, the Nipype node, the participant workflow block and the group level."""

import json
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from qsmprep.cli.train import main as train_main  # noqa: E402
from qsmprep.dl.config import TrainConfig  # noqa: E402
from qsmprep.dl.data import find_pairs, load_pair  # noqa: E402
from qsmprep.dl.infer import load_model, predict_file, predict_volume  # noqa: E402
from qsmprep.dl.train import train  # noqa: E402


@pytest.fixture(scope='module')
def fcn_model(tmp_path_factory, dataset3d):
    out = tmp_path_factory.mktemp('fcn') / 'model'
    train(dataset3d, out, TrainConfig(model='fcn', model_params={'width': 4, 'depth': 2},
                                      epochs=1, steps_per_epoch=2, batch_size=2,
                                      validation_batches=1))
    return out


def test_patches_equal_whole_volume_for_fully_convolutional_model(fcn_model, derivatives):
    model, meta = load_model(fcn_model)
    assert meta['inference']['trim'] == 2 and meta['kind'] == 'fcn'
    pair = find_pairs(derivatives)[0]
    field, mask, _ = load_pair(pair)
    whole = predict_volume(model, meta, field, mask, mode='whole')
    patches = predict_volume(model, meta, field, mask, mode='patches', patch_shape=(12,) * 3,
                             overlap=(6,) * 3, batch_size=2)
    assert np.any(whole != 0) and np.all(whole[~mask] == 0)
    np.testing.assert_allclose(patches, whole, rtol=1e-4, atol=1e-5 * np.abs(whole).max())


def test_predict_file_and_cli(tmp_path, fcn_model, derivatives):
    pair = find_pairs(derivatives)[1]
    out = predict_file(fcn_model, pair.field, tmp_path / 'chi.nii.gz', mask_file=pair.mask)
    img = nb.load(out)
    assert img.shape == pair.shape and np.allclose(img.affine, nb.load(pair.field).affine)
    side = json.loads((tmp_path / 'chi.json').read_text())
    assert side['Units'] == 'ppm' and np.allclose(side['B0_dir'], pair.b0_direction)
    rc = train_main(['predict', str(fcn_model), pair.field, str(tmp_path / 'cli.nii.gz'),
                     '--mask', pair.mask, '--mode', 'whole'])
    assert rc == 0
    np.testing.assert_allclose(nb.load(tmp_path / 'cli.nii.gz').get_fdata(), img.get_fdata(),
                               atol=1e-5 * np.abs(img.get_fdata()).max())
    assert train_main(['predict', str(tmp_path / 'nope'), pair.field, 'x.nii.gz']) == 66


def test_predict_node(tmp_path, fcn_model, derivatives, monkeypatch):
    from qsmprep.interfaces.dl import PredictChimap, model_description

    pair = find_pairs(derivatives)[0]
    monkeypatch.chdir(tmp_path)
    node = PredictChimap(in_file=pair.field, in_mask=pair.mask, model=str(fcn_model),
                         b0_direction=list(pair.b0_direction), mode='whole')
    res = node.run()
    chi = nb.load(res.outputs.out_file).get_fdata()
    model, meta = load_model(fcn_model)
    field, mask, _ = load_pair(pair)
    ref = predict_volume(model, meta, field, mask, mode='whole')
    np.testing.assert_allclose(chi, ref, atol=1e-6 + 1e-5 * np.abs(ref).max())
    assert model_description(fcn_model)[0] == 'fcn'
    for name, trait in PredictChimap.input_spec().traits().items():
        if not name.startswith('trait_') and name not in ('trait_added', 'trait_modified'):
            assert trait.desc, name


def test_participant_workflow_gets_a_dl_node(tmp_path, fcn_model):
    from qsmprep.io.bids import collect_subjects
    from qsmprep.io.testing import make_megre_dataset
    from qsmprep.workflows.base import init_single_subject_wf
    from qsmprep.workflows.participant import workflow_options

    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01', 'ori02'])
    subject = collect_subjects(root)[0]
    opts = workflow_options(SimpleNamespace(mask_method='python', registration='sitk',
                                            model=fcn_model))
    assert opts['model'] == str(fcn_model)
    wf = init_single_subject_wf(subject, output_dir=tmp_path / 'out', bids_dir=root,
                                options=opts)
    names = set(wf.list_node_names())
    assert {'predict_acq_ori01', 'predict_acq_ori02'} <= names
    sink = wf.get_node('ds_acq_ori01_wf.ds_chimap_fcn')
    assert sink.inputs.out_path.endswith('sub-01_acq-ori01_desc-fcn_Chimap.nii.gz')
    assert sink.inputs.metadata['Units'] == 'ppm'
    wf._create_flat_graph()
    plain = init_single_subject_wf(subject, output_dir=tmp_path / 'o2', bids_dir=root)
    assert not any(n.startswith('predict_') for n in plain.list_node_names())


def test_group_level_trains_into_the_derivatives(tmp_path, write_derivatives):
    from qsmprep.workflows.group import run_group

    out = tmp_path / 'out'
    write_derivatives(out / 'qsmprep', subjects=2, orientations=2)
    (out / 'qsmprep' / '.bidsignore').write_text('logs/\n')
    settings = SimpleNamespace(output_dir=out, work_dir=tmp_path / 'work', dl_model='fcn',
                               dl_model_params={'width': 4, 'depth': 1}, dl_epochs=1,
                               dl_steps_per_epoch=2, dl_patch_size=16, omp_nthreads=1,
                               participant_labels=None)
    assert run_group(settings) == 0
    model_dir = out / 'qsmprep' / 'models' / 'fcn'
    meta = json.loads((model_dir / 'model.json').read_text())
    assert meta['dataset']['split']['validation'] and meta['training']['steps'] == 2
    assert 'models/' in (out / 'qsmprep' / '.bidsignore').read_text()
    # a second run refuses to overwrite; --dl-resume continues (nothing left to do)
    from qsmprep.io.errors import UsageError

    with pytest.raises(UsageError):
        run_group(settings)
    settings.resume = True
    assert run_group(settings) == 0


def test_group_level_from_the_command_line(tmp_path, monkeypatch, capsys, write_derivatives):
    """``qsmprep bids out group --dl-*``: options reach the trainer; no overwrite without
    --resume; --resume with more epochs continues; unknown model parameters are refused (64)."""
    from qsmprep.cli.run import main

    monkeypatch.chdir(tmp_path)
    bids = tmp_path / 'bids'
    bids.mkdir()
    out = bids / 'derivatives' / 'qsmprep'
    write_derivatives(out, subjects=2, orientations=2)
    argv = [str(bids), str(out), 'group', '-w', str(tmp_path / 'work'), '--omp-nthreads', '1',
            '--dl-model', 'fcn', '--dl-model-params', '{"width": 4, "depth": 1}',
            '--dl-epochs', '1', '--dl-steps-per-epoch', '2', '--dl-patch-size', '16',
            '--dl-batch-size', '1', '--dl-learning-rate', '5e-4', '--dl-lr-schedule',
            'constant', '--dl-seed', '3', '--dl-checkpoint-every', '1', '--dl-name', 'tiny']
    assert main(argv) == 0
    model_dir = out / 'models' / 'tiny'
    meta = json.loads((model_dir / 'model.json').read_text())
    cfg = meta['training']['config']
    assert (cfg['model'], cfg['seed'], cfg['batch_size'], cfg['learning_rate'],
            cfg['lr_schedule'], cfg['checkpoint_every']) == ('fcn', 3, 1, 5e-4, 'constant', 1)
    assert cfg['model_params'] == {'width': 4, 'depth': 1}
    assert meta['training']['steps'] == 2
    assert meta['geometry']['patch_shape'] == [16, 16, 16]
    capsys.readouterr()

    assert main(argv) == 64
    assert '--resume' in capsys.readouterr().err
    assert main([*argv, '--resume', '--dl-epochs', '2']) == 0
    meta = json.loads((model_dir / 'model.json').read_text())
    assert meta['training']['steps'] == 4

    bad = [*argv[:-1], 'other', '--dl-model-params', '{"widht": 4}']
    assert main(bad) == 64
    err = capsys.readouterr().err
    assert 'widht is not a parameter of the fcn model' in err and '"width"' in err
    assert not (out / 'models' / 'other').exists()
