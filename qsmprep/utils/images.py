"""NIfTI helpers used by the interfaces: load/save arrays with their affine, resampling.

Geometry conventions (``docs/physics.md``): world coordinates are NIfTI RAS+ mm; a *world
transform* ``M`` (4×4) maps points of a moving image's world space onto the reference's
world space (``x_ref = M x_mov``).  Voxel sizes and B0 directions come from
:mod:`qsmprep.numerics.geometry`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

# geometry (voxel sizes, B0 frames) is in qsmprep.numerics.geometry; voxel_sizes re-exported
from qsmprep.numerics.geometry import voxel_sizes

__all__ = ['load', 'resample', 'resample_mask', 'save', 'voxel_sizes']


def load(path, dtype=np.float32):
    """Return ``(data, affine, header)`` of a NIfTI file (data cast to ``dtype``)."""
    img = nb.load(str(path))
    return np.asarray(img.dataobj, dtype=dtype), img.affine.copy(), img.header


def save(data, affine, path, *, dtype=None, header=None) -> str:
    """Write ``data`` as NIfTI with ``affine`` (sform and qform set, xyzt units mm/s)."""
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nb.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units('mm', 'sec')
    img.to_filename(str(path))
    return str(Path(path).absolute())


def resample(data, src_affine, dst_affine, dst_shape, *, world_xfm=None, order=1, cval=0.0):
    """Resample ``data`` from its grid onto another grid (pull interpolation).

    ``world_xfm`` maps source world points to destination world points (``x_dst = M x_src``,
    identity if None).  For each destination voxel ``v``, the source voxel is
    ``A_src⁻¹ M⁻¹ A_dst v``.
    """
    M = np.eye(4) if world_xfm is None else np.asarray(world_xfm, dtype=float)
    vox = np.linalg.inv(np.asarray(src_affine, float)) @ np.linalg.inv(M) @ np.asarray(
        dst_affine, float)
    data = np.asarray(data)
    if data.ndim == 4:
        return np.stack([resample(data[..., c], src_affine, dst_affine, dst_shape,
                                  world_xfm=world_xfm, order=order, cval=cval)
                         for c in range(data.shape[-1])], axis=-1)
    out = ndimage.affine_transform(data.astype(np.float32, copy=False), vox[:3, :3],
                                   offset=vox[:3, 3], output_shape=tuple(dst_shape),
                                   order=order, mode='constant', cval=cval)
    return out


def resample_mask(mask, src_affine, dst_affine, dst_shape, *, world_xfm=None) -> np.ndarray:
    """Resample a binary mask (trilinear, then threshold at 0.5)."""
    return resample(np.asarray(mask, np.float32), src_affine, dst_affine, dst_shape,
                    world_xfm=world_xfm, order=1) > 0.5
