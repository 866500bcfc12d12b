"""Deep-learning timings (JSON): MoDL-QSM training step and 1 mm full-volume inference.

* training step: 48³ patches, batch 2, Adam, masked L1, after one warm-up (tracing) step;
  median of ``--repeats`` steps, for the default MoDL-QSM (U-Net denoiser, width 16), a
  small one (width 8) and (on a GPU, or with ``--paper``) the paper's ResNet denoiser
  (width 32, 8 blocks);
* inference: a 210×224×160 1 mm volume with a brain-sized ellipsoid mask (untrained weights:
  the cost does not depend on them), ``mode='whole'`` and ``mode='patches'`` (48³, overlap
  12), through :func:`qsmprep.dl.infer.predict_volume`;
* breakdown of the default model's step (``--breakdown``): the data-consistency part alone
  (dipole kernel and the 3 gradient steps, forward and backward: 10 rfft/irfft pairs on the
  96³ grid), one pass of the CNN forward and backward, and the Adam update, each timed on
  its own (median of ``--repeats``).

TensorFlow's CPU kernels are oneDNN's by default here (``--onednn on``, set through
:func:`qsmprep.dl.train.configure_tensorflow` before TensorFlow is imported); ``--onednn off``
gives the Eigen kernels (with :class:`qsmprep.dl.layers.FastConv3D`'s own convolution
gradients), the configuration before oneDNN was enabled.  ``--baseline`` also runs the same
timings (no breakdown) with ``--onednn off`` in a child process, back to back with the main
run, and stores them under ``baseline_onednn_off``.  The load average is recorded around every
measurement: the development machine is shared.

Targets (issue 5): training step ≤ 0.5 s on CPU, inference ≤ 60 s on CPU.  Runs on the GPU
as well when TensorFlow sees one (``--device gpu``).

Usage::

    python benchmarks/bench_dl.py --out bench_dl.json [--threads 2] [--quick] [--breakdown]
        [--baseline] [--onednn on|off] [--train-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    'modl-unet16 (default)': {'denoiser': 'unet', 'width': 16, 'levels': 2},
    'modl-unet8 (small)': {'denoiser': 'unet', 'width': 8, 'levels': 2},
    'modl-resnet32x8 (paper)': {'denoiser': 'resnet', 'width': 32, 'blocks': 8},
}


def _brain(shape=(210, 224, 160), radii=(70, 85, 65)):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    r = sum(((gi - n / 2) / a) ** 2 for gi, n, a in zip(g, shape, radii, strict=True))
    return r <= 1.0


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def _median_time(fn, repeats):
    """``(first, median, all)`` wall times of ``fn()`` (its result fetched), after one
    warm-up call (``first``, tracing included)."""
    t0 = time.perf_counter()
    np.asarray(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), times


def _train_inputs(patch, batch):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shape = (batch, patch, patch, patch)
    inputs = {'field': tf.constant(rng.normal(0, 0.01, (*shape, 1)), tf.float32),
              'mask': tf.ones((*shape, 1)),
              'b0': tf.constant([[0.0, 0.0, 1.0]] * batch),
              'voxel_size': tf.ones((batch, 3))}
    label = tf.constant(rng.normal(0, 0.03, (*shape, 2)), tf.float32)
    return inputs, label


def _modl(params):
    import keras

    from qsmprep.dl.models import build_modl

    keras.utils.set_random_seed(0)
    return build_modl(channels=2, label_mean=[0.0, 0.0], label_std=[0.03, 0.005], **params)


def bench_train_step(params, *, repeats, patch=48, batch=2):
    import keras
    import tensorflow as tf

    from qsmprep.dl import losses

    model = _modl(params)
    inputs, label = _train_inputs(patch, batch)
    opt = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pred = model(inputs, training=True)
            loss = losses.masked_l1(label, pred, inputs['mask'], [0.03, 0.005])
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    load = _load()
    first, med, times = _median_time(step, repeats)
    return {'params': int(model.count_params()), 'first_step_s': round(first, 2),
            'step_s': round(med, 3), 'steps_s': [round(t, 3) for t in times],
            'load_average_before': load, 'load_average_after': _load()}


def bench_breakdown(params, *, repeats, patch=48, batch=2):
    """Pieces of one training step, each timed on its own (module docstring)."""
    import keras
    import tensorflow as tf

    model = _modl(params)
    inputs, _ = _train_inputs(patch, batch)
    iterations = int(params.get('iterations', 3))
    kernel_layer = model.get_layer('dipole_kernel')
    step_layer = model.get_layer('gradient_step')
    cnn = model.get_layer('denoiser')
    field, mask = inputs['field'], inputs['mask']

    @tf.function
    def data_consistency():
        # the unrolled data steps with the CNN replaced by the identity: the same FFTs
        # forward and backward as in a training step (x⁰ = 0 needs no backward FFTs)
        with tf.GradientTape() as tape:
            kernel = kernel_layer([field, inputs['b0'], inputs['voxel_size']])
            x = tf.zeros((batch, patch, patch, patch, 2))
            for _ in range(iterations):
                x = step_layer([x, field, mask, kernel]) * mask
            s = tf.reduce_sum(x * x)
        return tape.gradient(s, step_layer.t)

    z = tf.constant(np.random.default_rng(1).normal(size=(batch, patch, patch, patch, 2)),
                    tf.float32)

    @tf.function
    def cnn_pass():
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = cnn(z, training=True)
            s = tf.reduce_sum(y * y)
        grads = tape.gradient(s, [z, *cnn.trainable_variables])
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    grads = [tf.fill(v.shape, 1e-3) for v in model.trainable_variables]

    @tf.function
    def adam():
        opt.apply(grads, model.trainable_variables)
        return opt.iterations

    load = _load()
    out = {}
    for name, fn in (('data_consistency_s', data_consistency), ('cnn_pass_s', cnn_pass),
                     ('adam_s', adam)):
        out[name] = round(_median_time(fn, repeats)[1], 3)
    out['cnn_passes'] = iterations
    out['load_average_before'], out['load_average_after'] = load, _load()
    return out


def bench_inference(params, *, modes):
    from qsmprep.dl.infer import predict_volume

    model = _modl(params)
    meta = {'inputs': ['field', 'mask', 'b0', 'voxel_size'],
            'inference': {'mode': 'patches', 'patch_shape': [48] * 3, 'overlap': [12] * 3,
                          'batch_size': 2, 'size_multiple': 2 ** params.get('levels', 0)}}
    mask = _brain()
    field = np.random.default_rng(1).normal(0, 0.02, mask.shape).astype(np.float32) * mask
    out = {'shape': list(mask.shape), 'mask_voxels': int(mask.sum()),
           'load_average_before': _load()}
    for mode in modes:
        t0 = time.perf_counter()
        chi = predict_volume(model, meta, field, mask, mode=mode)
        out[f'{mode}_s'] = round(time.perf_counter() - t0, 2)
        assert chi.shape == mask.shape and np.isfinite(chi).all()
    out['load_average_after'] = _load()
    return out


def _baseline(ns) -> dict:
    """The same timings with ``--onednn off``, in a child process (TensorFlow reads the
    setting once, at import)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'baseline.json'
        cmd = [sys.executable, __file__, '--out', str(out), '--onednn', 'off',
               '--repeats', str(ns.repeats), '--device', ns.device]
        if ns.threads:
            cmd += ['--threads', str(ns.threads)]
        cmd += [f'--{k.replace("_", "-")}' for k in ('paper', 'quick', 'train_only')
                if getattr(ns, k)]
        subprocess.run(cmd, check=True)
        res = json.loads(out.read_text())
    keys = ('onednn', 'load_average_before', 'train_step_48cubed_batch2', 'inference_1mm',
            'load_average_after')
    return {k: res[k] for k in keys if k in res}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('bench_dl.json'))
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', choices=['cpu', 'gpu'], default='cpu')
    p.add_argument('--onednn', choices=['on', 'off'], default='on',
                   help='TensorFlow oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS)')
    p.add_argument('--quick', action='store_true', help='whole-volume inference only')
    p.add_argument('--train-only', action='store_true', help='no inference timings')
    p.add_argument('--breakdown', action='store_true',
                   help="time the pieces of the default model's training step")
    p.add_argument('--baseline', action='store_true',
                   help='also run the timings with --onednn off first (child process)')
    p.add_argument('--paper', action='store_true',
                   help='also time the paper-size ResNet denoiser on the CPU (needs more than '
                        '24 GB of memory for a 48³ batch-2 training step)')
    ns = p.parse_args(argv)
    if ns.device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1'
    if 'TF_ENABLE_ONEDNN_OPTS' in os.environ:
        p.error('unset TF_ENABLE_ONEDNN_OPTS and use --onednn')
    baseline = _baseline(ns) if ns.baseline else None
    from qsmprep.dl.train import configure_tensorflow

    configure_tensorflow(ns.threads, onednn=ns.onednn == 'on')
    import keras
    import tensorflow as tf

    from qsmprep.dl.layers import onednn_enabled

    result = {
        'device': ns.device,
        'gpus': [d.name for d in tf.config.list_physical_devices('GPU')],
        'cpu_count': os.cpu_count(), 'threads': ns.threads,
        'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
        'inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
        'onednn': onednn_enabled(),
        'load_average_before': _load(),
        'platform': platform.platform(), 'tensorflow': tf.__version__,
        'keras': keras.__version__, 'targets': {'train_step_s': 0.5, 'inference_1mm_s': 60},
        'repeats': ns.repeats,
        'train_step_48cubed_batch2': {},
    }
    if baseline:
        result['baseline_onednn_off'] = baseline
    skip_paper = ns.device == 'cpu' and not ns.paper
    configs = {k: v for k, v in CONFIGS.items() if not (skip_paper and 'paper' in k)}

    def write():
        ns.out.write_text(json.dumps(result, indent=2) + '\n')

    for name, params in configs.items():
        r = bench_train_step(params, repeats=ns.repeats)
        result['train_step_48cubed_batch2'][name] = r
        write()
        print(f'train step {name}: {r["step_s"]} s (first {r["first_step_s"]} s, load '
              f'{r["load_average_before"][0]})', flush=True)
    if ns.breakdown:
        name, params = next(iter(CONFIGS.items()))
        r = bench_breakdown(params, repeats=ns.repeats)
        result['train_step_breakdown'] = {'config': name, **r}
        write()
        print(f'breakdown {name}: {r}', flush=True)
    if not ns.train_only:
        result['inference_1mm'] = {}
        for name, params in configs.items():
            modes = ['whole'] if ns.quick else ['whole', 'patches']
            r = bench_inference(params, modes=modes)
            result['inference_1mm'][name] = r
            write()
            print(f'inference {name}: {r}', flush=True)
    result['load_average_after'] = _load()
    write()
    print(f'written {ns.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
