"""Fixtures of the deployment tests: a real single-node SLURM cluster on this machine.

``slurm_cluster`` runs ``tests/deploy/slurm_setup.sh start`` once per test session: it
installs Debian's ``slurm-wlm`` and ``munge`` with apt-get when they are missing, starts a
private munged, slurmctld and slurmd on 127.0.0.1 (free ports, state in a fresh folder under
/tmp), waits for the node to be idle, and stops the daemons at the end of the session.  The
tests skip, with the reason, when the machine is not Linux, the user is not root, or the
packages cannot be installed; a cluster that is installed but does not start is an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

SETUP = Path(__file__).with_name('slurm_setup.sh')
#: Exit codes of slurm_setup.sh that mean "cannot run here" (skip) rather than "broken".
SETUP_SKIP_CODES = {3: 'not root', 4: 'slurm-wlm/munge not installable'}
INSTALL_TIMEOUT_S = 1500
STOP_TIMEOUT_S = 120


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slurm: needs a local SLURM cluster (root, apt-get slurm-wlm munge); '
                   'deselect with -m "not slurm"')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_bounded(cmd, *, timeout, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill that group (only it)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, 124, out, err + f'\n[killed after {timeout} s]')
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope='session')
def slurm_cluster():
    """A running single-node SLURM cluster: ``conf`` (SLURM_CONF path), ``state`` folder,
    ``env`` (os.environ plus SLURM_CONF), ``node`` (its name)."""
    if not sys.platform.startswith('linux'):
        pytest.skip('a local SLURM cluster needs Linux')
    if os.geteuid() != 0:
        pytest.skip('a local SLURM cluster needs root (apt-get install slurm-wlm munge; the '
                    'daemons run as root); CI runs as root')
    if shutil.which('bash') is None:
        pytest.skip('bash is not available')
    state = Path(tempfile.mkdtemp(prefix='qsmprep-slurm-', dir='/tmp'))  # short socket path
    env = dict(os.environ, QSMPREP_SLURM_CTLD_PORT=str(_free_port()),
               QSMPREP_SLURM_D_PORT=str(_free_port()))
    started = run_bounded(['bash', str(SETUP), 'start', str(state)], env=env,
                          timeout=INSTALL_TIMEOUT_S)
    if started.returncode in SETUP_SKIP_CODES:
        shutil.rmtree(state, ignore_errors=True)
        reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else ''
        pytest.skip(f'SLURM cannot run here ({SETUP_SKIP_CODES[started.returncode]}): {reason}')
    try:
        if started.returncode != 0:
            pytest.fail(f'slurm_setup.sh start failed (exit {started.returncode}):\n'
                        f'{started.stdout}\n{started.stderr}', pytrace=False)
        export = [ln for ln in started.stdout.splitlines() if ln.startswith('export SLURM_CONF=')]
        assert export, started.stdout
        conf = export[-1].split('=', 1)[1]
        env['SLURM_CONF'] = conf
        yield SimpleNamespace(conf=conf, state=state, env=env,
                              node=socket.gethostname().split('.')[0])
    finally:
        run_bounded(['bash', str(SETUP), 'stop', str(state)], env=env, timeout=STOP_TIMEOUT_S)
        shutil.rmtree(state, ignore_errors=True)
