"""Geometry used by the participant workflow: FLIRT↔world conversion, B0 rotation,
resampling, and SimpleITK rigid registration against a known rotation."""

import nibabel as nb
import numpy as np
import pytest

from qsmprep.numerics.geometry import b0_direction_from_affine, b0_in_grid
from qsmprep.simulate.acquisition import rotation_about
from qsmprep.utils.images import resample
from qsmprep.utils.registration import flirt_to_world, sitk_rigid


def _rot(axis, deg):
    return rotation_about(np.eye(3)[axis], deg)


def _fsl_scaled_voxel(affine, shape):
    """voxel index -> FSL scaled-voxel mm (x flipped when det(affine) > 0), per the FSL
    FLIRT documentation (independent of nitransforms)."""
    vs = np.linalg.norm(affine[:3, :3], axis=0)
    S = np.diag([*vs, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1
        flip[0, 3] = shape[0] - 1
        S = S @ flip
    return S


def test_flirt_matrix_converts_to_the_world_transform(tmp_path):
    shape_r, shape_m = (20, 22, 18), (24, 20, 16)
    A_ref = np.diag([1.0, 1.2, 1.5, 1.0])
    A_ref[:3, 3] = [-10, -12, -9]
    A_mov = np.eye(4)
    A_mov[:3, :3] = _rot(0, 10) @ np.diag([1.1, 1.0, 2.0])
    A_mov[:3, 3] = [-12, -9, -14]
    W = np.eye(4)  # moving world -> reference world
    W[:3, :3] = _rot(0, 25) @ _rot(1, -15)
    W[:3, 3] = [3.0, -2.0, 5.0]
    ref, mov = tmp_path / 'ref.nii.gz', tmp_path / 'mov.nii.gz'
    nb.Nifti1Image(np.zeros(shape_r, np.float32), A_ref).to_filename(ref)
    nb.Nifti1Image(np.zeros(shape_m, np.float32), A_mov).to_filename(mov)
    # FLIRT maps moving scaled-voxel coordinates to reference scaled-voxel coordinates
    M = (_fsl_scaled_voxel(A_ref, shape_r) @ np.linalg.inv(A_ref) @ W @ A_mov
         @ np.linalg.inv(_fsl_scaled_voxel(A_mov, shape_m)))
    np.testing.assert_allclose(flirt_to_world(M, mov, ref), W, atol=1e-6)


def test_b0_in_grid_for_rotated_head():
    """Head rotated by Q in acquisition i (axial grid, B0 = z): in the reference frame B0 is
    Q⁻¹... expressed through the registration transform M = world_i -> world_ref."""
    Q = _rot(0, 30) @ _rot(1, 20)      # head pose in scanner i relative to the reference
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    # a point x_ref of the head appears at Q x_ref in scanner i: M (i -> ref) = Q⁻¹
    M = np.eye(4)
    M[:3, :3] = Q.T
    b = b0_in_grid(b0_direction_from_affine(A), A, A, world_xfm=M)
    np.testing.assert_allclose(b, Q.T @ [0, 0, 1], atol=1e-12)
    # sidecar-style oblique B0 on a grid whose affine is rotated (qsm-forward convention)
    A2 = A.copy()
    A2[:3, :3] = _rot(2, 40) @ A[:3, :3]
    b_native = b0_direction_from_affine(A2)
    np.testing.assert_allclose(b0_in_grid(b_native, A2, A), [0, 0, 1], atol=1e-12)


def test_resample_round_trip_and_transform_direction():
    x, y, z = np.mgrid[:24, :26, :22].astype(float)
    vol = np.exp(-((x - 12) ** 2 + (y - 11) ** 2 + (z - 10) ** 2) / 30.0)
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    A[:3, 3] = -np.array(vol.shape) + 1.0
    M = np.eye(4)
    M[:3, 3] = [4.0, 0.0, 0.0]          # moving world + 4 mm in x = reference world
    out = resample(vol, A, A, vol.shape, world_xfm=M, order=1)
    # the blob centre moves by +2 voxels along x
    assert np.unravel_index(np.argmax(out), out.shape) == (14, 11, 10)
    back = resample(out, A, A, vol.shape, world_xfm=np.linalg.inv(M), order=1)
    np.testing.assert_allclose(back[4:-4], vol[4:-4], atol=1e-6)


@pytest.mark.slow
def test_sitk_rigid_recovers_a_30_degree_head_rotation():
    pytest.importorskip('SimpleITK')
    n = 40
    x, y, z = np.mgrid[:n, :n, :n].astype(float) - n / 2 + 0.5
    head = ((x / 14) ** 2 + (y / 17) ** 2 + (z / 12) ** 2 <= 1).astype(np.float32)
    head += 0.6 * ((x - 4) ** 2 + (y + 5) ** 2 + (z - 3) ** 2 <= 16)
    head += 0.3 * (((x + 6) / 3) ** 2 + (y / 8) ** 2 + ((z + 2) / 3) ** 2 <= 1)
    A = np.diag([3.0, 3.0, 3.0, 1.0])
    A[:3, 3] = -3.0 * (n / 2 - 0.5)
    Q = _rot(0, 30) @ _rot(1, -10)
    W_true = np.eye(4)
    W_true[:3, :3] = Q.T                 # moving (rotated head) -> reference
    W_true[:3, 3] = [2.0, -3.0, 1.0]
    moving = resample(head, A, A, head.shape, world_xfm=np.linalg.inv(W_true), order=1)
    W, _ = sitk_rigid(head, A, moving, A)
    np.testing.assert_array_equal(sitk_rigid(head, A, moving, A)[0], W)  # reproducible
    R = W[:3, :3] @ W_true[:3, :3].T
    angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
    assert angle < 2.0
    np.testing.assert_allclose(W[:3, 3], W_true[:3, 3], atol=1.5)
