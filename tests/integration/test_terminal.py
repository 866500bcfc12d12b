"""Whole runs on the ``tiny`` preset, as a user sees them: line counts of the terminal.

``qsmprep`` and ``qsmprep-demo`` run in a subprocess with stdout a pipe (as in CI or a SLURM
log) and once on a pseudo-terminal (the live display).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsmprep.__about__ import __version__

pytestmark = pytest.mark.slow

ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


def _run(args, cwd, timeout=900):
    proc = subprocess.run([sys.executable, '-m', *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, 'COLUMNS': '100'})
    return proc, (proc.stdout + proc.stderr).splitlines()


def _run_tty(args, cwd, timeout=600) -> tuple[int, str]:
    """Run with stdout/stderr on a pseudo-terminal; return (exit code, everything written)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, '-m', *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env={**os.environ, 'TERM': 'xterm'})
    os.close(slave)
    chunks, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=60)
    return rc, b''.join(chunks).decode('utf-8', 'replace')


def test_default_run_prints_header_progress_and_summary_only(tmp_path):
    from qsmprep.simulate import simulate_dataset

    bids = tmp_path / 'bids'
    simulate_dataset(bids, preset='tiny', seed=0, jobs=1)
    out, work = tmp_path / 'derivatives' / 'qsmprep', tmp_path / 'work'
    proc, lines = _run(['qsmprep.cli.run', str(bids), str(out), 'participant', '-w', str(work),
                        '--nprocs', '2'], tmp_path)
    assert proc.returncode == 0, '\n'.join(lines[-40:])
    assert len(lines) <= 40, '\n'.join(lines)
    text = '\n'.join(lines)
    assert 'nipype.workflow INFO' not in text and '[Node]' not in text
    assert not ANSI.search(text)  # a pipe gets plain lines
    header = next(i for i, line in enumerate(lines)
                  if line.startswith(f'qsmprep {__version__}: participant level'))
    total = int(re.search(r'(\d+) nodes', lines[header]).group(1))
    assert any(f'{total}/{total} nodes  done in' in line for line in lines)
    log = Path(re.search(r'log file\s+(\S+)', text).group(1))
    assert log.parent == work / 'logs' and log.is_file()
    assert lines[-1].startswith('qsmprep finished in') and 'exit code 0' in lines[-1]
    assert f'report  {out / "sub-01.html"}' in text and (out / 'sub-01.html').is_file()
    # the log file holds Nipype's records: one "[Job N] Completed" per node the header counted
    records = log.read_text()
    assert len(re.findall(r'\[Job \d+\] Completed', records)) == total
    assert '[Node] Finished' in records
    assert (out / 'sub-01' / 'log' / log.name).is_file()

    # -v: Nipype's records are back on the console (re-run: nodes come from the work dir)
    proc, lines = _run(['qsmprep.cli.run', str(bids), str(tmp_path / 'v' / 'qsmprep'),
                        'participant', '-w', str(work), '--nprocs', '2', '-v'], tmp_path)
    assert proc.returncode == 0, '\n'.join(lines[-40:])
    text = '\n'.join(lines)
    assert 'nipype.workflow INFO' in text and '[Job ' in text
    assert any(f'{total}/{total} nodes  done in' in line for line in lines)


def test_demo_is_short_with_the_accuracy_table_at_the_end(tmp_path):
    demo = tmp_path / 'demo'
    proc, lines = _run(['qsmprep.cli.demo', str(demo), '--preset', 'tiny', '--nprocs', '2'],
                       tmp_path)
    assert proc.returncode == 0, '\n'.join(lines[-40:])
    assert len(lines) <= 80, '\n'.join(lines)
    text = '\n'.join(lines)
    assert 'nipype.workflow INFO' not in text
    table = next(i for i, line in enumerate(lines) if line.startswith('[3/3] accuracy'))
    assert table >= len(lines) - 30
    tail = '\n'.join(lines[table:])
    assert re.search(r'cosmos\s+vs true chi33 : NRMSE [\d.]+ %', tail)
    assert all(f'ori0{i}: mask_dice' in tail for i in range(1, 7))

    # a terminal gets the live display instead of lines (same work dir: nodes are cached)
    rc, screen = _run_tty(['qsmprep.cli.run', str(demo / 'bids'), str(tmp_path / 'tty'),
                           'participant', '-w', str(demo / 'work'), '--nprocs', '2'], tmp_path)
    assert rc == 0, screen[-3000:]
    assert '\x1b[' in screen and 'nipype.workflow INFO' not in screen
    plain = ANSI.sub('', screen)
    assert re.search(r'sub-01 .*(\d+)/\1 nodes', plain) and 'exit code 0 (success)' in plain
