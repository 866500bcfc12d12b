"""Tiny synthetic BIDS MEGRE datasets for tests (no physics: random magnitude and phase).

:func:`make_megre_dataset` writes a small, valid multi-echo, multi-orientation raw dataset that
tests then break on purpose (:func:`edit_sidecar`, :func:`megre_path`).  For physically
meaningful data use the simulator (:mod:`qsmprep.simulate`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from qsmprep.numerics.geometry import rotation_about

__all__ = ['edit_sidecar', 'make_megre_dataset', 'megre_path', 'rotation_affine',
           'write_training_derivatives']

_DELETE = object()


def rotation_affine(angle_deg: float = 0.0, axis: str = 'x', voxel_size=(1.0, 1.0, 1.0),
                    shape=(8, 8, 6)) -> np.ndarray:
    """A centred affine whose voxel axes are rotated by ``angle_deg`` about world ``axis``.

    >>> A = rotation_affine(90, 'x')
    >>> np.round(A[:3, 2], 6).tolist()  # the voxel z axis now points along world -y
    [0.0, -1.0, 0.0]
    """
    R = rotation_about(np.eye(3)['xyz'.index(axis)], angle_deg)
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(np.asarray(voxel_size, dtype=float))
    A[:3, 3] = -A[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return A


def _entities_of(orientation) -> dict[str, str]:
    if orientation is None:
        return {}
    if isinstance(orientation, str):
        return {'acq': orientation}
    return {k: str(v) for k, v in dict(orientation).items() if v is not None}


def megre_path(root, subject: str = '01', *, session: str | None = None,
               orientation: str | Mapping | None = None, echo: int = 1, part: str | None = 'mag',
               ext: str = '.nii.gz') -> Path:
    """Path of a MEGRE file (or its sidecar with ``ext='.json'``) in a BIDS tree.

    ``orientation`` is an ``acq`` label or a mapping of entities (``acq``, ``ce``, ``rec``,
    ``run``).

    >>> megre_path('/d', '01', orientation={'acq': 'x', 'run': 2}, echo=3, part='phase').name
    'sub-01_acq-x_run-2_echo-3_part-phase_MEGRE.nii.gz'
    """
    ent = _entities_of(orientation)
    parts = [f'sub-{subject}']
    if session is not None:
        parts.append(f'ses-{session}')
    parts += [f'{k}-{ent[k]}' for k in ('acq', 'ce', 'rec', 'run') if k in ent]
    parts.append(f'echo-{echo}')
    if part is not None:
        parts.append(f'part-{part}')
    folder = Path(root) / f'sub-{subject}'
    if session is not None:
        folder = folder / f'ses-{session}'
    return folder / 'anat' / ('_'.join(parts) + '_MEGRE' + ext)


def edit_sidecar(path, **changes) -> dict:
    """Change keys of a JSON sidecar in place; a value of ``None`` deletes the key.

    ``path`` may be the NIfTI or the JSON file.  Returns the new content.
    """
    path = Path(path)
    if path.name.endswith('.nii.gz'):
        path = path.with_name(path.name[:-7] + '.json')
    elif path.suffix == '.nii':
        path = path.with_suffix('.json')
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta, indent=2))
    return meta


def make_megre_dataset(
    root,
    *,
    subjects: Sequence[str] = ('01',),
    sessions: Sequence[str | None] = (None,),
    orientations: Sequence[str | Mapping | None] = ('ori01',),
    echo_times: Sequence[float] = (0.004, 0.008, 0.012),
    shape: Sequence[int] = (16, 16, 16),
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    field_strength: float = 3.0,
    b0_dirs: Sequence | None = None,
    affines: Sequence | None = None,
    units: str | None = 'rad',
    compress: bool = True,
    seed: int = 0,
) -> Path:
    """Write a small raw BIDS dataset of MEGRE magnitude/phase files; return its root.

    Parameters
    ----------
    root : path
        Dataset directory (created).
    subjects, sessions : sequences of labels
        Without prefixes; ``sessions=(None,)`` writes no session level.
    orientations : sequence
        One entry per orientation: an ``acq`` label, a mapping of entities
        (``{'acq': 'x', 'run': 2}``) or ``None`` (no distinguishing entity).
    echo_times : sequence of float
        In s; one echo per value (``echo-1`` … ``echo-N``).
    shape, voxel_size : 3 ints, 3 floats (mm)
        Default 16x16x16 voxels of 1 mm, the smallest grid validation accepts
        (:data:`qsmprep.io.nifti.MIN_VOXELS`).
    field_strength : float
        ``MagneticFieldStrength`` (T) written to every sidecar.
    b0_dirs : sequence of 3-vectors or None, optional
        Per orientation, written as ``B0_dir`` to every sidecar (``None`` entries: not written).
    affines : sequence of (4, 4) arrays, optional
        Per orientation; default: a centred diagonal affine with ``voxel_size``.
    units : {'rad', 'arbitrary', None}
        Phase ``Units``; ``'arbitrary'`` stores int16 values in [-4096, 4095]; ``None`` writes
        radians without a ``Units`` key.
    compress : bool
        ``.nii.gz`` (True) or ``.nii``.
    seed : int
        Seed of the random magnitude and phase values.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / 'dataset_description.json').write_text(json.dumps(
        {'Name': 'qsmprep synthetic MEGRE test data', 'BIDSVersion': '1.10.0',
         'DatasetType': 'raw', 'License': 'CC0', 'Authors': ['qsmprep tests']}, indent=2))
    (root / 'README').write_text('Synthetic MEGRE data written by qsmprep.io.testing.\n')
    (root / 'participants.tsv').write_text(
        'participant_id\n' + ''.join(f'sub-{s}\n' for s in subjects))
    (root / 'participants.json').write_text(json.dumps(
        {'participant_id': {'Description': 'participant identifier'}}))
    shape = tuple(int(n) for n in shape)
    ext = '.nii.gz' if compress else '.nii'
    default_affine = np.diag([*map(float, voxel_size), 1.0])
    for sub in subjects:
        for ses in sessions:
            for i, ori in enumerate(orientations):
                affine = default_affine if affines is None else np.asarray(affines[i], float)
                b0 = None if b0_dirs is None else b0_dirs[i]
                for e, te in enumerate(echo_times, start=1):
                    mag = rng.uniform(50, 100, size=shape).astype(np.float32)
                    phase = rng.uniform(-np.pi, np.pi, size=shape)
                    if units == 'arbitrary':
                        phase = np.clip(np.round(phase * 4096 / np.pi), -4096, 4095)
                        phase = phase.astype(np.int16)
                    else:
                        phase = phase.astype(np.float32)
                    for part, data in (('mag', mag), ('phase', phase)):
                        path = megre_path(root, sub, session=ses, orientation=ori, echo=e,
                                          part=part, ext=ext)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        img = nib.Nifti1Image(data, affine)
                        img.header.set_xyzt_units('mm', 'sec')
                        nib.save(img, path)
                        meta = {'EchoTime': float(te), 'MagneticFieldStrength': field_strength,
                                'EchoNumber': e}
                        if part == 'phase' and units is not None:
                            meta['Units'] = units
                        if b0 is not None:
                            meta['B0_dir'] = [float(x) for x in b0]
                        path.with_name(path.name.replace(ext, '.json')).write_text(
                            json.dumps(meta, indent=2))
    return root


