"""Training loop: outputs, kill-and-resume equivalence, schedule."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

from qsmprep.dl.config import TrainConfig  # noqa: E402
from qsmprep.dl.train import (  # noqa: E402
    TrainingInterrupted,
    latest_checkpoint,
    learning_rate,
    train,
)

SMALL = {'width': 4, 'levels': 1, 'iterations': 2, 'margin': 8}


def _cfg(**kw):
    base = {'model': 'modl', 'model_params': SMALL, 'epochs': 2, 'steps_per_epoch': 3,
            'batch_size': 2, 'checkpoint_every': 2, 'learning_rate': 3e-3, 'seed': 1,
            'validation_batches': 2}
    return TrainConfig(**{**base, **kw})


def _losses(path):
    with open(path / 'steps.csv') as fh:
        return [float(r['loss']) for r in csv.DictReader(fh)]


def _weights(path):
    model = keras.models.load_model(path / 'model.keras', compile=False)
    return model.get_weights()


def test_learning_rate_schedules():
    cfg = TrainConfig(learning_rate=1.0, lr_schedule='cosine', min_lr=0.0, warmup_steps=10)
    assert learning_rate(cfg, 0, 110) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 110) == pytest.approx(1.0)
    assert learning_rate(cfg, 110, 110) == pytest.approx(0.0)
    step = TrainConfig(learning_rate=1.0, lr_schedule='step', lr_step_epochs=2, lr_decay=0.5)
    assert learning_rate(step, 39, 100, steps_per_epoch=10) == 0.5
    plateau = TrainConfig(lr_schedule='plateau', learning_rate=1e-3)
    assert learning_rate(plateau, 5, 10, scale=0.25) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match='model'):
        TrainConfig(model='unet3000')


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, dataset3d):
    full = tmp_path / 'full'
    meta = train(dataset3d, full, _cfg())
    # the outputs of a finished run
    for name in ('model.keras', 'model.json', 'manifest.json', 'training_log.csv', 'steps.csv',
                 'learning_curve.png', 'metrics.json'):
        assert (full / name).is_file(), name
    assert meta['training']['steps'] == 6 and meta['kind'] == 'modl'
    assert meta['normalization'] == json.loads((full / 'manifest.json').read_text())[
        'normalization']
    assert set(meta['metrics']) == {'val_loss', 'val_nrmse', 'val_ssim', 'val_hfen'}
    assert meta['inference']['patch_shape'] == [16, 16, 16]
    assert json.loads((full / 'metrics.json').read_text())['best_epoch'] in (1, 2)
    assert (full / 'learning_curve.png').read_bytes()[:4] == b'\x89PNG'

    part = tmp_path / 'part'
    with pytest.raises(TrainingInterrupted) as err:
        train(dataset3d, part, _cfg(), stop_after=4)  # "killed" in epoch 2, between intervals
    assert err.value.step == 4 and latest_checkpoint(part).name == 'ckpt-00000004'
    assert not (part / 'model.keras').exists()
    with pytest.raises(FileExistsError):
        train(dataset3d, part, _cfg())  # refuses to silently restart
    with pytest.raises(ValueError, match='batch_size'):
        train(dataset3d, part, _cfg(batch_size=1), resume=True)
    train(dataset3d, part, _cfg(), resume=True)
    np.testing.assert_allclose(_losses(part), _losses(full), rtol=1e-5)
    hist = [json.loads((d / 'metrics.json').read_text())['epochs'] for d in (part, full)]
    assert [h['loss'] for h in hist[0]] == pytest.approx([h['loss'] for h in hist[1]],
                                                         rel=1e-5)
    for a, b in zip(_weights(part), _weights(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # a fresh run without the checkpoint differs (the test can fail)
    assert not np.allclose(_losses(full)[:2], _losses(full)[2:4])


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume(tmp_path, dataset3d):
    """A real signal: the CLI writes a checkpoint, exits 128 + 15, and --resume finishes."""
    out = tmp_path / 'model'
    cmd = [sys.executable, '-m', 'qsmprep.cli.train', 'fit', str(dataset3d), str(out),
           '--model', 'fcn', '--model-params', '{"width": 4, "depth": 2}', '--epochs', '40',
           '--steps-per-epoch', '5', '--checkpoint-every', '1', '--threads', '1',
           '--validation-batches', '1']
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '-1', 'TF_CPP_MIN_LOG_LEVEL': '2'}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while latest_checkpoint(out) is None and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.2)
    assert latest_checkpoint(out) is not None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    state = json.loads((latest_checkpoint(out) / 'state.json').read_text())
    assert 1 <= state['step'] < 200 and b'--resume' in err
    done = subprocess.run([*cmd, '--resume', '--epochs', str(state['step'] // 5 + 1)],
                          env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads((out / 'model.json').read_text())['training']['steps'] == \
        5 * (state['step'] // 5 + 1)
