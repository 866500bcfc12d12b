"""Pure-Python brain extraction used when FSL ``bet`` is not installed.

:func:`python_bet` runs the ``brainextractor`` package (a Python port of FSL BET's
deformable-surface algorithm, Smith 2002) on the first-echo magnitude and cleans the result
(largest connected component, holes filled).  BET's parameters are in voxels of an
isotropic grid, so anisotropic images are resampled to their smallest voxel size first and
the mask is resampled back.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from scipy import ndimage


def _clean(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def python_bet(magnitude, affine, *, frac: float = 0.5, iterations: int = 1000) -> np.ndarray:
    """Brain mask of a magnitude image with the ``brainextractor`` BET port.

    Parameters
    ----------
    magnitude : ndarray (X, Y, Z)
        Magnitude image (first echo: best SNR and tissue contrast).
    affine : (4, 4) ndarray
        Its NIfTI affine.
    frac : float
        BET fractional intensity threshold ``bt`` (smaller → larger mask).
    iterations : int
        Surface deformation iterations.

    Returns
    -------
    ndarray of bool
    """
    import nibabel as nb
    from brainextractor import BrainExtractor

    from qsmprep.utils.images import resample, voxel_sizes

    mag = np.asarray(magnitude, np.float32)
    vs = voxel_sizes(affine)
    iso = float(vs.min())
    if np.allclose(vs, iso, rtol=1e-3):
        work, work_aff = mag, np.asarray(affine, float)
    else:
        shape = np.ceil(np.array(mag.shape) * vs / iso).astype(int)
        work_aff = np.asarray(affine, float) @ np.diag([*(iso / vs), 1.0])
        work = resample(mag, affine, work_aff, shape, order=1)
    img = nb.Nifti1Image(work, work_aff)
    with contextlib.redirect_stdout(io.StringIO()):
        bet = BrainExtractor(img=img, bt=frac)
        bet.run(iterations=iterations)
        mask = bet.compute_mask() > 0
    if work is not mag:
        mask = resample(mask.astype(np.float32), work_aff, affine, mag.shape, order=1) > 0.5
    return _clean(mask)
