"""The cluster path on a real scheduler: Nipype's SLURM plugin gives the MultiProc results.

A participant run of the simulator's ``tiny`` dataset goes through ``--use-plugin`` with
``plugin: SLURM`` on a single-node SLURM cluster started on this machine (see conftest.py and
slurm_setup.sh): every non-trivial node is an ``sbatch`` job.  Its outputs must equal those of
a MultiProc run of the same command, in the image's environment (one BLAS/ITK thread per
process).  The training recipe of docs/hpc.md (bids_app/slurm/train_requeue.sbatch) is run on
the same cluster, with a stand-in trainer (checkpoint on SIGTERM, requeue, resume, give up
after MAX_RESTARTS) and with the real ``qsmprep … group --resume`` of the script training a
small model on synthetic derivatives across a requeue.
"""

from __future__ import annotations

import getpass
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1200
#: The thread settings of the container image (Dockerfile ENV), applied to both runs.
IMAGE_THREADS = dict(re.findall(r'\b(\w+_THREADS)=(\d+)', (ROOT / 'Dockerfile').read_text()))

#: The SLURM plugin file documented in docs/hpc.md.
PLUGIN_FILE = ROOT / 'bids_app' / 'slurm' / 'nipype_slurm.yml'


def _run(cmd, env, cwd):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))}\n{proc.stdout[-4000:]}\n' \
                                 f'{proc.stderr[-8000:]}'
    return proc


