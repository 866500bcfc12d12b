"""Held-out evaluation: TKD, the iLSQR baseline and (optionally) trained models, per orientation.

Simulates held-out subjects with seeds and settings that no training recipe may use (default:
``demo`` seeds 101 and 102, 2 mm, 8 orientations; ``7t`` seed 103, 1.5 × 1.5 × 2 mm, LAS,
oblique grids, every realism effect) and one dataset of the independent generator qsm-forward
(cylinder phantom, 64³ at 1 mm, B0 at 0°, 25° about x, 25° about y, its own local field), then
runs :func:`qsmprep.dl.evaluate.evaluate` on each, **one at a time** (simulation, then
evaluation: the machine has 2 cores), on the true local fields (``inputs='truth'``):
NRMSE, demeaned NRMSE, HFEN, XSIM, DGM slope per orientation and their medians, for every
method on the same inputs.  Writes one JSON (``benchmarks/results/dl_eval.json``) with each
dataset's full result, the settings, timings and the machine.

Usage::

    python benchmarks/bench_dl_eval.py --work /tmp/dl_eval                      # tkd + ilsqr
    python benchmarks/bench_dl_eval.py --work /tmp/dl_eval --model models/modl  # + a model
    python benchmarks/bench_dl_eval.py --work /tmp/dl_eval --datasets demo:101  # one subject

Datasets are ``PRESET:SEED`` (``qsmprep-simulate``) or ``qsm-forward``; a dataset already in
``--work`` is reused (same name = same preset and seed = bit-identical files).

``--pipeline`` also runs qsmprep's participant level on each dataset (``qsmprep BIDS
WORK/NAME-out participant --nprocs N``, with ``--skip-bids-validation`` for qsm-forward, whose
sidecars lack ``SkullStripped``; reused when its output exists) and scores every method on the
local fields and masks it computed (``inputs='pipeline'``, against the same truth), next to
the truth-input scores.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATASETS = ('demo:101', 'demo:102', '7t:103', 'qsm-forward')
QSM_FORWARD_DIRECTIONS = {
    'axial': (0.0, 0.0, 1.0),
    'rotx25': (0.0, float(np.sin(np.deg2rad(25))), float(np.cos(np.deg2rad(25)))),
    'roty25': (float(np.sin(np.deg2rad(25))), 0.0, float(np.cos(np.deg2rad(25)))),
}


def simulate(name: str, work: Path) -> tuple[Path, dict]:
    """Write (or reuse) dataset ``name`` under ``work``; returns its root and settings."""
    root = work / name.replace(':', '-seed').replace('qsm-forward', 'qsmforward')
    if name == 'qsm-forward':
        settings = {'generator': 'qsm-forward', 'phantom': 'simple (cylinders)',
                    'resolution': [64, 64, 64], 'voxel_size_mm': 1.0,
                    'directions': QSM_FORWARD_DIRECTIONS, 'seed': 42, 'save_field': True}
        if not (root / 'derivatives' / 'qsm-forward').is_dir():
            import qsm_forward

            chi = qsm_forward.generate_susceptibility_phantom(
                resolution=[64, 64, 64], background=0, large_cylinder_val=0.005,
                small_cylinder_radii=[4, 4, 4, 7], small_cylinder_vals=[0.05, 0.1, 0.2, 0.5])
            tissue = qsm_forward.TissueParams(chi=chi)
            for label, b0 in QSM_FORWARD_DIRECTIONS.items():
                recon = qsm_forward.ReconParams(
                    subject='1', session=None, acq=label, run=None, TR=50e-3,
                    TEs=np.array([0.004, 0.012]), flip_angle=15, B0=3.0,
                    B0_dir=np.array(b0), phase_offset=0, generate_phase_offset=True,
                    generate_shim_field=True, voxel_size=np.array([1.0, 1.0, 1.0]),
                    peak_snr=np.inf, random_seed=42, save_phase=True, suffix='MEGRE')
                qsm_forward.generate_bids(tissue, recon, str(root), save_field=True)
        return root, settings
    preset, _, seed = name.partition(':')
    settings = {'generator': 'qsmprep-simulate', 'preset': preset, 'seed': int(seed or 0)}
    if not (root / 'dataset_description.json').is_file():
        from qsmprep.simulate import simulate_dataset

        simulate_dataset(root, preset=preset, seed=int(seed or 0), jobs=1)
    return root, settings


def participant(root: Path, nprocs: int, *, skip_validation: bool = False
                ) -> tuple[Path, float | None]:
    """Run (or reuse) the participant level on ``root``: its derivatives folder and seconds
    (``None`` when an earlier run's output was reused)."""
    out = root.with_name(root.name + '-out')
    deriv = out / 'qsmprep'
    if (deriv / 'dataset_description.json').is_file():
        return deriv, None  # reused: no time to report
    t0 = time.perf_counter()
    exe = Path(sys.executable).with_name('qsmprep')
    cmd = [str(exe) if exe.exists() else 'qsmprep', str(root), str(out), 'participant',
           '--nprocs', str(nprocs), '-w', str(root.with_name(root.name + '-work'))]
    cmd += ['--skip-bids-validation'] if skip_validation else []
    subprocess.run(cmd, check=True)
    return deriv, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', type=Path, default=Path('dl_eval_work'),
                   help='folder for the simulated datasets (reused when present)')
    p.add_argument('--datasets', nargs='+', default=list(DEFAULT_DATASETS),
                   metavar='PRESET:SEED|qsm-forward')
    p.add_argument('--model', action='append', default=[], metavar='DIR',
                   help='trained model folder to score next to tkd and ilsqr (repeatable)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--mode', default=None, help='inference mode of the models')
    p.add_argument('--pipeline', action='store_true',
                   help='also run the participant level and score its local fields')
    p.add_argument('--nprocs', type=int, default=1, help='participant level processes')
    p.add_argument('--out', type=Path,
                   default=Path(__file__).parent / 'results' / 'dl_eval.json')
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')

    import qsmprep
    from qsmprep.dl.evaluate import check_writable, evaluate, format_table, write_json

    check_writable(ns.out)
    work = ns.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    methods = [*ns.model, 'tkd', 'ilsqr']
    runs = []
    load0 = os.getloadavg()
    for name in ns.datasets:
        t0 = time.perf_counter()
        root = work / name.replace(':', '-seed').replace('qsm-forward', 'qsmforward')
        reused = root.is_dir()
        try:
            root, settings = simulate(name, work)
        except ModuleNotFoundError as exc:  # qsm-forward is a test dependency only
            print(f'skipping {name}: {exc}', file=sys.stderr)
            runs.append({'dataset': name, 'skipped': str(exc)})
            continue
        t_sim = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = evaluate(root, methods, threads=ns.threads, mode=ns.mode)
        t_eval = time.perf_counter() - t1
        print(f'\n## {name}\n')
        print(format_table(res, markdown=True))
        run = {'dataset': name, 'settings': settings,
               'seconds': {'simulate': None if reused else round(t_sim, 1),
                           'evaluate': round(t_eval, 1)},
               'result': res}
        if ns.pipeline:
            deriv, t_part = participant(root, ns.nprocs,
                                        skip_validation=settings['generator'] == 'qsm-forward')
            t2 = time.perf_counter()
            pres = evaluate(root, methods, inputs='pipeline', derivatives=deriv,
                            threads=ns.threads, mode=ns.mode)
            run['seconds'].update(participant=None if t_part is None else round(t_part, 1),
                                  evaluate_pipeline=round(time.perf_counter() - t2, 1))
            run['result_pipeline'] = pres
            print(f'\n## {name}, pipeline local fields\n')
            print(format_table(pres, markdown=True))
        runs.append(run)
    out = {'benchmark': 'bench_dl_eval', 'qsmprep_version': qsmprep.__version__,
           'command': ' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           'methods': methods, 'inputs': ['truth', *(['pipeline'] if ns.pipeline else [])],
           'machine': {'platform': platform.platform(), 'python': platform.python_version(),
                       'numpy': np.__version__, 'cpus': os.cpu_count(),
                       'load_average_before': [round(v, 2) for v in load0],
                       'load_average_after': [round(v, 2) for v in os.getloadavg()]},
           'note': 'timings are one-off wall times on a shared machine, not a speed '
                   'benchmark (null: the dataset or participant output of an earlier run was '
                   'reused); the metrics do not depend on the load',
           'runs': runs}
    print(f'\nwritten {write_json(out, ns.out)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
