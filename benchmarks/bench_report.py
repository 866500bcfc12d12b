"""Time the subject report (``generate_report``) on a finished participant run, writing JSON.

Simulates a preset (default ``demo``: 2 mm, 8 orientations × 4 echoes) and runs the
participant level once (or reuses ``--workdir`` when it holds a finished run), then builds
the report ``--repeat`` times in this process and records the median, minimum and maximum
wall time and CPU time of the process (the first build includes importing matplotlib; on a
shared machine the CPU time is the figure to compare), the load average, the page size and
the number of figures.  Budget (issue 12): a few seconds for ``demo``.

Usage::

    python benchmarks/bench_report.py --preset demo --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _finished_run(workdir: Path, preset: str):
    from qsmprep.cli.run import main as qsmprep
    from qsmprep.simulate import simulate_dataset

    bids, out, work = workdir / 'bids', workdir / 'derivatives' / 'qsmprep', workdir / 'work'
    if not (out / 'sub-01.html').exists():
        if not bids.exists():
            simulate_dataset(bids, preset=preset, seed=0, jobs=1, truth=False)
        rc = qsmprep([str(bids), str(out), 'participant', '-w', str(work), '--nprocs', '2'])
        if rc != 0:
            raise SystemExit(f'qsmprep failed (exit {rc})')
    return bids, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='demo')
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--workdir', type=Path, help='keep (or reuse) the run here')
    ap.add_argument('--out', type=Path, default=Path(__file__).with_name('results')
                    / 'report.json')
    a = ap.parse_args(argv)

    from qsmprep.cli.config import Settings
    from qsmprep.io.bids import collect_subjects
    from qsmprep.options import PipelineOptions
    from qsmprep.reports.core import generate_report

    with tempfile.TemporaryDirectory(prefix='qsmprep-bench-report-') as tmp:
        bids, out = _finished_run(a.workdir or Path(tmp), a.preset)
        (subject,) = collect_subjects(bids)
        toml = sorted((out / 'sub-01' / 'log').glob('*.toml'))[-1]
        settings = Settings.from_toml(toml.read_text())
        options = PipelineOptions.from_settings(settings).resolved()
        times, cpu = [], []
        for _ in range(a.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            page = generate_report(out, subject, bids_dir=bids, options=options,
                                   settings=settings)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        text = page.read_text()
    result = {
        'preset': a.preset, 'repeat': a.repeat, 'seconds': [round(t, 3) for t in times],
        'median_s': round(statistics.median(times), 3), 'min_s': round(min(times), 3),
        'max_s': round(max(times), 3), 'cpu_seconds': [round(t, 3) for t in cpu],
        'median_cpu_s': round(statistics.median(cpu), 3),
        'load_average': [round(x, 2) for x in os.getloadavg()],
        'page_bytes': len(text.encode()),
        'images': text.count('<img '), 'orientations': len(subject.orientations),
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                    'python': sys.version.split()[0]},
        'date': time.strftime('%Y-%m-%d'),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
