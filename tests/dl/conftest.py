"""Fixtures of the deep-learning tests: a tiny synthetic derivatives tree with exact physics.

Each orientation's local field is the dipole field (qsmprep.numerics.forward.dipole_forward)
of a smooth random χ inside an ellipsoidal mask, for its own B0 direction, and its label is
that χ (isotropic tissue: χ_app = χ).  TensorFlow, when installed, is limited to one thread
per test process (the suite runs with ``pytest -n 2``).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '-1')

if importlib.util.find_spec('tensorflow') is not None:
    from qsmprep.dl.train import configure_tensorflow

    configure_tensorflow(1)

from qsmprep.io.testing import write_training_derivatives as write_derivatives


@pytest.fixture(name='write_derivatives')
def _write_derivatives_fixture():
    return write_derivatives


@pytest.fixture(scope='session')
def derivatives(tmp_path_factory):
    return write_derivatives(tmp_path_factory.mktemp('deriv') / 'qsmprep')


@pytest.fixture(scope='session')
def dataset3d(tmp_path_factory, derivatives):
    from qsmprep.dl.data import build_dataset

    out = tmp_path_factory.mktemp('ds3d') / 'ds'
    build_dataset(out, root=derivatives, patch_shape=16, stride=8, min_inside=0.3,
                  validation_fraction=0.34, seed=0)
    return out


@pytest.fixture(scope='session')
def dataset2d(tmp_path_factory, derivatives):
    from qsmprep.dl.data import build_dataset

    out = tmp_path_factory.mktemp('ds2d') / 'ds'
    build_dataset(out, root=derivatives, kind='slice2d', crop=32, min_gap=2,
                  validation_fraction=0.34, seed=0)
    return out