TRAINING_SHAPE = (24, 24, 24)
TRAINING_VOXEL = 2.0


def _tilted_b0(tilt_deg, azimuth_deg):
    t, a = np.deg2rad(tilt_deg), np.deg2rad(azimuth_deg)
    return np.array([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)])


def _smooth_subject(rng, shape=TRAINING_SHAPE):
    """Mask (ellipsoid) and a smooth random χ (ppm) inside it."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij'))
    mask = ((g[0] / 0.8) ** 2 + (g[1] / 0.85) ** 2 + (g[2] / 0.75) ** 2) <= 1.0
    chi = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 0.3
    blobs = ndimage.gaussian_filter((rng.random(shape) > 0.995).astype(float), 1.0) * 2.0
    chi = (chi + blobs) * mask
    return mask, chi.astype(np.float32)


def write_training_derivatives(root, *, subjects=3, orientations=2, seed=0, shape=TRAINING_SHAPE,
                      source='derivatives'):
    """qsmprep-style training derivatives of synthetic subjects, with exact physics.

    Each orientation's local field is the dipole field
    (:func:`qsmprep.numerics.forward.dipole_forward`) of a smooth random χ (ppm) inside an
    ellipsoidal mask, for its own B0 direction, and its label (``desc-apparent_Chimap``) is that
    χ (isotropic tissue: χ_app = χ).  ``source='simulate-truth'`` uses the simulator's mask
    naming.  For tests and examples of the group level; returns ``root``.
    """
    from qsmprep.numerics.forward import dipole_forward

    rng = np.random.default_rng(seed)
    affine = np.diag([TRAINING_VOXEL, TRAINING_VOXEL, TRAINING_VOXEL, 1.0])
    for s in range(1, subjects + 1):
        mask, chi = _smooth_subject(rng, shape)
        anat = root / f'sub-{s:02d}' / 'anat'
        anat.mkdir(parents=True, exist_ok=True)
        for o in range(1, orientations + 1):
            b0 = _tilted_b0(15.0 * (o - 1), 40.0 * o)
            field = dipole_forward(chi.astype(np.float64), TRAINING_VOXEL, b0, padding=8) * mask
            p = f'sub-{s:02d}_acq-ori{o:02d}'
            masks = ('_space-orig_desc-local_mask' if source == 'derivatives'
                     else '_desc-brain_mask')
            for suffix, data in (('_desc-local_field', field), (masks, mask),
                                 ('_desc-apparent_Chimap', chi)):
                dtype = np.uint8 if data.dtype == bool else np.float32
                nib.Nifti1Image(data.astype(dtype), affine).to_filename(
                    str(anat / f'{p}{suffix}.nii.gz'))
            (anat / f'{p}_desc-local_field.json').write_text(json.dumps(
                {'B0_dir': b0.tolist(), 'Units': 'ppm'}))
    return root
