"""Group level on defaults: automatic patch size, no-sample and missing-TensorFlow errors,
training progress at the default verbosity."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

import qsmprep.dl
from qsmprep.dl import TensorFlowMissingError
from qsmprep.io.errors import DataError
from qsmprep.utils.logs import IMPORTANT
from qsmprep.workflows.group import auto_patch_size, dataset_options, run_group


def test_auto_patch_size_follows_voxel_size_and_brain_extent():
    # ≈ 96 mm of tissue, a multiple of 8, in [16, 64]
    for vs in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0):
        n = auto_patch_size(vs)
        assert n % 8 == 0 and 16 <= n <= 64
        if 16 < n < 64:
            assert abs(n * vs - 96) <= 4 * vs  # nearest multiple of 8 voxels
    assert auto_patch_size(2.0) == 48 and auto_patch_size(0.5) == 64 and auto_patch_size(8) == 16
    # never larger than the smallest brain extent (rounded down to a multiple of 8)
    assert auto_patch_size(1.0, brain_extent=(100, 37, 120)) == 32
    assert auto_patch_size(1.0, brain_extent=(10, 10, 10)) == 16  # floor
    # anisotropic voxels: the coarsest axis decides
    assert auto_patch_size((1.0, 1.0, 2.0)) == auto_patch_size(2.0)


def test_dataset_options_pick_the_patch_size_from_the_data(tmp_path, write_derivatives):
    from qsmprep.dl.data import find_pairs

    root = write_derivatives(tmp_path / 'qsmprep', subjects=1, orientations=1)
    pairs = find_pairs(root)
    mask = np.asarray(nib.load(pairs[0].mask).dataobj) > 0
    idx = np.argwhere(mask)
    extent = idx.max(0) - idx.min(0) + 1
    opts = dataset_options(SimpleNamespace(), pairs)
    assert opts['patch_shape'] == [auto_patch_size(pairs[0].voxel_size, extent)] * 3
    assert dataset_options(SimpleNamespace(dl_patch_size=24), pairs)['patch_shape'] == [24] * 3
    assert dataset_options(SimpleNamespace(dl_model='swin'), pairs)['crop'] == [128, 128]


def _settings(tmp_path, **kw):
    return SimpleNamespace(output_dir=tmp_path / 'out', work_dir=tmp_path / 'work',
                           dl_model='fcn', dl_model_params={'width': 4, 'depth': 1},
                           dl_epochs=1, dl_steps_per_epoch=2, omp_nthreads=1,
                           participant_labels=None, **kw)


def test_no_training_sample_is_a_data_error(tmp_path, write_derivatives, monkeypatch):
    monkeypatch.setattr(qsmprep.dl, 'require_tensorflow', lambda what=None: None)
    root = write_derivatives(tmp_path / 'out' / 'qsmprep', subjects=1, orientations=2)
    for path in root.rglob('*_desc-local_mask.nii.gz'):  # one voxel: no patch is inside
        img = nib.load(path)
        data = np.zeros(img.shape, np.uint8)
        data[tuple(s // 2 for s in img.shape)] = 1
        nib.save(nib.Nifti1Image(data, img.affine), path)
    with pytest.raises(DataError) as info:
        run_group(_settings(tmp_path, dl_patch_size=16))
    err = info.value
    assert err.exit_code == 65
    assert 'no training sample passed the filters' in str(err) and '--dl-patch-size' in str(err)
    assert not (tmp_path / 'work' / 'dl_dataset' / 'patch3d').exists()  # nothing half-written


def _without_tensorflow(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kw):
        return None if name in ('tensorflow', 'keras') else real(name, *args, **kw)

    monkeypatch.setattr(qsmprep.dl.importlib.util, 'find_spec', find_spec)


def test_missing_tensorflow_gives_the_install_hint(tmp_path, write_derivatives, monkeypatch,
                                                   capsys):
    write_derivatives(tmp_path / 'out' / 'qsmprep', subjects=1, orientations=1)
    _without_tensorflow(monkeypatch)
    with pytest.raises(TensorFlowMissingError) as info:
        run_group(_settings(tmp_path))
    assert info.value.exit_code == 69
    assert "pip install 'qsmprep[dl]'" in str(info.value)
    assert not (tmp_path / 'work').exists()  # checked before anything is written

    from qsmprep.cli.train import main

    (tmp_path / 'ds').mkdir()
    assert main(['fit', str(tmp_path / 'ds'), str(tmp_path / 'model')]) == 69
    err = capsys.readouterr().err
    assert "pip install 'qsmprep[dl]'" in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


def test_training_progress_at_the_default_verbosity(tmp_path, dataset3d, caplog):
    pytest.importorskip('tensorflow')
    from qsmprep.dl.config import TrainConfig
    from qsmprep.dl.train import train

    cfg = TrainConfig(model='fcn', model_params={'width': 4, 'depth': 1}, epochs=1,
                      steps_per_epoch=8, batch_size=2, seed=0, validation_batches=1)
    with caplog.at_level(IMPORTANT, logger='qsmprep'):
        train(dataset3d, tmp_path / 'model', cfg, threads=1)
    text = [r.getMessage() for r in caplog.records if r.levelno >= IMPORTANT]
    assert [t for t in text if t.startswith('epoch 1/1: step ')] == [
        m for m in text if 'step' in m and 'loss' in m]
    steps = [int(t.split('step ')[1].split('/')[0]) for t in text if 'step ' in t]
    assert steps == [2, 4, 6]  # quarter epochs (the last quarter is the epoch line)
    assert any(t.startswith('epoch 1/1: loss ') for t in text)
