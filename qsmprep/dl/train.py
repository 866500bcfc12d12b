"""Resumable training loop (Keras 3 models, TensorFlow backend, custom loop).

Output folder (``out_dir``)::

    model.keras           the trained model (float32; the best validation epoch when there is
                          a validation split, else the last step)
    model.json            metadata: versions, model kind and parameters, normalisation,
                          geometry, inference defaults, training settings, metrics, dataset
    manifest.json         the training dataset's manifest (sources, split, seed, statistics)
    training_log.csv      one row per epoch (loss, validation loss/NRMSE/SSIM/HFEN, lr, time)
    steps.csv             one row per step (step, epoch, lr, loss)
    learning_curve.png    training and validation loss per epoch
    metrics.json          validation metrics of the exported model and of every epoch
    checkpoints/ckpt-NNNNNNNN/   model.weights.h5, optimizer.npz, state.json

Checkpoints are written every ``checkpoint_every`` steps, at each epoch end and when the
process receives SIGTERM or SIGINT (then :class:`TrainingInterrupted` is raised after the
checkpoint is on disk).  ``resume=True`` restores the newest complete checkpoint: weights,
every optimizer variable (Adam moments, iteration count, learning rate), the step, the
schedule state and the history; since the batch of each step depends only on
``(seed, step)``, the resumed run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from qsmprep.dl.config import TrainConfig, label_normalization
from qsmprep.dl.data import ShardReader, read_manifest
from qsmprep.utils.logs import IMPORTANT

LOGGER = logging.getLogger('qsmprep.dl')

__all__ = ['MODEL_FORMAT_VERSION', 'TrainingInterrupted', 'choose_strategy',
           'configure_tensorflow', 'latest_checkpoint', 'learning_rate', 'train']

MODEL_FORMAT_VERSION = 1


class TrainingInterrupted(RuntimeError):
    """Raised after the checkpoint written on SIGTERM/SIGINT is on disk."""

    def __init__(self, step: int, checkpoint: Path, signum: int):
        super().__init__(f'training interrupted by signal {signum} at step {step}; '
                         f'checkpoint {checkpoint} (continue with --resume)')
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


def configure_tensorflow(threads: int | None = None, *, quiet: bool = True,
                         onednn: bool = True) -> None:
    """Quiet TensorFlow's C++ logging, choose its CPU kernels and bound its thread pools.

    Call it before TensorFlow is imported: ``onednn`` sets the default of
    ``TF_ENABLE_ONEDNN_OPTS`` (an explicit value in the environment is kept), which
    TensorFlow reads once, at import.  By itself TensorFlow turns oneDNN on only on CPUs
    with AVX-512 VNNI/BF16 or AMX; elsewhere (AVX2 CPUs such as the 2-core development
    machine) it runs Eigen kernels, 2.5× slower for the 3D convolutions here and 3.5–11×
    for their gradients (MoDL-QSM training step, 48³ × 2, 2 threads: 6.1 s → 2.2 s;
    1 mm inference 23 s → 10 s; ``benchmarks/bench_dl.py``).  The results are the same to
    float32 rounding.
    """
    if quiet:
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if 'tensorflow' in sys.modules:
        LOGGER.debug('TensorFlow already imported: TF_ENABLE_ONEDNN_OPTS left as it was')
    else:
        os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1' if onednn else '0')
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # already initialised: keep the existing pools
            pass


def choose_strategy():
    """``MirroredStrategy`` for several GPUs, ``OneDeviceStrategy`` for one, else default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices('GPU')
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy('/gpu:0')
    return tf.distribute.get_strategy()


