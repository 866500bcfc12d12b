"""Make the report screenshot of the README and ``docs/outputs.md`` (``docs/_static/report.png``).

Simulates a dataset (``--preset``, default ``tiny``), runs the participant level on it, and
photographs the top of the subject's report in headless Chromium
(:mod:`qsmprep.reports.browser`; Debian: ``apt-get install chromium``).  The PNG is stored
with a 256-colour palette to stay small.  Everything but the PNG goes to a temporary folder
(or ``--keep DIR``).

    python scripts/report_screenshot.py                      # docs/_static/report.png
    python scripts/report_screenshot.py --report out/qsmprep/sub-01.html -o shot.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / 'docs' / '_static' / 'report.png'


def run_pipeline(workdir: Path, preset: str) -> Path:
    """Simulate ``preset`` and run qsmprep on it; return the subject's report."""
    from qsmprep.cli.run import main
    from qsmprep.simulate import simulate_dataset

    bids, out, work = workdir / 'bids', workdir / 'derivatives' / 'qsmprep', workdir / 'work'
    simulate_dataset(bids, preset=preset, seed=0, jobs=1, truth=False)
    rc = main([str(bids), str(out), 'participant', '-w', str(work), '--nprocs', '2'])
    if rc != 0:
        raise SystemExit(f'qsmprep failed (exit {rc}); see {work / "logs"}')
    return out / 'sub-01.html'


def photograph(report: Path, png: Path, *, width: int, height: int) -> Path:
    from PIL import Image

    from qsmprep.reports.browser import screenshot

    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = screenshot(report, Path(tmp) / 'raw.png', width=width, height=height)
        im = Image.open(raw).convert('RGB')
        im.quantize(256, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('-o', '--output', type=Path, default=DEFAULT_OUT)
    p.add_argument('--preset', default='tiny', help='simulator preset (default: tiny)')
    p.add_argument('--report', type=Path, help='photograph this report instead of running')
    p.add_argument('--keep', type=Path, help='keep the simulated data and outputs here')
    p.add_argument('--width', type=int, default=1200)
    p.add_argument('--height', type=int, default=1500)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.report:
        report = a.report
        png = photograph(report, a.output, width=a.width, height=a.height)
    else:
        with tempfile.TemporaryDirectory(prefix='qsmprep-shot-') as tmp:
            workdir = a.keep or Path(tmp)
            report = run_pipeline(workdir, a.preset)
            png = photograph(report, a.output, width=a.width, height=a.height)
    print(f'{png} ({png.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
