"""What each realism effect of the simulator does to the gap to the oracle (issue 10).

For the 2 mm ``demo`` preset with 6 orientations (seed 0), simulate with no effects, each
effect alone and all of them (``realism='realistic'``), run the actual participant pipeline
on each dataset (``qsmprep BIDS OUT participant --participant-label 01 -w WORK --nprocs 1``,
defaults otherwise) and score, per orientation:

* ``bg_std_ppm`` / ``bg_rms_ppm``: demeaned / raw rms of the true background field inside
  the true brain mask (the mean is unmeasurable);
* ``local_nrmse_pct``: NRMSE (%, both demeaned) of qsmprep's ``desc-local_field`` against
  the true ``desc-local_field`` inside qsmprep's local mask (``desc-local_mask``);
* ``local_energy_ratio``: ``‖local_qsmprep‖ / ‖local_true‖`` in that mask (demeaned);
* ``poly2_removed_pct``: share of the error energy a 2nd-order polynomial fit removes
  (large: smooth residual background; small: non-smooth error);
* ``oracle_vsharp_nrmse_pct``: V-SHARP (:func:`qsmprep.numerics.bgremoval.vsharp`, default
  radii) on the **true total field** in the true brain mask eroded by 2 voxels (the
  pipeline's default erosion), scored the same way: background removal alone, with perfect
  phase processing and mask;

and per dataset χ33 (STI) and COSMOS NRMSE from
:func:`qsmprep.reports.evaluation.evaluate_subject` (vs the true χ33), plus the simulation
and pipeline wall times.  Medians over the orientations are reported.

Usage (≈ 2–4 min per configuration on 2 cores)::

    python benchmarks/sim_effects.py --out benchmarks/results/sim_effects.json \\
        --work /tmp/sim-effects [--configs none body all]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Configuration name → simulation overrides (on top of preset demo, 6 orientations).
CONFIGS = {
    'none': {},
    'air': {'air_cavities': 'extended'},
    'body': {'body': True},
    'dephasing': {'dephasing': True},
    'receiver_nonharmonic': {'receiver_nonharmonic': 3.0},
    'coil_phase': {'coil_phase': 0.1},
    'bias_quantisation': {'bias_field': 0.2, 'phase_units': 'arbitrary',
                          'magnitude_dtype': 'int16'},
    'all': {'realism': 'realistic'},
}


def _load(path):
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def _nrmse(x, y, m):
    xc, yc = x[m] - x[m].mean(), y[m] - y[m].mean()
    return float(100 * np.linalg.norm(xc - yc) / np.linalg.norm(yc)), \
        float(np.linalg.norm(xc) / np.linalg.norm(yc))


def _poly2_removed(err, m):
    idx = np.argwhere(m).astype(float)
    idx = (idx - idx.mean(0)) / idx.std(0)
    x, y, z = idx.T
    A = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], 1)
    e = err[m] - err[m].mean()
    coef, *_ = np.linalg.lstsq(A, e, rcond=None)
    return float(100 * (1 - np.sum((e - A @ coef) ** 2) / np.sum(e ** 2)))


def score(bids: Path, deriv: Path, sub='01') -> dict:
    from qsmprep.numerics.bgremoval import erode_mask, vsharp
    from qsmprep.numerics.geometry import voxel_sizes
    from qsmprep.reports.evaluation import evaluate_subject

    truth = bids / 'derivatives' / 'qsmprep-simulate' / f'sub-{sub}' / 'anat'
    ours = deriv / f'sub-{sub}' / 'anat'
    rows = {}
    for tl in sorted(truth.glob(f'sub-{sub}_acq-*_desc-local_field.nii.gz')):
        a = tl.name.split('_acq-')[1].split('_')[0]
        import nibabel as nib

        vs = voxel_sizes(nib.load(str(tl)).affine)
        y = _load(tl)
        bg = _load(truth / f'sub-{sub}_acq-{a}_desc-background_field.nii.gz')
        brain = _load(truth / f'sub-{sub}_acq-{a}_desc-brain_mask.nii.gz') > 0
        row = {'bg_rms_ppm': float(np.sqrt(np.mean(bg[brain] ** 2))),
               'bg_std_ppm': float(bg[brain].std())}
        ol = ours / f'sub-{sub}_acq-{a}_desc-local_field.nii.gz'
        om = ours / f'sub-{sub}_acq-{a}_space-orig_desc-local_mask.nii.gz'
        if ol.exists() and om.exists():
            x, m = _load(ol), _load(om) > 0
            m &= brain
            row['local_nrmse_pct'], row['local_energy_ratio'] = _nrmse(x, y, m)
            row['poly2_removed_pct'] = _poly2_removed(x - y, m)
            row['local_mask_voxels'] = int(m.sum())
        em = erode_mask(brain, voxels=2)
        lo, fm = vsharp(y + bg, em, voxel_size=vs)
        row['oracle_vsharp_nrmse_pct'], _ = _nrmse(lo, y, fm)
        rows[a] = row
    keys = sorted({k for r in rows.values() for k in r})
    med = {k: float(np.median([r[k] for r in rows.values() if k in r])) for k in keys}
    ev = evaluate_subject(bids, deriv, sub) if deriv.exists() else {}
    maps = {k: v['nrmse_demeaned'] for k, v in ev.get('maps', {}).items()}
    return {'orientations': rows, 'median': med, 'maps_nrmse_pct': maps,
            'mask_dice': [r.get('mask_dice') for r in ev.get('orientations', {}).values()]}


def run_config(name: str, work: Path, python: str) -> dict:
    from qsmprep.simulate import simulate_dataset

    base = work / name
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    bids = base / 'bids'
    t0 = time.perf_counter()
    summary = simulate_dataset(bids, preset='demo', orientations=6, seed=0, jobs=1,
                               **CONFIGS[name])
    t_sim = time.perf_counter() - t0
    out = base / 'qsmprep'
    qsmprep = str(Path(python).with_name('qsmprep'))
    t0 = time.perf_counter()
    with open(base / 'pipeline.log', 'w') as log:
        rc = subprocess.call([qsmprep, str(bids), str(out), 'participant',
                              '--participant-label', '01', '-w', str(base / 'work'),
                              '--nprocs', '1'], stdout=log, stderr=subprocess.STDOUT)
    t_pipe = time.perf_counter() - t0
    try:  # the pipeline version the maps were computed with (others edit it concurrently)
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        head = None
    res = {'config': name, 'overrides': CONFIGS[name], 'simulate_s': summary.elapsed_s,
           'git_head': head, 'finished_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'simulate_wall_s': t_sim, 'pipeline_s': t_pipe, 'pipeline_rc': rc,
           'settings': {k: summary.config[k] for k in (
               'air_cavities', 'body', 'dephasing', 'receiver_nonharmonic', 'coil_phase',
               'bias_field', 'phase_units', 'magnitude_dtype')}}
    res.update(score(bids, out))
    shutil.rmtree(base / 'work', ignore_errors=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='benchmarks/results/sim_effects.json')
    ap.add_argument('--work', default='/tmp/sim-effects')
    ap.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args(argv)
    work = Path(args.work)
    out = Path(args.out)
    results = []
    if out.exists():  # keep configurations measured earlier, replace the ones re-run
        results = [r for r in json.loads(out.read_text()).get('results', [])
                   if r['config'] not in args.configs]
    for name in args.configs:
        t0 = time.time()
        res = run_config(name, work, sys.executable)
        res['load_average'] = list(os.getloadavg())
        results.append(res)
        results.sort(key=lambda r: list(CONFIGS).index(r['config']))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            'benchmark': 'sim_effects', 'preset': 'demo', 'orientations': 6, 'seed': 0,
            'python': platform.python_version(), 'cpus': os.cpu_count(),
            'results': results}, indent=2, sort_keys=True) + '\n')
        m = res['median']
        print(f"{name}: bg std {m['bg_std_ppm']:.3f} ppm, local NRMSE "
              f"{m.get('local_nrmse_pct', float('nan')):.1f} % (energy "
              f"{m.get('local_energy_ratio', float('nan')):.2f}, poly2 removes "
              f"{m.get('poly2_removed_pct', float('nan')):.0f} %), oracle V-SHARP "
              f"{m['oracle_vsharp_nrmse_pct']:.1f} %, maps {res['maps_nrmse_pct']}, "
              f"rc {res['pipeline_rc']}, {time.time() - t0:.0f} s", flush=True)
    print(table(results))


def table(results) -> str:
    """Markdown table of the medians (for docs/simulator.md)."""
    lines = ['| Effect | bg std in brain (ppm) | local NRMSE (%) | energy ratio | '
             'poly2 removes (%) | oracle V-SHARP (%) | χ33 NRMSE (%) | COSMOS NRMSE (%) |',
             '|---|---|---|---|---|---|---|---|']
    for r in results:
        m, maps = r['median'], r['maps_nrmse_pct']

        def f(v, p=1):
            return '—' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{v:.{p}f}'

        lines.append(f"| {r['config']} | {f(m['bg_std_ppm'], 3)} | {f(m.get('local_nrmse_pct'))} "
                     f"| {f(m.get('local_energy_ratio'), 2)} | {f(m.get('poly2_removed_pct'), 0)} "
                     f"| {f(m['oracle_vsharp_nrmse_pct'])} | {f(maps.get('chi33'))} "
                     f"| {f(maps.get('cosmos'))} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