def _mixed_precision(setting: str) -> str:
    """Set and return the global Keras dtype policy for ``setting`` (auto/on/off)."""
    import keras
    import tensorflow as tf

    policy = 'float32'
    gpus = tf.config.list_physical_devices('GPU')
    if setting == 'on' or (setting == 'auto' and gpus):
        if not gpus:
            LOGGER.warning('mixed precision requested but no GPU is used: training in float32')
        else:
            cc = tf.config.experimental.get_device_details(gpus[0]).get('compute_capability')
            policy = 'mixed_bfloat16' if cc and cc[0] >= 8 else 'mixed_float16'
    keras.mixed_precision.set_global_policy(policy)
    return policy


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, *, scale: float = 1.0,
                  steps_per_epoch: int = 1) -> float:
    """Learning rate of ``step`` (0-based) for the schedule of ``cfg``.

    >>> cfg = TrainConfig(learning_rate=1e-3, lr_schedule='cosine', min_lr=0.0)
    >>> round(learning_rate(cfg, 0, 100), 6), round(learning_rate(cfg, 50, 100), 6)
    (0.001, 0.0005)
    """
    base = cfg.learning_rate
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == 'cosine':
        t0 = cfg.warmup_steps
        frac = (step - t0) / max(1, total_steps - t0)
        return cfg.min_lr + (base - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(frac, 1)))
    if cfg.lr_schedule == 'step':
        return base * cfg.lr_decay ** ((step // steps_per_epoch) // cfg.lr_step_epochs)
    if cfg.lr_schedule == 'plateau':
        return base * scale
    return base


# ---------------------------------------------------------------------------------------------
# checkpoints
def latest_checkpoint(out_dir) -> Path | None:
    """Newest complete checkpoint folder (one whose ``state.json`` exists) or None."""
    ckpts = sorted(Path(out_dir, 'checkpoints').glob('ckpt-*/state.json'))
    return ckpts[-1].parent if ckpts else None


def _save_checkpoint(out_dir: Path, model, optimizer, state: dict, keep: int) -> Path:
    root = out_dir / 'checkpoints'
    root.mkdir(parents=True, exist_ok=True)
    final = root / f'ckpt-{state["step"]:08d}'
    tmp = root / f'.tmp-{state["step"]:08d}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_weights(str(tmp / 'model.weights.h5'))
    np.savez(tmp / 'optimizer.npz',
             **{f'v{i:04d}': np.asarray(v) for i, v in enumerate(optimizer.variables)})
    (tmp / 'state.json').write_text(json.dumps(state, indent=1) + '\n')
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a checkpoint is either complete or absent
    for old in sorted(root.glob('ckpt-*'))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model, optimizer) -> dict:
    model.load_weights(str(path / 'model.weights.h5'))
    with np.load(path / 'optimizer.npz') as z:
        values = [z[k] for k in sorted(z.files)]
    if len(values) != len(optimizer.variables):
        raise ValueError(f'{path}: optimizer state has {len(values)} variables, the model '
                         f'needs {len(optimizer.variables)} (different model settings?)')
    for var, val in zip(optimizer.variables, values, strict=True):
        if tuple(var.shape) != val.shape:
            raise ValueError(f'{path}: optimizer variable {var.path} has shape {val.shape}, '
                             f'expected {tuple(var.shape)}')
        var.assign(val)
    return json.loads((path / 'state.json').read_text())


class _SignalGuard:
    """Turn SIGTERM/SIGINT into a flag checked after every step (main thread only)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        LOGGER.warning('signal %d received: checkpointing after this step', signum)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    with open(path, 'w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, history: list[dict]):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ep = [h['epoch'] for h in history]
    ax.plot(ep, [h['loss'] for h in history], 'o-', label='training')
    if any(h.get('val_loss') is not None for h in history):
        ax.plot(ep, [h.get('val_loss') for h in history], 's-', label='validation')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss (masked L1, normalised units)')
    ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ndim(manifest) -> int:
    return 3 if manifest['kind'] == 'patch3d' else 2


def _check_compatible(cfg: TrainConfig, manifest: dict):
    if cfg.model == 'modl' and manifest['kind'] != 'patch3d':
        raise ValueError('MoDL-QSM needs a 3D patch dataset (kind patch3d)')
    if cfg.model == 'swin' and manifest['kind'] != 'slice2d':
        raise ValueError('Swin-UNet needs a 2D slice dataset (kind slice2d)')


def _label_channels(cfg: TrainConfig, manifest: dict) -> int:
    return int(manifest['channels']) if cfg.model == 'modl' else 1


def _build(cfg: TrainConfig, manifest: dict):
    import keras

    from qsmprep.dl.models import build_model

    keras.utils.set_random_seed(int(cfg.seed))
    return build_model(cfg.model, manifest, **cfg.params)


def _eval_fn(model, cfg, scale):
    """Compiled ``(inputs, label) -> (loss, nrmse, ssim, hfen)`` (per-sample metrics)."""
    import tensorflow as tf

    from qsmprep.dl import losses

    @tf.function(reduce_retracing=True)
    def run(inputs, label):
        pred = model(inputs, training=False)
        m = inputs['mask']
        loss = losses.training_loss(label, pred, m, scale=scale,
                                    ssim_weight=cfg.loss_ssim_weight)
        return (loss, losses.nrmse(label, pred, m),
                losses.masked_ssim(label, pred, m, per_sample=True), losses.hfen(label, pred, m))

    return run


def _evaluate(run, reader, *, cfg, manifest, max_batches=None):
    """Mean validation loss and metrics over the validation split (None if empty)."""
    from qsmprep.dl.tfdata import make_dataset

    if reader is None or len(reader) == 0:
        return None
    ds = make_dataset(reader, batch_size=cfg.batch_size, shuffle=False,
                      label_channels=_label_channels(cfg, manifest))
    if max_batches:
        ds = ds.take(int(max_batches))
    tot = {'val_loss': 0.0, 'val_nrmse': 0.0, 'val_ssim': 0.0, 'val_hfen': 0.0}
    n_batches, n_samples = 0, 0
    for inputs, label in ds:
        loss, nr, ss, hf = (np.asarray(v) for v in run(inputs, label))
        tot['val_loss'] += float(loss)
        tot['val_nrmse'] += float(nr.sum())
        tot['val_ssim'] += float(ss.sum())
        tot['val_hfen'] += float(hf.sum())
        n_batches += 1
        n_samples += int(nr.shape[0])
    if not n_batches:
        return None
    out = {'val_loss': tot['val_loss'] / n_batches}
    for k in ('val_nrmse', 'val_ssim', 'val_hfen'):
        out[k] = tot[k] / n_samples
    return out


def train(dataset, out_dir, config: TrainConfig | None = None, *, resume: bool = False,
          stop_after: int | None = None, threads: int | None = None) -> dict:
    """Train ``config.model`` on a shard dataset and export it to ``out_dir``.

    Parameters
    ----------
    dataset : path or dict
        Dataset folder (or its manifest) from :func:`qsmprep.dl.data.build_dataset`.
    out_dir : path
        Model folder (module docstring).  Without ``resume`` it must not hold checkpoints.
    config : TrainConfig
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (same settings required; more
        ``epochs`` may be given to train longer).
    stop_after : int, optional
        Stop (with a checkpoint, as on SIGTERM) once this global step is reached — for
        tests and time-limited jobs.
    threads : int, optional
        TensorFlow intra-op threads.

    Returns
    -------
    dict
        The metadata written to ``model.json``.

    Raises
    ------
    TrainingInterrupted
        On SIGTERM/SIGINT or ``stop_after``, after the checkpoint is written.
    """
    configure_tensorflow(threads)
    import keras
    import tensorflow as tf

    from qsmprep import __version__
    from qsmprep.dl import losses
    from qsmprep.dl.tfdata import make_dataset

    cfg = config or TrainConfig()
    manifest = dataset if isinstance(dataset, dict) else read_manifest(dataset)
    _check_compatible(cfg, manifest)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise FileExistsError(f'{out_dir} already has checkpoints ({ckpt.name}): pass '
                              'resume=True (--resume) or choose a new output folder')
    train_reader = ShardReader(manifest, 'train')
    val_reader = ShardReader(manifest, 'validation')
    spe = int(cfg.steps_per_epoch or train_reader.steps_per_epoch(cfg.batch_size))
    total = spe * int(cfg.epochs)
    ch = _label_channels(cfg, manifest)
    scale = label_normalization(manifest, ch)[1]

    policy = _mixed_precision(cfg.mixed_precision)
    strategy = choose_strategy()
    with strategy.scope():
        model = _build(cfg, manifest)
        optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        if policy == 'mixed_float16':
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)

    state = {'step': 0, 'epoch': 0, 'lr_scale': 1.0, 'wait': 0, 'best': None,
             'best_epoch': None, 'history': [], 'steps': [], 'config': cfg.to_dict(),
             'dataset_seed': manifest['seed'], 'elapsed': 0.0}
    if ckpt is not None:
        prev = json.loads((ckpt / 'state.json').read_text())
        for key in ('model', 'model_params', 'batch_size', 'seed', 'steps_per_epoch'):
            if prev['config'].get(key) != cfg.to_dict().get(key):
                raise ValueError(f'cannot resume: {key} was {prev["config"].get(key)!r}, now '
                                 f'{cfg.to_dict().get(key)!r}')
        state = _load_checkpoint(ckpt, model, optimizer)
        state['config'] = cfg.to_dict()
        LOGGER.info('resumed from %s (step %d)', ckpt, state['step'])

    @tf.function(reduce_retracing=True)
    def train_step(inputs, label):
        def step_fn(inputs, label):
            with tf.GradientTape() as tape:
                pred = model(inputs, training=True)
                loss = losses.training_loss(label, pred, inputs['mask'], scale=scale,
                                            ssim_weight=cfg.loss_ssim_weight)
                scaled = loss / strategy.num_replicas_in_sync
                if policy == 'mixed_float16':
                    scaled = optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        per_replica = strategy.run(step_fn, args=(inputs, label))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    evaluator = _eval_fn(model, cfg, scale)

    def save(reason):
        state['elapsed'] = elapsed0 + time.time() - t_start
        path = _save_checkpoint(out_dir, model, optimizer, state, cfg.keep_checkpoints)
        LOGGER.info('checkpoint %s (%s)', path.name, reason)
        return path

    start = int(state['step'])
    elapsed0, t_start = float(state.get('elapsed', 0.0)), time.time()
    ds = make_dataset(train_reader, batch_size=cfg.batch_size, seed=cfg.seed,
                      start_step=start, steps=max(0, total - start), steps_per_epoch=spe,
                      label_channels=ch)
    if strategy.num_replicas_in_sync > 1:
        ds = strategy.experimental_distribute_dataset(ds)
    epoch_losses = [s['loss'] for s in state['steps'] if s['epoch'] == start // spe + 1]
    t_epoch = time.time()
    with _SignalGuard() as guard:
        for inputs, label in ds:
            step = int(state['step'])
            lr = learning_rate(cfg, step, total, scale=state['lr_scale'], steps_per_epoch=spe)
            optimizer.learning_rate = lr
            loss = float(train_step(inputs, label))
            if not math.isfinite(loss):
                raise FloatingPointError(f'loss became {loss} at step {step}; lower the '
                                         'learning rate')
            state['step'] = step + 1
            state['steps'].append({'step': step + 1, 'epoch': step // spe + 1, 'lr': lr,
                                   'loss': loss})
            epoch_losses.append(loss)
            if state['step'] % spe == 0:  # epoch end
                epoch = state['step'] // spe
                val = _evaluate(evaluator, val_reader, cfg=cfg, manifest=manifest,
                                max_batches=cfg.validation_batches)
                row = {'epoch': epoch, 'step': state['step'], 'lr': lr,
                       'loss': float(np.mean(epoch_losses)),
                       'time_s': round(time.time() - t_epoch, 3)}
                row.update(val or {})
                state['history'].append(row)
                crit = row.get('val_loss', row['loss'])
                if state['best'] is None or crit < state['best']:
                    state['best'], state['best_epoch'], state['wait'] = crit, epoch, 0
                    model.save_weights(str(out_dir / 'best.weights.h5'))
                else:
                    state['wait'] += 1
                    if cfg.lr_schedule == 'plateau' and state['wait'] % cfg.patience == 0:
                        state['lr_scale'] *= cfg.lr_decay
                state['epoch'] = epoch
                LOGGER.log(IMPORTANT, 'epoch %d/%d: loss %.4f%s (%.1f s)', epoch, cfg.epochs,
                           row['loss'], f", val_loss {row['val_loss']:.4f}, val_nrmse "
                           f"{row['val_nrmse']:.1f}%" if val else '', row['time_s'])
                epoch_losses, t_epoch = [], time.time()
                save('epoch end')
                if cfg.early_stopping and state['wait'] >= cfg.early_stopping:
                    LOGGER.info('early stopping after %d epochs without improvement',
                                state['wait'])
                    break
            else:
                if spe >= 8 and (state['step'] % spe) % (spe // 4) == 0:  # quarter epochs
                    LOGGER.log(IMPORTANT, 'epoch %d/%d: step %d/%d, loss %.4f',
                               state['step'] // spe + 1, cfg.epochs, state['step'] % spe, spe,
                               float(np.mean(epoch_losses)))
                if state['step'] % cfg.checkpoint_every == 0:
                    save('interval')
            if guard.signum is not None or (stop_after is not None
                                            and state['step'] >= stop_after):
                path = save('signal' if guard.signum is not None else 'stop_after')
                _write_logs(out_dir, state)
                raise TrainingInterrupted(state['step'], path, guard.signum or 0)
    LOGGER.debug('training step traced %d time(s)', train_step.experimental_get_tracing_count())
    _write_logs(out_dir, state)
    return _export(out_dir, cfg, manifest, model, state, policy=policy, strategy=strategy,
                   spe=spe, version=__version__, val_reader=val_reader, scale=scale)


def _write_logs(out_dir: Path, state: dict):
    _write_csv(out_dir / 'steps.csv', state['steps'])
    _write_csv(out_dir / 'training_log.csv', state['history'])
    _plot(out_dir / 'learning_curve.png', state['history'])


def _export(out_dir, cfg, manifest, model, state, *, policy, strategy, spe, version,
            val_reader, scale) -> dict:
    """Write ``model.keras`` (float32), its weights ``model.weights.h5`` and ``model.json``."""
    import keras
    import tensorflow as tf

    best = out_dir / 'best.weights.h5'
    keras.mixed_precision.set_global_policy('float32')
    final = _build(cfg, manifest)
    if policy == 'float32' and (not val_reader or len(val_reader) == 0 or not best.is_file()):
        final.set_weights(model.get_weights())
    else:
        src = model
        if best.is_file() and val_reader is not None and len(val_reader):
            src.load_weights(str(best))
        final.set_weights([np.asarray(w, np.float32) for w in src.get_weights()])
    final.save(str(out_dir / 'model.keras'))
    final.save_weights(str(out_dir / 'model.weights.h5'))  # for other frameworks / rebuilds
    rows = [h for h in state['history'] if h['epoch'] == state['best_epoch']]
    if policy == 'float32' and rows and 'val_loss' in rows[0]:
        # the exported weights are those validated at the best epoch: reuse its numbers
        val = {k: rows[0][k] for k in ('val_loss', 'val_nrmse', 'val_ssim', 'val_hfen')}
    else:
        val = _evaluate(_eval_fn(final, cfg, scale), val_reader, cfg=cfg, manifest=manifest,
                        max_batches=cfg.validation_batches)
    metrics = {'validation': val, 'best_epoch': state['best_epoch'],
               'ssim': 'masked Gaussian SSIM (sigma 1.5, K 0.01/0.03, L = label range)',
               'nrmse': '100 |M(x-y)| / |My|, channel 0', 'hfen': 'LoG sigma 1.5, 2016 kernel',
               'epochs': state['history']}
    (out_dir / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    man = {k: v for k, v in manifest.items() if not k.startswith('_')}
    (out_dir / 'manifest.json').write_text(json.dumps(man, indent=2) + '\n')
    ndim = _ndim(manifest)
    geom = manifest['geometry']
    if ndim == 3:
        patch = list(geom['patch_shape'])
        trim = int(cfg.params.get('depth', 3)) if cfg.model == 'fcn' else 0
        inference = {'mode': 'patches', 'patch_shape': patch,
                     'overlap': [max(2 * trim + 1, p // 4) for p in patch], 'trim': trim,
                     'batch_size': 1,
                     'size_multiple': 2 ** int(cfg.params.get('levels', 0))
                     if cfg.model == 'modl' and cfg.params.get('denoiser') == 'unet' else 1}
    else:
        trim = int(cfg.params.get('depth', 3)) if cfg.model == 'fcn' else 0
        inference = {'mode': 'slices', 'crop': list(geom['crop']), 'axis': 2,
                     'overlap': [max(2 * trim + 1, c // 4) for c in geom['crop']],
                     'trim': trim, 'batch_size': 8,
                     'size_multiple': 1}
    meta = {
        'format_version': MODEL_FORMAT_VERSION,
        'name': {'modl': 'modl', 'swin': 'swinunet', 'fcn': 'fcn'}[cfg.model],
        'kind': cfg.model,
        'ndim': ndim,
        'model_file': 'model.keras',
        'model_params': cfg.params,
        'inputs': list(final.input.keys()) if isinstance(final.input, dict) else None,
        'output_channels': _label_channels(cfg, manifest),
        'label_channels': manifest['label_channels'][:_label_channels(cfg, manifest)],
        'units': 'ppm',
        'normalization': manifest['normalization'],
        'geometry': geom,
        'inference': inference,
        'training': {'config': cfg.to_dict(), 'steps': state['step'],
                     'epochs': state['epoch'], 'steps_per_epoch': spe,
                     'best_epoch': state['best_epoch'], 'mixed_precision': policy,
                     'strategy': type(strategy).__name__,
                     'replicas': int(strategy.num_replicas_in_sync),
                     'elapsed_s': round(float(state.get('elapsed', 0.0)), 1)},
        'dataset': {'manifest': 'manifest.json', 'kind': manifest['kind'],
                    'seed': manifest['seed'], 'split': manifest['split'],
                    'counts': manifest['counts'], 'source': manifest.get('source')},
        'metrics': val,
        'versions': {'qsmprep': version, 'tensorflow': tf.__version__,
                     'keras': keras.__version__},
    }
    (out_dir / 'model.json').write_text(json.dumps(meta, indent=2) + '\n')
    return meta
