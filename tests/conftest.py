"""Shared fixtures: simulated datasets, a qsm-forward dataset generator, the BIDS validator."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

#: B0 directions (voxel frame) of the qsm-forward multi-orientation example layout
#: (qsm_forward/examples/simulated_sources_oblique.py: 0°, 25°/40° about x and y, 15°/15°).
QSM_FORWARD_DIRECTIONS = {
    'axial': (0.0, 0.0, 1.0),
    'rotx1': (0.0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))),
    'roty1': (np.sin(np.deg2rad(25)), 0.0, np.cos(np.deg2rad(25))),
}


def make_qsm_forward_dataset(bids_dir, *, directions=None, resolution=(40, 40, 40),
                             echo_times=(0.004, 0.012), field_strength=3.0, subject='1',
                             session=None, seed=42):
    """Write a qsm-forward 'simple' (cylinder phantom, offline) BIDS dataset.

    One ``acq-<label>`` per B0 direction, as qsm-forward's multi-orientation example does.
    Reusable by the participant-level collection tests (``qsmprep`` must read qsm-forward's
    datasets).  Skips the calling test if qsm-forward is not installed.

    Returns
    -------
    pathlib.Path
        The BIDS root.
    """
    qsm_forward = pytest.importorskip('qsm_forward')
    bids_dir = Path(bids_dir)
    directions = directions or QSM_FORWARD_DIRECTIONS
    chi = qsm_forward.generate_susceptibility_phantom(
        resolution=list(resolution), background=0, large_cylinder_val=0.005,
        small_cylinder_radii=[4, 4, 4, 7], small_cylinder_vals=[0.05, 0.1, 0.2, 0.5])
    tissue = qsm_forward.TissueParams(chi=chi)
    for label, b0 in directions.items():
        recon = qsm_forward.ReconParams(
            subject=subject, session=session, acq=label, run=None, TR=50e-3,
            TEs=np.array(echo_times), flip_angle=15, B0=field_strength, B0_dir=np.array(b0),
            phase_offset=0, generate_phase_offset=True, generate_shim_field=True,
            voxel_size=np.array([1.0, 1.0, 1.0]), peak_snr=np.inf, random_seed=seed,
            save_phase=True, suffix='MEGRE')
        qsm_forward.generate_bids(tissue, recon, str(bids_dir))
    return bids_dir


@pytest.fixture(scope='session')
def qsm_forward_dataset(tmp_path_factory):
    """A three-orientation qsm-forward 'simple' dataset (session-scoped, read-only use)."""
    return make_qsm_forward_dataset(tmp_path_factory.mktemp('qsmforward') / 'bids')


@pytest.fixture(scope='session')
def tiny_subject():
    """In-memory noise-free simulation of the ``tiny`` preset (treat as read-only)."""
    from qsmprep.simulate import simulate_subject

    return simulate_subject(preset='tiny', seed=0)


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
    """The ``tiny`` preset written once per test session (treat as read-only)."""
    from qsmprep.simulate import simulate_dataset

    root = tmp_path_factory.mktemp('sim') / 'tiny'
    summary = simulate_dataset(root, preset='tiny', seed=0, jobs=1)
    return root, summary


@pytest.fixture(scope='session')
def make_qsm_forward():
    """The :func:`make_qsm_forward_dataset` factory, for tests in other folders."""
    return make_qsm_forward_dataset


@pytest.fixture(scope='session')
def bids_validator():
    """Path of ``bids-validator-deno`` (next to the interpreter or on PATH); skip if absent."""
    import sys

    cand = Path(sys.executable).with_name('bids-validator-deno')
    exe = str(cand) if cand.exists() else shutil.which('bids-validator-deno')
    if exe is None:
        pytest.skip('bids-validator-deno is not installed (pip install bids-validator-deno)')
    return exe
