"""Benchmark ``qsmprep-simulate``: generation time and peak memory per preset, writing JSON.

Each preset runs in its own subprocess (a fresh interpreter: template loading included),
which writes the dataset to a temporary directory.  Recorded per preset:

* ``wall_s``: wall time of the whole subprocess (interpreter start to exit);
* ``simulate_s``: time reported by :func:`qsmprep.simulate.simulate_dataset`;
* ``maxrss_main_gb``: ``ru_maxrss`` of the main process;
* ``maxrss_worker_gb``: largest ``ru_maxrss`` of its worker processes (fork; they share the
  phantom with the main process copy-on-write);
* ``peak_tree_rss_gb``: peak of the summed RSS of the process tree, sampled every 0.1 s
  from ``/proc`` (counts shared pages once per process, so an upper bound);
* ``files``, ``size_gb``: what was written;
* ``load_average``: 1-min load average before and after (other jobs inflate the times).

Budget (issue 3): ``full`` in < ~3 min and < ~10 GB on the 2-core machine.

Usage::

    python benchmarks/bench_simulate.py --out benchmarks/results/simulate.json \\
        [--presets tiny demo full demo:realistic] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGETS = {'full': {'wall_s': 180.0, 'memory_gb': 10.0}}


def _child(preset: str, out_dir: str) -> None:
    from qsmprep.simulate import simulate_dataset

    name, _, realism = preset.partition(':')
    summary = simulate_dataset(out_dir, preset=name, seed=0,
                               **({'realism': realism} if realism else {}))
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({'simulate_s': summary.elapsed_s, 'files': summary.files,
                      'maxrss_main_gb': self_kb / 2 ** 20,
                      'maxrss_worker_gb': child_kb / 2 ** 20,
                      'config': summary.config}))


def _tree_rss_kb(root_pid: int) -> int:
    """Sum of VmRSS (kB) of ``root_pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/status') as fh:
                status = fh.read()
        except OSError:
            continue
        ppid = rss_kb = 0
        for line in status.splitlines():
            if line.startswith('PPid:'):
                ppid = int(line.split()[1])
            elif line.startswith('VmRSS:'):
                rss_kb = int(line.split()[1])
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = rss_kb
    total, stack = 0, [root_pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_preset(preset: str) -> dict:
    load_before = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    with tempfile.TemporaryDirectory(prefix=f'bench-sim-{preset}-') as tmp:
        out = Path(tmp) / 'ds'
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, '--child', preset, str(out)],
                                stdout=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            if os.path.isdir('/proc'):
                peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        stdout = proc.stdout.read()
        if proc.returncode != 0:
            raise RuntimeError(f'preset {preset} failed with exit code {proc.returncode}')
        res = json.loads(stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
    cfg = res.pop('config')
    # other jobs on the machine slow the run down: record the 1-min load average
    res['load_average'] = [load_before, os.getloadavg()[0] if load_before is not None else None]
    res.update(preset=preset, wall_s=wall, peak_tree_rss_gb=peak / 2 ** 20,
               size_gb=size / 2 ** 30, voxel_size=cfg['voxel_size'],
               orientations=cfg['orientations'], echoes=len(cfg['echo_times']),
               subjects=cfg['subjects'])
    res['realism'] = cfg.get('realism', 'none')
    budget = BUDGETS.get(preset)
    if budget:
        res['budget'] = budget
        res['within_budget'] = bool(wall <= budget['wall_s'] and
                                    res['peak_tree_rss_gb'] <= budget['memory_gb'])
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='benchmarks/results/simulate.json', help='JSON output')
    p.add_argument('--presets', nargs='+', default=['tiny', 'demo'],
                   help='presets to run (default: tiny demo; add full for the budget check; '
                        'NAME:realistic runs a preset with realism=realistic)')
    p.add_argument('--repeat', type=int, default=1,
                   help='runs per preset; the JSON keeps each run and the median wall time')
    p.add_argument('--child', nargs=2, metavar=('PRESET', 'OUT_DIR'), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    results = []
    for preset in args.presets:
        runs = [run_preset(preset) for _ in range(max(1, args.repeat))]
        r = sorted(runs, key=lambda x: x['wall_s'])[len(runs) // 2]
        if len(runs) > 1:
            r = {**r, 'wall_s_runs': [x['wall_s'] for x in runs],
                 'simulate_s_runs': [x['simulate_s'] for x in runs]}
        print(f"{preset:7s} {r['wall_s']:7.1f} s  peak tree RSS {r['peak_tree_rss_gb']:.2f} GB "
              f"(main {r['maxrss_main_gb']:.2f}, worker {r['maxrss_worker_gb']:.2f})  "
              f"{r['files']} files, {r['size_gb']:.2f} GB", flush=True)
        results.append(r)
    from qsmprep.__about__ import __version__

    doc = {'benchmark': 'qsmprep-simulate', 'qsmprep': __version__,
           'python': platform.python_version(), 'machine': platform.machine(),
           'cpus': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else
           os.cpu_count(), 'results': results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
