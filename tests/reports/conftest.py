"""Fixtures of the report tests: one finished ``tiny`` participant run, headless Chromium.

``tiny_run`` simulates the ``tiny`` preset (4 mm, 6 orientations, 3 echoes) and runs the
participant level on it once per test session (about 35 s on 2 cores); tests copy its
derivatives before changing anything.  ``chromium`` is Debian's ``chromium``: installed with
apt-get when it is missing and the tests run as root (as CI does), otherwise the tests that
need it skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

APT_TIMEOUT_S = 1200


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """``bids``, ``out`` (the derivatives dataset), ``work``, ``rc`` of a finished run."""
    from qsmprep.cli.run import main
    from qsmprep.simulate import simulate_dataset

    root = tmp_path_factory.mktemp('report_run')
    bids, out, work = root / 'bids', root / 'derivatives' / 'qsmprep', root / 'work'
    simulate_dataset(bids, preset='tiny', seed=0, jobs=1, truth=False)
    rc = main([str(bids), str(out), 'participant', '-w', str(work), '--nprocs', '2'])
    return SimpleNamespace(bids=bids, out=out, work=work, rc=rc)


def _apt_install(package: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    cmd = ['apt-get', 'install', '-y', '--no-install-recommends', package]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(['apt-get', 'update'], capture_output=True, text=True, env=env,
                       timeout=APT_TIMEOUT_S, check=False)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=APT_TIMEOUT_S, check=False)
    return proc


@pytest.fixture(scope='session')
def chromium():
    """Path of a headless-capable Chromium (apt-get installs Debian's when root)."""
    from qsmprep.reports.browser import chromium_executable

    exe = chromium_executable()
    if exe:
        return exe
    if not sys.platform.startswith('linux') or shutil.which('apt-get') is None:
        pytest.skip('chromium is not installed and this is not a Debian-like Linux')
    if os.geteuid() != 0:
        pytest.skip('chromium is not installed (apt-get install chromium needs root; CI runs '
                    'as root)')
    proc = _apt_install('chromium')
    exe = chromium_executable()
    if exe is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['']
        pytest.skip(f'chromium could not be installed (apt-get exit {proc.returncode}): '
                    f'{tail[0]}')
    return exe


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """The run with a private copy of its derivatives (``out``) and an empty ``work``
    folder, for tests that change files."""
    assert tiny_run.rc == 0, 'the tiny participant run failed'
    out = tmp_path / 'derivatives' / 'qsmprep'
    shutil.copytree(tiny_run.out, out)
    work = tmp_path / 'work'
    work.mkdir()
    return SimpleNamespace(bids=tiny_run.bids, out=out, work=work, rc=tiny_run.rc)
