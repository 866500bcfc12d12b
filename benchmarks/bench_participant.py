"""End-to-end participant benchmark on a simulated dataset, writing JSON.

Simulates a preset (default ``full``: 1 mm, 12 orientations × 6 echoes), runs
``qsmprep … participant`` in a subprocess (wall time and peak memory of the whole process
tree via ``ru_maxrss`` of children), and sums the run time of every Nipype node by stage.
Budget (issue 4): ``full`` end to end ≤ 5 min wall and ≤ 8 GB peak on 2 cores.

Usage::

    python benchmarks/bench_participant.py --preset full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

STAGES = {'stack_echoes': 'load', 'python_bet': 'brain mask', 'bet': 'brain mask',
          'erode_mask': 'brain mask', 'unwrap': 'unwrapping', 'combine_echoes': 'echo combination',
          'vsharp': 'V-SHARP', 'bgremoval': 'background removal', 'invert': 'TKD',
          'sitk_rigid': 'registration',
          'flirt': 'registration', 'flirt_to_world': 'registration',
          'to_reference': 'resampling', 'multi_orientation': 'COSMOS + STI',
          'apparent': 'training labels', 'ds': 'writing derivatives'}


def _stage(node_dir: Path) -> str:
    name = node_dir.name
    for key, stage in STAGES.items():
        if name == key or name.startswith(key + '_'):
            return stage
    return 'other'


def node_times(work: Path) -> dict:
    from nipype.utils.filemanip import loadpkl

    per = defaultdict(float)
    for res in work.rglob('result_*.pklz'):
        try:
            r = loadpkl(res)
            per[_stage(res.parent)] += float(getattr(r.runtime, 'duration', 0.0) or 0.0)
        except Exception:  # a result we cannot read does not stop the benchmark
            continue
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='full')
    ap.add_argument('--out', default=None)
    ap.add_argument('--workdir', default=None, help='keep data here (default: temporary)')
    ap.add_argument('--nprocs', type=int, default=2)
    ap.add_argument('--true-masks', action='store_true',
                    help='use the simulator brain masks (skips brain extraction)')
    args = ap.parse_args(argv)
    out = Path(args.out or f'benchmarks/results/participant_{args.preset}.json').absolute()
    base = Path(args.workdir or tempfile.mkdtemp(prefix='qsmprep-bench-'))
    bids = base / 'bids'
    t0 = time.perf_counter()
    if not (bids / 'dataset_description.json').exists():
        subprocess.run([sys.executable, '-m', 'qsmprep.simulate', str(bids), '--preset',
                        args.preset, '--seed', '0', '--overwrite'], check=True)
    t_sim = time.perf_counter() - t0
    cmd = [sys.executable, '-m', 'qsmprep.cli.run', str(bids), str(base / 'qsmprep'),
           'participant', '-w', str(base / 'work'), '--nprocs', str(args.nprocs),
           '--skip-bids-validation']
    if args.true_masks:
        cmd += ['--derivatives', str(bids / 'derivatives' / 'qsmprep-simulate')]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    from qsmprep.reports.evaluation import evaluate_subject

    result = {
        'preset': args.preset, 'nprocs': args.nprocs, 'cpu_count': os.cpu_count(),
        'true_masks': args.true_masks, 'returncode': proc.returncode,
        'simulation_s': t_sim, 'participant_wall_s': wall,
        'peak_rss_gb_largest_process': max(peak, before) / 1024**2,
        'node_time_s_by_stage': node_times(base / 'work'),
        'budget': {'wall_s': 300, 'memory_gb': 8},
    }
    if proc.returncode == 0:
        result['evaluation'] = evaluate_subject(bids, base / 'qsmprep')
    else:
        result['stderr_tail'] = proc.stderr[-3000:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps({k: v for k, v in result.items() if k != 'evaluation'}, indent=2))
    return proc.returncode


if __name__ == '__main__':
    sys.exit(main())