def _outputs(root: Path) -> dict[str, Path]:
    """Output files by relative path, without the per-run logs (settings, log file, file
    list: their names carry the run's time stamp and UUID)."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob('*')) if p.is_file()
            and not re.search(r'/log/qsmprep_[^/]+\.(toml|log|txt)$', p.as_posix())}


def test_image_threads_are_read_from_the_dockerfile():
    assert IMAGE_THREADS.get('OMP_NUM_THREADS') == '1'
    assert IMAGE_THREADS.get('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS') == '1'


@pytest.mark.slurm
@pytest.mark.slow
def test_participant_run_through_slurm_equals_multiproc(slurm_cluster, tmp_path):
    from qsmprep.simulate import simulate_dataset

    bids = tmp_path / 'bids'
    simulate_dataset(bids, preset='tiny', seed=0, jobs=1)
    truth = bids / 'derivatives' / 'qsmprep-simulate'  # true masks: skips the slow Python BET
    plugin = PLUGIN_FILE

    env = dict(slurm_cluster.env, **IMAGE_THREADS)
    # Nipype's SLURM plugin names jobs after $LOGNAME and fails without it (CI may not set it)
    env.setdefault('LOGNAME', getpass.getuser())
    base = [sys.executable, '-m', 'qsmprep.cli.run', str(bids)]
    common = ['participant', '--skip-bids-validation', '--derivatives', str(truth),
              '--nprocs', '2', '--omp-nthreads', '1']
    _run([*base, str(tmp_path / 'out_multiproc'), *common, '-w',
          str(tmp_path / 'work_multiproc')], env, tmp_path)
    _run([*base, str(tmp_path / 'out_slurm'), *common, '-w', str(tmp_path / 'work_slurm'),
          '--use-plugin', str(plugin)], env, tmp_path)

    # the SLURM run really went through the scheduler: one batch job per submitted node
    scripts = list((tmp_path / 'work_slurm').rglob('batchscript_*.sh'))
    assert len(scripts) >= 20, 'expected the processing nodes to be submitted with sbatch'
    launched = (slurm_cluster.state / 'slurmd.log').read_text().count('Launching batch job')
    assert launched >= len(scripts)
    assert list((tmp_path / 'work_slurm').rglob('slurm-*.out'))
    assert not list((tmp_path / 'work_multiproc').rglob('batchscript_*.sh'))

    ref = _outputs(tmp_path / 'out_multiproc')
    got = _outputs(tmp_path / 'out_slurm')
    assert set(got) == set(ref)
    nifti = [k for k in ref if k.endswith(('.nii.gz', '.nii'))]
    assert any('sti_tensor' in k for k in nifti) and any('cosmos_Chimap' in k for k in nifti)
    for rel in nifti:
        a, b = nib.load(ref[rel]), nib.load(got[rel])
        np.testing.assert_allclose(b.affine, a.affine, rtol=0, atol=1e-9, err_msg=rel)
        x, y = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
        assert x.shape == y.shape and x.dtype == y.dtype, rel
        if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
            np.testing.assert_array_equal(y, x, err_msg=rel)
        else:
            assert np.allclose(y, x, rtol=1e-6, atol=1e-9, equal_nan=True), (
                f'{rel}: max |SLURM - MultiProc| = {np.nanmax(np.abs(y - x)):.3g}')
    for rel in ref:
        if rel.endswith('.json'):
            assert json.loads(got[rel].read_text()) == json.loads(ref[rel].read_text()), rel
        elif rel.endswith('_xfm.txt'):
            assert got[rel].read_text() == ref[rel].read_text(), rel


# ------------------------------------------------------------------------------------------
# Training across time limits: bids_app/slurm/train_requeue.sbatch on the real scheduler, with
# a stand-in trainer that checkpoints on SIGTERM and resumes from its checkpoint.
FAKE_TRAINER = '''\
import json, signal, sys, time
from pathlib import Path
ckpt = Path(sys.argv[1]); total = int(sys.argv[2])
step = json.loads(ckpt.read_text())['step'] if ckpt.exists() else 0
print(f'resume at step {step}' if step else 'fresh start', flush=True)
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
while step < total and not stop:
    time.sleep(0.25)
    step += 1
    ckpt.write_text(json.dumps({'step': step}))
print(f'checkpoint at step {step}' + (' (SIGTERM)' if stop else ' done'), flush=True)
sys.exit(0 if step >= total else 3)
'''
TRAIN_SCRIPT = ROOT / 'bids_app' / 'slurm' / 'train_requeue.sbatch'


def _training_job(tmp_path, total):
    """train_requeue.sbatch with the trainer replaced and small resources (1 CPU, 10 min)."""
    (tmp_path / 'trainer.py').write_text(FAKE_TRAINER)
    text = TRAIN_SCRIPT.read_text()
    assert re.search(r'^cmd=\(.*?\)$', text, re.M | re.S), 'the script defines cmd=(...)'
    text = re.sub(r'^cmd=\(.*?\)$', f'cmd=({sys.executable} {tmp_path / "trainer.py"} '
                  f'{tmp_path / "ckpt.json"} {total})', text, flags=re.M | re.S)
    for old, new in (('--time=12:00:00', '--time=00:10:00'), ('--mem=64G', '--mem=500M'),
                     ('--cpus-per-task=8', '--cpus-per-task=1'),
                     ('--output=qsmprep-train-%j.out', f'--output={tmp_path}/train-%j.out')):
        assert old in text, old
        text = text.replace(old, new)
    text = re.sub(r'^#SBATCH --gres=gpu:1\n', '', text, flags=re.M)
    assert '#SBATCH --signal=B:TERM@' in text and '#SBATCH --requeue' in text
    job = tmp_path / 'train.sbatch'
    job.write_text(text)
    return job


def _scontrol(job_id, env) -> dict[str, str]:
    out = subprocess.run(['scontrol', 'show', 'job', job_id], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return dict(re.findall(r'(\w+)=(\S*)', out))


def _wait(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


def _submit(job, env, extra_env=None):
    proc = subprocess.run(['sbatch', '--parsable', str(job)], env=dict(env, **(extra_env or {})),
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip().split(';')[0]


@pytest.mark.slurm
@pytest.mark.slow
def test_training_job_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """SIGTERM to the batch shell (what --signal=B:TERM@120 sends before the time limit) →
    the trainer checkpoints → the job requeues itself → the rerun resumes and finishes."""
    env, total = slurm_cluster.env, 40
    job_id = _submit(_training_job(tmp_path, total), env)
    ckpt = tmp_path / 'ckpt.json'
    _wait(lambda: ckpt.exists() and json.loads(ckpt.read_text())['step'] >= 3, 60,
          'the trainer to make progress')
    subprocess.run(['scancel', '--batch', '--signal=TERM', job_id], env=env, check=True,
                   timeout=30)
    info = _wait(lambda: (lambda i: i if i['JobState'] == 'COMPLETED' else None)(
        _scontrol(job_id, env)), 180, 'the requeued job to finish')
    assert info['Restarts'] == '1' and info['ExitCode'] == '0:0'
    log = (tmp_path / f'train-{job_id}.out').read_text()
    interrupted = int(re.search(r'checkpoint at step (\d+) \(SIGTERM\)', log).group(1))
    assert 0 < interrupted < total
    assert f'resume at step {interrupted}' in log
    assert f'checkpoint at step {total} done' in log
    assert 'requeueing job' in log and 'trainer finished (exit 0)' in log
    assert json.loads(ckpt.read_text())['step'] == total


@pytest.mark.slurm
@pytest.mark.slow
def test_training_job_stops_after_max_restarts(slurm_cluster, tmp_path):
    env, total = slurm_cluster.env, 400
    job_id = _submit(_training_job(tmp_path, total), env, {'MAX_RESTARTS': '0'})
    ckpt = tmp_path / 'ckpt.json'
    _wait(lambda: ckpt.exists(), 60, 'the trainer to start')
    subprocess.run(['scancel', '--batch', '--signal=TERM', job_id], env=env, check=True,
                   timeout=30)
    info = _wait(lambda: (lambda i: i if i['JobState'] in ('COMPLETED', 'FAILED') else None)(
        _scontrol(job_id, env)), 60, 'the job to end')
    assert info['Restarts'] == '0'
    log = (tmp_path / f'train-{job_id}.out').read_text()
    assert 'giving up after 0 restarts' in log and 'requeueing' not in log
    assert 0 < json.loads(ckpt.read_text())['step'] < total


def _qsmprep_group_argv(text, bids, work):
    """The script's qsmprep arguments (after the image) with this machine's paths."""
    cmd = re.search(r'^cmd=\((.*?)\)$', text, re.M | re.S).group(1)
    tokens = shlex.split(cmd.replace('\\\n', ' '), posix=True)
    args = tokens[next(i for i, t in enumerate(tokens) if t.endswith('.sif')) + 1:]
    assert args[:3] == ['/data/bids', '/data/bids/derivatives/qsmprep', 'group'], args
    assert '--resume' in args and '-w' in args, args
    where = {'/data/bids': bids, '/data/bids/derivatives/qsmprep': bids / 'derivatives' /
             'qsmprep', '$SCRATCH/qsmprep_train': work}
    return [str(where.get(a, a)) for a in args]


@pytest.mark.slurm
@pytest.mark.slow
def test_training_recipe_with_qsmprep_group_resumes_across_a_requeue(slurm_cluster, tmp_path):
    """The script's own ``qsmprep … group --resume`` (without the container) trains a small
    model; SIGTERM as at the time limit → checkpoint, exit 143 → requeue → the rerun resumes
    from that checkpoint and completes every step."""
    pytest.importorskip('tensorflow')
    from qsmprep.io.testing import write_training_derivatives

    bids = tmp_path / 'bids'
    bids.mkdir()
    out = bids / 'derivatives' / 'qsmprep'
    write_training_derivatives(out, subjects=2, orientations=2)
    qsmprep = Path(sys.executable).with_name('qsmprep')
    epochs, steps = 20, 40
    argv = [str(qsmprep), *_qsmprep_group_argv(TRAIN_SCRIPT.read_text(), bids,
                                               tmp_path / 'work'),
            '-v', '--omp-nthreads', '1', '--dl-model', 'fcn',
            '--dl-model-params', '{"width": 4, "depth": 1}', '--dl-patch-size', '16',
            '--dl-epochs', str(epochs), '--dl-steps-per-epoch', str(steps),
            '--dl-checkpoint-every', '5']
    job = _training_job(tmp_path, 0)
    text = re.sub(r'^cmd=\(.*?\)$', f'cmd=({shlex.join(argv)})', job.read_text(),
                  flags=re.M | re.S)
    job.write_text(text)
    env = dict(slurm_cluster.env, CUDA_VISIBLE_DEVICES='-1', TF_CPP_MIN_LOG_LEVEL='2',
               OMP_NUM_THREADS='1')
    job_id = _submit(job, env)
    ckpts = out / 'models' / 'fcn' / 'checkpoints'
    _wait(lambda: any(ckpts.glob('ckpt-*/state.json')), 300, 'the first checkpoint')
    subprocess.run(['scancel', '--batch', '--signal=TERM', job_id], env=env, check=True,
                   timeout=30)
    info = _wait(lambda: (lambda i: i if i['JobState'] in ('COMPLETED', 'FAILED') else None)(
        _scontrol(job_id, env)), 600, 'the requeued job to finish')
    log = (tmp_path / f'train-{job_id}.out').read_text()
    assert info['JobState'] == 'COMPLETED' and info['Restarts'] == '1', log[-3000:]
    assert 'trainer stopped (exit 143)' in log and 'requeueing job' in log, log[-3000:]
    saved = re.search(r'checkpoint ckpt-(\d+) \(signal', log)
    resumed = re.search(r'resumed from \S*ckpt-(\d+) \(step (\d+)\)', log)
    assert saved and resumed, log[-3000:]
    assert int(resumed.group(2)) == int(saved.group(1)) > 0
    assert 'trainer finished (exit 0)' in log
    meta = json.loads((out / 'models' / 'fcn' / 'model.json').read_text())
    assert meta['training']['steps'] == epochs * steps
    assert int(saved.group(1)) < epochs * steps
