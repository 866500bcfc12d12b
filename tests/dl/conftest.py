"""Fixtures of the deep-learning tests: a tiny synthetic derivatives tree with exact physics.

Each orientation's local field is the dipole field (qsmprep.numerics.forward.dipole_forward)
of a smooth random χ inside an ellipsoidal mask, for its own B0 direction, and its label is
that χ (isotropic tissue: χ_app = χ).  TensorFlow, when installed, is limited to one thread
per test process (the suite runs with ``pytest -n 2``).
"""

from __future__ import annotations

import importlib.util
import json
import os

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '-1')

if importlib.util.find_spec('tensorflow') is not None:
    from qsmprep.dl.train import configure_tensorflow

    configure_tensorflow(1)

SHAPE = (24, 24, 24)
VOXEL = 2.0


def _b0(tilt_deg, azimuth_deg):
    t, a = np.deg2rad(tilt_deg), np.deg2rad(azimuth_deg)
    return np.array([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)])


def make_subject_volumes(rng, shape=SHAPE):
    """Mask (ellipsoid) and a smooth random χ (ppm) inside it."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij'))
    mask = ((g[0] / 0.8) ** 2 + (g[1] / 0.85) ** 2 + (g[2] / 0.75) ** 2) <= 1.0
    chi = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 0.3
    blobs = ndimage.gaussian_filter((rng.random(shape) > 0.995).astype(float), 1.0) * 2.0
    chi = (chi + blobs) * mask
    return mask, chi.astype(np.float32)


def write_derivatives(root, *, subjects=3, orientations=2, seed=0, shape=SHAPE,
                      source='derivatives'):
    """qsmprep-style derivatives (or simulator-truth naming) for synthetic subjects."""
    from qsmprep.numerics.forward import dipole_forward

    rng = np.random.default_rng(seed)
    affine = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    for s in range(1, subjects + 1):
        mask, chi = make_subject_volumes(rng, shape)
        anat = root / f'sub-{s:02d}' / 'anat'
        anat.mkdir(parents=True, exist_ok=True)
        for o in range(1, orientations + 1):
            b0 = _b0(15.0 * (o - 1), 40.0 * o)
            field = dipole_forward(chi.astype(np.float64), VOXEL, b0, padding=8) * mask
            p = f'sub-{s:02d}_acq-ori{o:02d}'
            masks = ('_space-orig_desc-local_mask' if source == 'derivatives'
                     else '_desc-brain_mask')
            for suffix, data in (('_desc-local_field', field), (masks, mask),
                                 ('_desc-apparent_Chimap', chi)):
                dtype = np.uint8 if data.dtype == bool else np.float32
                nb.Nifti1Image(data.astype(dtype), affine).to_filename(
                    str(anat / f'{p}{suffix}.nii.gz'))
            (anat / f'{p}_desc-local_field.json').write_text(json.dumps(
                {'B0_dir': b0.tolist(), 'Units': 'ppm'}))
    return root


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
