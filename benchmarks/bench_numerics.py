"""Benchmark the numerics core at 210×224×160, float32 (issue budgets), writing JSON.

Each step runs in its own subprocess (so its peak memory, ``ru_maxrss``, is its own),
``--repeats`` times; the median wall time, the FFT count of one call and the peak resident
memory are recorded.  Budgets (2-core CPU): Laplacian unwrap ≤ 0.5 s/echo, V-SHARP (9 radii)
≤ 2 s, TKD ≤ 0.2 s, COSMOS (18 orientations) ≤ 1.5 s, STI (18) ≤ 10 s and ≤ 6 GB (both
unregularised and with the pipeline's anisotropy penalty).

Usage::

    python benchmarks/bench_numerics.py --out benchmarks/results/numerics.json [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SHAPE = (210, 224, 160)
BUDGETS = {'unwrap_wrapped_difference': 0.5, 'unwrap_sin_cos': 0.5, 'vsharp_9_radii': 2.0,
           'tkd': 0.2, 'cosmos_18': 1.5, 'sti_18': 10.0, 'sti_18_regularized': 10.0}
MEMORY_BUDGET_GB = {'sti_18': 6.0, 'sti_18_regularized': 6.0}


def _orientations(n, rng):
    import numpy as np

    dirs = [np.array([0.0, 0.0, 1.0])]
    while len(dirs) < n:
        tilt = np.deg2rad(rng.uniform(15, 40))
        az = rng.uniform(0, 2 * np.pi)
        dirs.append(np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az),
                              np.cos(tilt)]))
    return np.array(dirs)


def _brain_mask():
    import numpy as np

    x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    c = [s / 2 for s in SHAPE]
    return (((x - c[0]) / 70) ** 2 + ((y - c[1]) / 85) ** 2 + ((z - c[2]) / 65) ** 2) <= 1


def _setup(step):
    import numpy as np

    rng = np.random.default_rng(0)
    mask = _brain_mask()
    field = (rng.standard_normal(SHAPE) * 0.02).astype(np.float32)
    if step.startswith('unwrap'):
        from qsmprep.numerics.unwrap import laplacian_unwrap

        x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        phase = (20 * np.exp(-((x - 105) ** 2 + (y - 112) ** 2 + (z - 80) ** 2) / 2000.0))
        wrapped = np.angle(np.exp(1j * phase)).astype(np.float32)
        method = 'wrapped-difference' if 'wrapped' in step else 'sin-cos'
        return lambda: laplacian_unwrap(wrapped, voxel_size=1.0, mask=mask, method=method)
    if step == 'vsharp_9_radii':
        from qsmprep.numerics.bgremoval import vsharp

        return lambda: vsharp(field, mask, voxel_size=(1.0, 1.0, 1.0))
    if step == 'tkd':
        from qsmprep.numerics.inversion import tkd

        return lambda: tkd(field, voxel_size=1.0, b0_direction=(0.0, 0.38, 0.925))
    b0 = _orientations(18, rng)
    fields = (rng.standard_normal((*SHAPE, 18)) * 0.02).astype(np.float32)
    if step == 'cosmos_18':
        from qsmprep.numerics.sti import cosmos

        return lambda: cosmos(fields, b0, voxel_size=1.0, mask=mask)
    if step == 'sti_18':
        from qsmprep.numerics.sti import fit_sti

        return lambda: fit_sti(fields, b0, voxel_size=1.0, mask=mask).tensor
    if step == 'sti_18_regularized':  # the participant pipeline's default
        from qsmprep.numerics.sti import fit_sti

        return lambda: fit_sti(fields, b0, voxel_size=1.0, mask=mask, tikhonov=0.3,
                               regularizer='anisotropy').tensor
    raise ValueError(step)


def _child(step, repeats):
    from qsmprep.numerics.fft import count_ffts

    fn = _setup(step)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with count_ffts() as counter:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ffts = dict(counter)
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'times_s': times, 'ffts': ffts, 'peak_rss_gb': peak / 1024**2,
                      'inputs_rss_gb': base_rss / 1024**2}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='benchmarks/results/numerics.json')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--steps', nargs='*', default=list(BUDGETS))
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.repeats)
        return 0
    results = {}
    for step in args.steps:
        proc = subprocess.run([sys.executable, __file__, '--child', step, '--repeats',
                               str(args.repeats)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r['median_s'] = statistics.median(r['times_s'])
        r['budget_s'] = BUDGETS.get(step)
        r['within_time_budget'] = r['median_s'] <= BUDGETS[step]
        if step in MEMORY_BUDGET_GB:
            r['memory_budget_gb'] = MEMORY_BUDGET_GB[step]
            r['within_memory_budget'] = r['peak_rss_gb'] <= MEMORY_BUDGET_GB[step]
        results[step] = r
        print(f"{step:28s} median {r['median_s']:.3f} s (budget {r['budget_s']} s)  "
              f"FFTs {r['ffts'].get('total', 0):3d}  peak {r['peak_rss_gb']:.2f} GB", flush=True)
    out = {'shape': SHAPE, 'dtype': 'float32', 'repeats': args.repeats,
           'cpu_count': os.cpu_count(), 'machine': platform.machine(),
           'python': platform.python_version(), 'steps': results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as fh:
        json.dump(out, fh, indent=2)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
