"""NIfTI reading with validation: headers, chunked value scans, phase-unit conversion.

The only module (with :mod:`qsmprep.io.bids`) that touches image files.  Errors are raised as
:class:`~qsmprep.io.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.io.errors import DataError

__all__ = [
    'AFFINE_ATOL',
    'CHUNK_VOXELS',
    'VolumeStats',
    'check_3d',
    'describe_grid',
    'load_image',
    'read_volume',
    'rescale_arbitrary_phase',
    'same_grid',
    'scan_volume',
    'wrap_phase',
]

#: Absolute tolerance (mm) on affine entries when comparing grids (NIfTI stores float32).
AFFINE_ATOL = 1e-3

#: Voxels read at a time by :func:`scan_volume` (2**25 float64 ≈ 256 MB): a 210×224×160
#: volume is read in one piece; only larger volumes are scanned slab by slab.
CHUNK_VOXELS = 2**25


def load_image(path) -> nib.Nifti1Image:
    """Load a NIfTI header (data stay on disk) or raise :class:`DataError`."""
    path = Path(path)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, OSError, EOFError)
        raise DataError(
            f'cannot read NIfTI file ({type(exc).__name__}: {exc})', path=path,
            hint='check that the file is a complete, uncorrupted .nii or .nii.gz image '
                 '(re-run the DICOM to NIfTI conversion)',
        ) from None


def check_3d(img, path) -> tuple[int, int, int]:
    """Return the 3-D shape of ``img``; trailing singleton axes are allowed.

    Raises :class:`DataError` for 2-D images or images with more than one volume.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise DataError(f'image is {len(shape)}-D (shape {shape}); a 3-D volume is expected',
                        path=path, hint='store each echo as a 3-D volume')
    if any(n != 1 for n in shape[3:]):
        raise DataError(
            f'image is {len(shape)}-D with shape {shape}: more than one volume in an echo file',
            path=path,
            hint='each file must be a 3-D, coil-combined volume of a single echo; split the '
                 'echoes into separate echo-<index> files (one per echo, with its own EchoTime)',
        )
    return shape[:3]


def same_grid(shape_a, affine_a, shape_b, affine_b, *, atol: float = AFFINE_ATOL) -> bool:
    """True when two images share shape and affine (entries within ``atol`` mm).

    >>> same_grid((4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4) + 1e-5)
    True
    >>> same_grid((4, 4, 4), np.eye(4), (4, 4, 3), np.eye(4))
    False
    """
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), rtol=0, atol=atol)
    )


def describe_grid(shape, affine) -> str:
    """Short text of a grid for error messages.

    >>> describe_grid((8, 8, 6), np.diag([1, 1, 2, 1]))
    'shape 8x8x6, voxel 1x1x2 mm, origin (0, 0, 0)'
    """
    A = np.asarray(affine, dtype=float)
    vs = np.linalg.norm(A[:3, :3], axis=0)
    origin = ', '.join(f'{x:.4g}' for x in A[:3, 3] + 0.0)
    return (f'shape {"x".join(str(int(n)) for n in shape)}, '
            f'voxel {"x".join(f"{v:.4g}" for v in vs)} mm, origin ({origin})')


@dataclasses.dataclass(frozen=True)
class VolumeStats:
    """Result of :func:`scan_volume`."""

    n_nonfinite: int
    minimum: float
    maximum: float
    integer_valued: bool
    n_nonzero: int


def _slab(img, k0, k1):
    idx = (slice(None), slice(None), slice(k0, k1)) + (0,) * (len(img.shape) - 3)
    return np.asanyarray(img.dataobj[idx])  # native dtype (float after scl_slope scaling)


