"""Deep-learning timings (JSON): MoDL-QSM training step and 1 mm full-volume inference.

* training step: 48³ patches, batch 2, Adam, masked L1, after one warm-up (tracing) step;
  median of ``--repeats`` steps, for the default MoDL-QSM (U-Net denoiser, width 16), a
  small one (width 8) and (on a GPU, or with ``--paper``) the paper's ResNet denoiser
  (width 32, 8 blocks);
* inference: a 210×224×160 1 mm volume with a brain-sized ellipsoid mask (untrained weights:
  the cost does not depend on them), ``mode='whole'`` and ``mode='patches'`` (48³, overlap
  12), through :func:`qsmprep.dl.infer.predict_volume`.

Targets (issue 5): training step ≤ 0.5 s on CPU, inference ≤ 60 s on CPU.  Runs on the GPU
as well when TensorFlow sees one (``--device gpu``).

Usage::

    python benchmarks/bench_dl.py --out bench_dl.json [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def bench_train_step(params, *, repeats, patch=48, batch=2):
    import keras
    import tensorflow as tf

    from qsmprep.dl import losses
    from qsmprep.dl.models import build_modl

    keras.utils.set_random_seed(0)
    model = build_modl(channels=2, label_mean=[0.0, 0.0], label_std=[0.03, 0.005], **params)
    rng = np.random.default_rng(0)
    shape = (batch, patch, patch, patch)
    inputs = {'field': tf.constant(rng.normal(0, 0.01, (*shape, 1)), tf.float32),
              'mask': tf.ones((*shape, 1)),
              'b0': tf.constant([[0.0, 0.0, 1.0]] * batch),
              'voxel_size': tf.ones((batch, 3))}
    label = tf.constant(rng.normal(0, 0.03, (*shape, 2)), tf.float32)
    opt = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pred = model(inputs, training=True)
            loss = losses.masked_l1(label, pred, inputs['mask'], [0.03, 0.005])
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    t0 = time.perf_counter()
    float(step())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - t0)
    return {'params': int(model.count_params()), 'first_step_s': round(first, 2),
            'step_s': round(float(np.median(times)), 3), 'steps_s': [round(t, 3) for t in times]}


def bench_inference(params, *, modes):
    import keras

    from qsmprep.dl.infer import predict_volume
    from qsmprep.dl.models import build_modl

    keras.utils.set_random_seed(0)
    model = build_modl(channels=2, label_mean=[0.0, 0.0], label_std=[0.03, 0.005], **params)
    meta = {'inputs': ['field', 'mask', 'b0', 'voxel_size'],
            'inference': {'mode': 'patches', 'patch_shape': [48] * 3, 'overlap': [12] * 3,
                          'batch_size': 2, 'size_multiple': 2 ** params.get('levels', 0)}}
    mask = _brain()
    field = np.random.default_rng(1).normal(0, 0.02, mask.shape).astype(np.float32) * mask
    out = {'shape': list(mask.shape), 'mask_voxels': int(mask.sum())}
    for mode in modes:
        t0 = time.perf_counter()
        chi = predict_volume(model, meta, field, mask, mode=mode)
        out[f'{mode}_s'] = round(time.perf_counter() - t0, 2)
        assert chi.shape == mask.shape and np.isfinite(chi).all()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('bench_dl.json'))
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', choices=['cpu', 'gpu'], default='cpu')
    p.add_argument('--quick', action='store_true', help='whole-volume inference only')
    p.add_argument('--paper', action='store_true',
                   help='also time the paper-size ResNet denoiser on the CPU (needs more than '
                        '24 GB of memory for a 48³ batch-2 training step)')
    ns = p.parse_args(argv)
    if ns.device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1'
    from qsmprep.dl.train import configure_tensorflow

    configure_tensorflow(ns.threads)
    import keras
    import tensorflow as tf

    result = {
        'device': ns.device,
        'gpus': [d.name for d in tf.config.list_physical_devices('GPU')],
        'cpu_count': os.cpu_count(), 'threads': ns.threads,
        'load_average_before': list(os.getloadavg()),
        'platform': platform.platform(), 'tensorflow': tf.__version__,
        'keras': keras.__version__, 'targets': {'train_step_s': 0.5, 'inference_1mm_s': 60},
        'train_step_48cubed_batch2': {}, 'inference_1mm': {},
    }
    skip_paper = ns.device == 'cpu' and not ns.paper
    for name, params in CONFIGS.items():
        if skip_paper and 'paper' in name:
            continue
        r = bench_train_step(params, repeats=ns.repeats)
        result['train_step_48cubed_batch2'][name] = r
        ns.out.write_text(json.dumps(result, indent=2) + '\n')
        print(f'train step {name}: {r["step_s"]} s (first {r["first_step_s"]} s)', flush=True)
    for name, params in CONFIGS.items():
        if skip_paper and 'paper' in name:
            continue
        modes = ['whole'] if ns.quick else ['whole', 'patches']
        r = bench_inference(params, modes=modes)
        result['inference_1mm'][name] = r
        ns.out.write_text(json.dumps(result, indent=2) + '\n')
        print(f'inference {name}: {r}', flush=True)
    result['load_average_after'] = list(os.getloadavg())
    ns.out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'written {ns.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
