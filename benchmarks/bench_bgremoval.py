"""Benchmark the background-removal methods on simulated ground truth, writing JSON.

For each simulated case (``qsmprep.simulate``; default the ``demo`` preset, 2 mm, and a
1.5×1.5×2 mm 7 T case with the realistic effects), the true total field of one orientation
is ``desc-local_field + desc-background_field`` from ``derivatives/qsmprep-simulate`` and the
true brain mask is ``desc-brain_mask``.  Every method of
:data:`qsmprep.numerics.bgremoval.METHODS` (defaults, plus iSMV with the CG solver) runs
on that field (float32, as in the pipeline) with two masks: the true brain mask, and that
mask eroded by 2 voxels (the pipeline's ``--mask-erosion`` default).  Recorded per method:

* ``nrmse`` / ``nrmse_demeaned`` (%): ``100‖f_L − f_true‖/‖f_true‖`` inside the output mask
  (demeaned: both means over the output mask removed first);
* ``coverage``: fraction of the true brain inside the output mask;
* ``rms_error_deep`` / ``rms_error_edge`` (ppm): rms of ``f_L − f_true`` in the output
  mask, more than 10 mm / less than 3 mm from the edge of the true brain (``null`` where the
  output mask has no such voxels), with the rms of the true local field there for scale;
* ``time_s``: median wall time of ``--repeats`` calls (the machine is shared: compare
  methods within one run only).

Usage::

    python benchmarks/bench_bgremoval.py --out benchmarks/results/bgremoval.json \\
        [--cases demo 7t-aniso] [--repeats 3] [--work /tmp/bench_bgremoval]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

CASES = {
    'demo': {'preset': 'demo', 'orientations': 1},
    # 7 T, 1.5×1.5×2 mm, realistic air cavities/body (the worst case)
    '7t-aniso': {'preset': '7t', 'orientations': 1},
}
METHOD_RUNS = {
    'vsharp': ('vsharp', {}),
    'ismv': ('ismv', {}),
    'ismv-cg': ('ismv', {'solver': 'cg'}),
    'ismv-qsmjl': ('ismv', {'tol': 1e-3, 'maxit': 500}),   # QSM.jl's stopping rule
    'pdf': ('pdf', {}),
    'lbv': ('lbv', {}),
    'resharp': ('resharp', {}),
    'resharp-tuned': ('resharp', {'alpha': 1e-3, 'tol': 1e-4, 'maxit': 200}),
}


def _simulate(case, work):
    from qsmprep.simulate import simulate_dataset

    root = Path(work) / case
    if not (root / 'dataset_description.json').exists():
        cfg = CASES[case]
        simulate_dataset(root, preset=cfg['preset'], orientations=cfg['orientations'],
                         seed=0, overwrite=root.exists(), jobs=1)
    return root


def _truth(root):
    import numpy as np

    from qsmprep.numerics.geometry import voxel_sizes
    from qsmprep.utils.images import load

    truth = root / 'derivatives' / 'qsmprep-simulate' / 'sub-01' / 'anat'
    stem = 'sub-01_acq-ori01_desc-'
    loc, affine, _ = load(truth / f'{stem}local_field.nii.gz', dtype=np.float32)
    bg = load(truth / f'{stem}background_field.nii.gz', dtype=np.float32)[0]
    brain = load(truth / f'{stem}brain_mask.nii.gz')[0] > 0
    meta = json.loads((truth / f'{stem}local_field.json').read_text())
    b0 = meta.get('B0_dir', [0.0, 0.0, 1.0])
    return loc, bg, brain, tuple(float(v) for v in voxel_sizes(affine)), b0


def _rms(x):
    import numpy as np

    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else None


def _metrics(out, out_mask, loc, brain, dist):
    import numpy as np

    m = out_mask & brain
    e, t = out[m].astype(np.float64), loc[m].astype(np.float64)
    ed, td = e - e.mean(), t - t.mean()
    err = e - t
    deep, edge = dist[m] > 10.0, dist[m] < 3.0
    return {
        'nrmse': round(100 * float(np.linalg.norm(err) / np.linalg.norm(t)), 2),
        'nrmse_demeaned': round(100 * float(np.linalg.norm(ed - td) / np.linalg.norm(td)), 2),
        'coverage': round(float(m.sum() / brain.sum()), 4),
        'rms_error_deep': _rms(err[deep]),
        'rms_error_edge': _rms(err[edge]),
        'rms_local_deep': _rms(t[deep]),
        'rms_local_edge': _rms(t[edge]),
        'output_voxels': int(out_mask.sum()),
        'outside_brain_voxels': int((out_mask & ~brain).sum()),
    }


def run_case(case, work, repeats, methods):
    import numpy as np
    from scipy import ndimage

    from qsmprep.numerics import bgremoval

    root = _simulate(case, work)
    loc, bg, brain, vs, b0 = _truth(root)
    total = (loc + bg).astype(np.float32)
    dist = ndimage.distance_transform_edt(brain, sampling=vs)
    masks = {'brain': brain,
             'eroded2': bgremoval.erode_mask(brain, voxels=2)}
    result = {'shape': list(brain.shape), 'voxel_size_mm': list(vs), 'b0_direction': b0,
              'brain_voxels': int(brain.sum()),
              'rms_local_in_brain': _rms(loc[brain]), 'rms_background_in_brain':
              _rms(bg[brain]), 'conditions': {}}
    for cond, mask in masks.items():
        rows = {}
        for label in methods:
            name, kw = METHOD_RUNS[label]
            fn = bgremoval.METHODS[name]
            kw = dict(kw)
            if name == 'pdf':
                kw['b0_direction'] = b0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out, om = fn(total, mask, voxel_size=vs, **kw)
                times.append(time.perf_counter() - t0)
            assert (out[~om] == 0).all()
            row = _metrics(out, om, loc, brain, dist)
            row['time_s'] = round(statistics.median(times), 3)
            rows[label] = row
            print(f'{case:9s} {cond:8s} {label:8s} NRMSE {row["nrmse"]:7.2f} % '
                  f'(demeaned {row["nrmse_demeaned"]:7.2f} %) coverage {row["coverage"]:.3f}'
                  f' deep {row["rms_error_deep"] or float("nan"):.4f} edge '
                  f'{row["rms_error_edge"] or float("nan"):.4f} ppm  {row["time_s"]:.2f} s',
                  flush=True)
        result['conditions'][cond] = rows
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='benchmarks/results/bgremoval.json')
    ap.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    ap.add_argument('--methods', nargs='+', default=list(METHOD_RUNS),
                    choices=list(METHOD_RUNS))
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--work', default='/tmp/bench_bgremoval',
                    help='where the simulated datasets are written (reused if present)')
    args = ap.parse_args(argv)
    import numpy as np
    import scipy

    from qsmprep.numerics import fft

    out = {'benchmark': 'bgremoval', 'repeats': args.repeats,
           'python': platform.python_version(), 'numpy': np.__version__,
           'scipy': scipy.__version__, 'fft_workers': fft.workers(),
           'methods': {k: {'function': v[0], 'options': v[1]} for k, v in METHOD_RUNS.items()
                       if k in args.methods},
           'cases': {}}
    for case in args.cases:
        out['cases'][case] = run_case(case, args.work, args.repeats, args.methods)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
