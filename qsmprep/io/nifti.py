"""NIfTI reading with validation: headers, chunked value scans, phase-unit conversion.

The only module (with :mod:`qsmprep.io.bids`) that touches image files.  Errors are raised as
:class:`~qsmprep.io.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.io.errors import DataError, MissingInputError
from qsmprep.numerics.geometry import voxel_sizes

# the project's one phase-wrapping convention, [-π, π) (re-exported here for io callers)
from qsmprep.numerics.unwrap import wrap_phase

__all__ = [
    'AFFINE_ATOL',
    'CHUNK_VOXELS',
    'MIN_EXTENT_MM',
    'MIN_VOXELS',
    'VolumeStats',
    'check_3d',
    'check_affine',
    'check_min_size',
    'check_missing_content',
    'check_real',
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

#: Fewest voxels along any axis the pipeline can process: the brain mask is eroded by 2
#: voxels, V-SHARP's smallest kernel radius is 2 voxels more, and brain extraction needs
#: background around the head (a 12x14x12 head fails in V-SHARP, 16x18x16 runs).
MIN_VOXELS = 16
#: Smallest field of view (mm) along any axis: registration starts at an 8 mm pyramid level,
#: where an 8 mm image is a single voxel (SimpleITK fails); 16 mm runs.
MIN_EXTENT_MM = 16.0
#: ``|det A| / prod(|column|)`` below this is a degenerate (singular) voxel-to-world matrix.
_MIN_AFFINE_VOLUME = 1e-6


def check_missing_content(path) -> None:
    """Raise :class:`MissingInputError` for a symbolic link whose target is absent.

    That is what a DataLad/git-annex clone holds for files whose content was not fetched.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise MissingInputError(
            f'file content is not present (symbolic link to the missing {os.readlink(path)})',
            path=path,
            hint='in a DataLad/git-annex dataset fetch the data first: `datalad get '
                 f'{path.parent}` (or `git annex get .`)',
        )


def load_image(path) -> nib.Nifti1Image:
    """Load a NIfTI header (data stay on disk) or raise :class:`DataError`."""
    path = Path(path)
    check_missing_content(path)
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


def check_real(img, path, part: str) -> None:
    """Refuse complex-valued images: reading them as real would drop the imaginary part.

    ``part`` is ``'mag'`` or ``'phase'`` (for the message).
    """
    dtype = img.get_data_dtype()
    if dtype.kind != 'c':
        return
    if part == 'phase':
        hint = ('store the phase as real values, in radians ("Units": "rad", e.g. the angle '
                'of the complex signal) or in scanner arbitrary units ("Units": '
                '"arbitrary"), and the modulus as the part-mag image')
    else:
        hint = ('store the magnitude as real values (the modulus of the complex signal) and '
                'the angle as the part-phase image')
    raise DataError(f'{"phase" if part == "phase" else "magnitude"} image is stored as complex '
                    f'values ({dtype.name}); qsmprep would silently drop the imaginary part',
                    path=path, hint=hint)


def check_affine(img, path) -> np.ndarray:
    """Return the affine of ``img`` as float; refuse a non-finite or singular one.

    A singular affine (e.g. an all-zero sform) has no voxel sizes and no B0 direction.

    >>> img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
    >>> check_affine(img, 'x.nii').diagonal().tolist()
    [0.5, 0.5, 2.0, 1.0]
    """
    A = np.asarray(img.affine, dtype=float)
    M = A[:3, :3]
    ok = bool(np.all(np.isfinite(A)))
    if ok:
        norms = np.linalg.norm(M, axis=0)
        ok = bool(np.all(norms > 0)) and (
            abs(np.linalg.det(M)) > _MIN_AFFINE_VOLUME * float(np.prod(norms)))
    if not ok:
        rows = '; '.join(' '.join(f'{x:.4g}' for x in r) for r in A[:3])
        raise DataError(
            f'the voxel-to-world affine is singular or not finite ([{rows}]): the image has '
            'no valid geometry', path=path,
            hint='write a valid sform/qform into the NIfTI header (re-run the DICOM to NIfTI '
                 'conversion, e.g. dcm2niix; or copy the affine of a correct echo with '
                 'nibabel)',
        )
    return A


def check_min_size(shape, affine, path) -> None:
    """Refuse grids too small to process (:data:`MIN_VOXELS`, :data:`MIN_EXTENT_MM`).

    >>> try:
    ...     check_min_size((4, 4, 4), np.eye(4), 'x.nii')
    ... except DataError as exc:
    ...     print(exc.message)
    image is 4x4x4 voxels, too small to process: qsmprep needs at least 16 voxels along every axis
    >>> check_min_size((64, 64, 32), np.diag([1.0, 1.0, 2.0, 1.0]), 'x.nii')  # passes
    """
    shape = tuple(int(n) for n in shape)
    text = 'x'.join(map(str, shape))
    if min(shape) < MIN_VOXELS:
        raise DataError(
            f'image is {text} voxels, too small to process: qsmprep needs at least '
            f'{MIN_VOXELS} voxels along every axis', path=path,
            hint='give the full field of view of the head (brain extraction needs background '
                 'around it, V-SHARP kernels of 2 voxels and more inside the eroded brain '
                 'mask)',
        )
    extent = np.asarray(shape, float) * voxel_sizes(affine)
    if extent.min() < MIN_EXTENT_MM - AFFINE_ATOL:  # float32 affines: 15.9999 is 16
        fov = ' x '.join(f'{e:.4g}' for e in extent)
        raise DataError(
            f'field of view {fov} mm is too small to process: qsmprep needs at least '
            f'{MIN_EXTENT_MM:g} mm along every axis (registration starts at 8 mm resolution)',
            path=path,
            hint='check the voxel sizes in the header (pixdim, sform/qform in mm) and give the '
                 'full field of view of the head',
        )


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
    vs = voxel_sizes(A)
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