def scan_volume(img, *, chunk_voxels: int = CHUNK_VOXELS, integer: bool = False) -> VolumeStats:
    """Count non-finite values and take min/max of a 3-D image, reading it slab by slab.

    Reads the data once, at most ``chunk_voxels`` voxels at a time (along the last axis, which
    is contiguous on disk), so memory stays bounded for large volumes; values keep their
    stored dtype (no float64 copy).  Min and max are over the finite values (NaN when there
    are none).  ``integer=True`` also checks whether all values are whole numbers
    (``integer_valued``; otherwise it is only True for integer dtypes).
    """
    nx, ny, nz = check_3d(img, getattr(img, 'get_filename', lambda: '')())
    step = max(1, chunk_voxels // max(1, nx * ny))
    bad = nonzero = 0
    lo, hi = np.inf, -np.inf
    whole = True
    for k0 in range(0, nz, step):
        x = _slab(img, k0, min(nz, k0 + step))
        if x.dtype.kind in 'biu':
            v = x
        else:
            n_finite = int(np.count_nonzero(np.isfinite(x)))
            bad += x.size - n_finite
            v = x if n_finite == x.size else x[np.isfinite(x)]
            whole = whole and integer and bool(np.all(v == np.round(v)))
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            nonzero += int(np.count_nonzero(v))
    if not np.isfinite(lo):
        lo = hi = float('nan')
    return VolumeStats(bad, lo, hi, whole, nonzero)


def read_volume(path, *, dtype=np.float32) -> np.ndarray:
    """Read a 3-D NIfTI (trailing singleton axes dropped) as ``dtype``."""
    img = load_image(path)
    shape = check_3d(img, path)
    try:
        data = np.asanyarray(img.dataobj)  # stored dtype, scaled by scl_slope/inter if set
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f'cannot read the image data ({type(exc).__name__}: {exc})', path=path,
                        hint='check that the file is complete') from None
    return data.reshape(shape).astype(dtype, copy=False)


def wrap_phase(phase):
    """Wrap radians into ``[-π, π)``: ``φ - 2π·floor((φ + π) / 2π)``.

    >>> wrap_phase(np.array([np.pi, -np.pi, 3 * np.pi / 2, 0.5])).round(6).tolist()
    [-3.141593, -3.141593, -1.570796, 0.5]
    """
    phase = np.asarray(phase)
    two_pi = phase.dtype.type(2 * np.pi) if phase.dtype.kind == 'f' else 2 * np.pi
    half = two_pi / 2
    return phase - two_pi * np.floor((phase + half) / two_pi)


def rescale_arbitrary_phase(values, vmin: float, vmax: float, *, integer: bool):
    """Map phase in arbitrary (scanner) units to radians in ``[-π, π)``.

    Rule: the observed range ``[vmin, vmax]`` (over all echoes of an orientation) spans one
    full phase cycle.  For integer-valued data the range holds ``n = vmax - vmin + 1`` levels
    and ``φ = 2π (x - vmin) / n - π``, so the Siemens 12-bit range [-4096, 4095] becomes exactly
    ``x·π/4096`` and [0, 4095] becomes ``x·2π/4096 - π``.  For real-valued data
    ``φ = 2π (x - vmin) / (vmax - vmin) - π``, after which the value ``π`` at ``vmax`` wraps to
    ``-π`` (the same angle).

    >>> x = np.array([-4096, -2048, 0, 4095])
    >>> rescale_arbitrary_phase(x, -4096, 4095, integer=True) * 4096 / np.pi
    array([-4096., -2048.,     0.,  4095.])
    >>> rescale_arbitrary_phase(np.array([0.0, 0.5, 1.0]), 0.0, 1.0, integer=False).tolist()
    [-3.141592653589793, 0.0, -3.141592653589793]
    """
    vmin, vmax = float(vmin), float(vmax)
    span = (vmax - vmin + 1.0) if integer else (vmax - vmin)
    if not np.isfinite(span) or span <= 0:
        raise ValueError(f'cannot rescale phase with a constant range [{vmin}, {vmax}]')
    x = np.asarray(values)
    dt = x.dtype if x.dtype.kind == 'f' else np.dtype(np.float64)
    phase = (x - dt.type(vmin)) * dt.type(2 * np.pi / span) - dt.type(np.pi)
    return wrap_phase(phase.astype(dt, copy=False))
