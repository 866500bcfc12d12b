"""Image geometry: voxel sizes, direction cosines, rotations and the B0 vector in any frame.

The one place in qsmprep that turns affines and world transforms into voxel sizes and
B0 directions; every other module calls these functions (arrays in, arrays out: no
nibabel, no nipype).

Frames (``docs/physics.md``, *Frames*)
--------------------------------------
* **World frame**: NIfTI RAS+ millimetres.  The scanner's B0 is world ``+z`` (RAS and
  DICOM LPS agree on it).
* **Voxel frame** of a grid with affine ``A = [M | t]``: its array axes ``(i, j, k)``.
  The voxel sizes are the column norms ``Δ_d = |M[:, d]|``, the direction cosines
  ``R = M · diag(Δ)⁻¹`` (unit columns: the world direction of each voxel axis; ``det R < 0``
  for a left-handed grid such as LAS).  A *direction* ``v`` in the voxel frame is
  ``w = R v`` in world coordinates and ``v = R⁻¹ w`` back; voxel sizes do not enter (a
  direction is not a displacement in voxel units).
* **World transform** ``T`` (4 × 4): maps points of one world space onto another,
  ``x_dst = T x_src`` (e.g. a rigid registration of acquisition ``i`` onto the reference).
  It rotates directions by its rotation part ``Q`` (nearest rotation of ``T[:3, :3]``, by
  polar decomposition, so a 12-dof matrix with small scaling/shear still gives a rotation).

So the B0 direction of acquisition ``i`` (unit vector ``b_i`` in its voxel frame) in the
voxel frame of the reference grid is ``b_ref = R_ref⁻¹ Q R_i b_i`` (:func:`b0_in_grid`).
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics._checks import as_direction

__all__ = [
    'B0_WORLD',
    'apply_affine',
    'b0_direction_from_affine',
    'b0_direction_from_rotation',
    'b0_in_grid',
    'b0_voxel_to_world',
    'b0_world_to_voxel',
    'direction_cosines',
    'nearest_rotation',
    'rotation_about',
    'superior_voxel_axis',
    'voxel_sizes',
]

#: The scanner's main-field direction in world coordinates (RAS+ and LPS+ agree on +z).
B0_WORLD = (0.0, 0.0, 1.0)


def _linear_part(matrix, name: str) -> np.ndarray:
    A = np.asarray(matrix, dtype=float)
    if A.shape not in ((4, 4), (3, 3)) or not np.all(np.isfinite(A)):
        raise ValueError(f'{name} must be a finite 4x4 (or 3x3) matrix; got shape {A.shape}')
    return A[:3, :3]


def voxel_sizes(affine) -> np.ndarray:
    """Voxel sizes (mm): the column norms of ``affine[:3, :3]``.

    Rotations and axis flips do not change them; a zero-length axis gives 0 (callers that
    need a valid grid check the affine first, :func:`direction_cosines` refuses it).

    >>> A = np.diag([-2.0, 1.0, 3.0, 1.0])  # LAS, anisotropic
    >>> voxel_sizes(A).tolist()
    [2.0, 1.0, 3.0]
    """
    return np.linalg.norm(_linear_part(affine, 'affine'), axis=0)


def direction_cosines(affine) -> np.ndarray:
    """Unit world directions of the voxel axes: the columns of ``R = M · diag(Δ)⁻¹``.

    >>> direction_cosines(np.diag([-2.0, 1.0, 3.0, 1.0])).tolist()
    [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    M = _linear_part(affine, 'affine')
    norms = np.linalg.norm(M, axis=0)
    if np.any(norms <= 0):
        raise ValueError('affine has a zero-length voxel axis; the NIfTI header is broken')
    return M / norms


def apply_affine(affine, points) -> np.ndarray:
    """Apply a 4 × 4 affine to points ``(..., 3)``: ``A[:3, :3] p + A[:3, 3]``.

    Voxel indices → world mm with an image affine, or world → world with a world transform.

    >>> apply_affine(np.diag([2.0, 2.0, 3.0, 1.0]), [[1, 1, 1], [0, 0, 2]]).tolist()
    [[2.0, 2.0, 3.0], [0.0, 0.0, 6.0]]
    """
    A = np.asarray(affine, dtype=float)
    if A.shape != (4, 4):
        raise ValueError(f'affine must be a 4x4 matrix; got shape {A.shape}')
    p = np.asarray(points, dtype=float)
    if p.shape[-1:] != (3,):
        raise ValueError(f'points must have 3 coordinates on the last axis; got shape {p.shape}')
    return p @ A[:3, :3].T + A[:3, 3]


def rotation_about(axis, angle_deg) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle_deg`` degrees (right-handed, Rodrigues).

    >>> np.round(rotation_about((1, 0, 0), 90) @ [0, 1, 0], 12).tolist()
    [0.0, 0.0, 1.0]
    """
    u = np.asarray(axis, dtype=float)
    n = np.linalg.norm(u)
    if u.shape != (3,) or not np.isfinite(n) or n == 0:
        raise ValueError(f'axis must be a non-zero 3-vector; got {axis!r}')
    u = u / n
    t = np.deg2rad(float(angle_deg))
    K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)


def nearest_rotation(transform) -> np.ndarray:
    """Rotation part ``Q`` of a world transform (polar decomposition of its 3 × 3 block).

    ``Q = U Vᵀ`` for ``T[:3, :3] = U Σ Vᵀ``: exact for a rigid transform, the closest
    rotation (Frobenius norm) for one with scaling or shear.  A reflection is refused: a head
    does not turn into its mirror image between acquisitions.

    >>> nearest_rotation(np.diag([2.0, 2.0, 2.0, 1.0])).tolist()  # a scaling has no rotation
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    M = _linear_part(transform, 'transform')
    U, _, Vt = np.linalg.svd(M)
    Q = U @ Vt
    if np.linalg.det(Q) < 0:
        raise ValueError('transform contains a reflection; a rigid head rotation was expected')
    return Q


def b0_voxel_to_world(b0_voxel, affine) -> np.ndarray:
    """A unit vector in the voxel frame of ``affine`` → world coordinates (``R b``).

    >>> b0_voxel_to_world([1, 0, 0], np.diag([-2.0, 1.0, 3.0, 1.0])).tolist()  # LAS x
    [-1.0, 0.0, 0.0]
    """
    b = direction_cosines(affine) @ as_direction(b0_voxel, name='b0_voxel')
    return b / np.linalg.norm(b)


def b0_world_to_voxel(b0_world, affine) -> np.ndarray:
    """A unit vector in world coordinates → the voxel frame of ``affine`` (``R⁻¹ w``).

    ``R⁻¹`` (not ``Rᵀ``) so that sheared grids are handled too; for an orthonormal ``R`` it
    is the transpose.

    >>> t = np.deg2rad(30)
    >>> A = np.diag([2.0, 2.0, 3.0, 1.0])  # anisotropic voxels, tilted about x
    >>> A[:3, :3] = [[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]] @ A[:3, :3]
    >>> np.round(b0_world_to_voxel([0, 0, 1], A), 6).tolist()
    [0.0, 0.5, 0.866025]
    """
    w = as_direction(b0_world, name='b0_world')
    b = np.linalg.solve(direction_cosines(affine), w)
    return b / np.linalg.norm(b)


def b0_direction_from_affine(affine, b0_world=B0_WORLD) -> np.ndarray:
    """B0 direction in the voxel frame of an image: :func:`b0_world_to_voxel` of world ``+z``.

    With ``R`` the direction cosines, ``b̂ = R⁻¹ ẑ`` (the third row of ``R`` when ``R`` is
    orthonormal).  The full affine accounts for ``qfac = −1`` (left-handed grids)
    automatically.

    >>> b0_direction_from_affine(np.eye(4)).tolist()
    [0.0, 0.0, 1.0]
    >>> b0_direction_from_affine(np.diag([1.0, 1.0, -1.0, 1.0])).tolist()  # RAI grid
    [0.0, 0.0, -1.0]
    """
    return b0_world_to_voxel(b0_world, affine)


def b0_in_grid(b0_voxel, src_affine, dst_affine, *, world_xfm=None) -> np.ndarray:
    """Express a direction given in the voxel frame of one grid in that of another grid.

    ``b_dst = R_dst⁻¹ Q R_src b_src``, with ``Q`` the rotation part of ``world_xfm`` (the
    world transform source → destination, :func:`nearest_rotation`; identity if None).  The
    translation of ``world_xfm`` and the grids' origins and voxel sizes do not matter.

    Parameters
    ----------
    b0_voxel : 3 floats
        Unit vector (e.g. the B0 direction of an acquisition) in the source voxel frame.
    src_affine, dst_affine : (4, 4) arrays
        Affines of the source and destination grids.
    world_xfm : (4, 4) array, optional
        World transform mapping source world points onto destination world points
        (``x_dst = T x_src``), e.g. from a rigid registration.

    Returns
    -------
    (3,) ndarray
        Unit vector in the destination voxel frame.

    >>> A = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS destination grid, RAS source grid
    >>> b0_in_grid([1, 0, 0], np.eye(4), A).tolist()
    [-1.0, 0.0, 0.0]
    """
    w = b0_voxel_to_world(b0_voxel, src_affine)
    if world_xfm is not None:
        w = nearest_rotation(world_xfm) @ w
    return b0_world_to_voxel(w, dst_affine)


def b0_direction_from_rotation(transform, reference_affine=None) -> np.ndarray:
    """B0 direction of an acquisition in the reference frame, from a world-frame transform.

    Parameters
    ----------
    transform : (4, 4) or (3, 3) array
        World-coordinate (mm, RAS) transform mapping points of acquisition ``i`` to the
        reference acquisition (as from a rigid registration).  Its rotation part ``Q`` is
        taken by :func:`nearest_rotation`.
    reference_affine : (4, 4) array, optional
        Affine of the reference image.  If given, the result is in its voxel frame
        (``b̂ = R_ref⁻¹ Q ẑ``); otherwise in reference world coordinates (``Q ẑ``).

    >>> t = np.deg2rad(20)
    >>> Q = [[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]
    >>> np.round(b0_direction_from_rotation(Q, np.eye(4)), 6).tolist()
    [0.0, -0.34202, 0.939693]
    """
    b = nearest_rotation(transform) @ np.asarray(B0_WORLD)
    if reference_affine is not None:
        return b0_world_to_voxel(b, reference_affine)
    return b / np.linalg.norm(b)


def superior_voxel_axis(affine) -> int:
    """Index of the voxel axis whose world direction is closest to superior (world ±z).

    This is the axis labelled ``S`` or ``I`` by :func:`nibabel.aff2axcodes`.

    >>> superior_voxel_axis(np.eye(4))
    2
    >>> superior_voxel_axis([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # coronal
    1
    """
    return int(np.argmax(np.abs(direction_cosines(affine)[2])))
