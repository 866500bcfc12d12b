"""Image geometry against analytic truths: voxel sizes, direction cosines, B0 in any frame."""

import numpy as np
import pytest

from qsmprep.numerics.geometry import (
    apply_affine,
    b0_direction_from_affine,
    b0_direction_from_rotation,
    b0_in_grid,
    b0_voxel_to_world,
    b0_world_to_voxel,
    direction_cosines,
    nearest_rotation,
    rotation_about,
    superior_voxel_axis,
    voxel_sizes,
)

X, Y, Z = np.eye(3)


def _rot(axis, deg):
    """Textbook rotation matrices (independent of rotation_about)."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array({'x': [[1, 0, 0], [0, c, -s], [0, s, c]],
                     'y': [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                     'z': [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis])


def _affine(R, sizes, signs=(1, 1, 1), origin=(0.0, 0.0, 0.0)):
    """``[R · diag(signs) · diag(sizes) | origin]``: a rotated, possibly flipped grid."""
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(np.asarray(signs, float) * np.asarray(sizes, float))
    A[:3, 3] = origin
    return A


OBLIQUE = _rot('x', 17) @ _rot('y', -31) @ _rot('z', 58)


def _unit_vectors(n, seed):
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- voxel sizes and direction cosines ----------------------------------------------------

@pytest.mark.parametrize('signs', [(1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, -1)])
def test_voxel_sizes_and_cosines_of_oblique_flipped_anisotropic_grid(signs):
    sizes = (0.6, 1.1, 2.5)
    A = _affine(OBLIQUE, sizes, signs, origin=(-90.0, 12.0, 40.0))
    np.testing.assert_allclose(voxel_sizes(A), sizes, rtol=1e-13)
    np.testing.assert_allclose(voxel_sizes(A[:3, :3]), sizes, rtol=1e-13)  # 3x3 accepted
    R = direction_cosines(A)
    np.testing.assert_allclose(R, OBLIQUE @ np.diag(signs), atol=1e-13)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-13)
    assert np.sign(np.linalg.det(R)) == np.prod(signs)  # LAS etc. are left-handed


def test_geometry_rejects_broken_affines():
    with pytest.raises(ValueError, match='finite 4x4'):
        voxel_sizes(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match='finite 4x4'):
        voxel_sizes(np.eye(2))
    A = np.eye(4)
    A[:3, 1] = 0
    assert voxel_sizes(A).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match='zero-length voxel axis'):
        direction_cosines(A)
    with pytest.raises(ValueError, match='unit vector'):
        b0_world_to_voxel([0, 0, 2], np.eye(4))


def test_apply_affine_matches_homogeneous_product():
    A = _affine(OBLIQUE, (0.6, 1.1, 2.5), (-1, 1, 1), origin=(-90.0, 12.0, 40.0))
    ijk = np.random.default_rng(0).uniform(0, 50, (7, 3))
    hom = (A @ np.c_[ijk, np.ones(7)].T).T[:, :3]
    np.testing.assert_allclose(apply_affine(A, ijk), hom, atol=1e-12)
    np.testing.assert_allclose(apply_affine(A, ijk[0]), hom[0], atol=1e-12)  # single point
    with pytest.raises(ValueError, match='3 coordinates'):
        apply_affine(A, np.zeros((2, 2)))


def test_superior_voxel_axis():
    assert superior_voxel_axis(np.eye(4)) == 2
    sag = np.zeros((4, 4))  # voxel i → A, j → S, k → R (a sagittal acquisition)
    sag[:3, :3] = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    sag[3, 3] = 1
    assert superior_voxel_axis(sag) == 1
    assert superior_voxel_axis(_affine(_rot('x', 30), (1, 1, 3), (1, 1, -1))) == 2


# --- rotations --------------------------------------------------------------------------

def test_rotation_about_matches_textbook_matrices():
    for axis, e in zip('xyz', (X, Y, Z), strict=True):
        for deg in (-70.0, 15.0, 90.0, 200.0):
            np.testing.assert_allclose(rotation_about(e, deg), _rot(axis, deg), atol=1e-14)
    R = rotation_about((1.0, -2.0, 0.5), 37.0)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-14)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ [1.0, -2.0, 0.5], [1.0, -2.0, 0.5], atol=1e-14)  # axis fixed
    with pytest.raises(ValueError, match='non-zero'):
        rotation_about((0, 0, 0), 10)


def test_nearest_rotation_of_rigid_scaled_and_reflected_transforms():
    Q = rotation_about((0.3, 1.0, -0.4), 25.0)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Q, (5.0, -3.0, 8.0)
    np.testing.assert_allclose(nearest_rotation(T), Q, atol=1e-14)
    # polar decomposition T = Q S (S symmetric positive definite: scaling and shear along
    # any axes) has exactly Q as its rotation part
    np.testing.assert_allclose(nearest_rotation(1.1 * Q), Q, atol=1e-14)
    S = np.array([[1.05, 0.02, -0.01], [0.02, 0.97, 0.03], [-0.01, 0.03, 1.02]])
    np.testing.assert_allclose(nearest_rotation(Q @ S), Q, atol=1e-13)
    with pytest.raises(ValueError, match='reflection'):
        nearest_rotation(np.diag([-1.0, 1.0, 1.0, 1.0]))


# --- B0 between frames ------------------------------------------------------------------

@pytest.mark.parametrize('signs', [(1, 1, 1), (-1, 1, 1), (1, 1, -1)])
def test_b0_world_voxel_round_trip_and_analytic_value(signs):
    A = _affine(OBLIQUE, (0.6, 1.1, 2.5), signs, origin=(3.0, -4.0, 5.0))
    P = OBLIQUE @ np.diag(signs)  # direction cosines: orthonormal, so P⁻¹ = Pᵀ
    for w in _unit_vectors(20, seed=1):
        b = b0_world_to_voxel(w, A)
        np.testing.assert_allclose(b, P.T @ w, atol=1e-13)  # voxel sizes do not enter
        np.testing.assert_allclose(np.linalg.norm(b), 1.0, atol=1e-14)
        np.testing.assert_allclose(b0_voxel_to_world(b, A), w, atol=1e-13)
    # scanner B0 (world +z): the third row of the direction cosines
    np.testing.assert_allclose(b0_direction_from_affine(A), P[2], atol=1e-13)


def test_b0_of_tilted_grid_identity_and_qfac():
    np.testing.assert_allclose(b0_direction_from_affine(np.eye(4)), Z)
    for deg in (10, 25, 40):  # grid tilted about x: B0 seen at +θ about the voxel x axis
        t = np.deg2rad(deg)
        np.testing.assert_allclose(b0_direction_from_affine(_affine(_rot('x', deg), (1, 1, 1))),
                                   [0, np.sin(t), np.cos(t)], atol=1e-12)
    A = _affine(_rot('y', 30), (0.5, 0.5, 3.0))
    t = np.deg2rad(30)
    np.testing.assert_allclose(b0_direction_from_affine(A), [-np.sin(t), 0, np.cos(t)],
                               atol=1e-12)
    # qfac = -1: the z voxel axis points inferior: b_z flips relative to b_x, b_y
    B = A.copy()
    B[:3, 2] *= -1
    np.testing.assert_allclose(b0_direction_from_affine(B), b0_direction_from_affine(A)
                               * [1, 1, -1], atol=1e-12)


def test_las_and_ras_grids_of_the_same_head():
    """Same world B0, tilted towards +x (right): the LAS grid sees it towards −i."""
    t = np.deg2rad(20)
    w = np.array([np.sin(t), 0.0, np.cos(t)])
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    las = np.diag([-2.0, 2.0, 3.0, 1.0])
    b_ras, b_las = b0_world_to_voxel(w, ras), b0_world_to_voxel(w, las)
    np.testing.assert_allclose(b_ras, w, atol=1e-15)
    np.testing.assert_allclose(b_las, w * [-1, 1, 1], atol=1e-15)
    # between the two grids (same world, no transform) only the i component flips
    np.testing.assert_allclose(b0_in_grid(b_ras, ras, las), b_las, atol=1e-15)
    np.testing.assert_allclose(b0_in_grid(b_las, las, ras), b_ras, atol=1e-15)


def test_b0_in_grid_rotates_a_known_vector_by_a_known_rigid_transform():
    # 90° about world z plus a translation: x → y, and the translation does not matter
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _rot('z', 90), (10.0, -20.0, 30.0)
    np.testing.assert_allclose(b0_in_grid(X, np.eye(4), np.eye(4), world_xfm=T), Y,
                               atol=1e-15)
    # 30° about world x applied to B0 = +z: (0, −sin 30°, cos 30°)
    T[:3, :3] = _rot('x', 30)
    np.testing.assert_allclose(b0_in_grid(Z, np.eye(4), np.eye(4), world_xfm=T),
                               [0, -0.5, np.sqrt(3) / 2], atol=1e-15)
    # general case: b_dst = P_dstᵀ Q P_src b_src for oblique, flipped, anisotropic grids
    src = _affine(OBLIQUE, (0.6, 1.1, 2.5), (-1, 1, 1), origin=(1.0, 2.0, 3.0))
    dst = _affine(_rot('y', 12), (1.0, 1.0, 2.0), (1, 1, -1))
    Q = rotation_about((1.0, 1.0, 0.0), -28.0)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Q, (4.0, 0.0, -7.0)
    P_src, P_dst = OBLIQUE @ np.diag([-1, 1, 1]), _rot('y', 12) @ np.diag([1, 1, -1])
    for b in _unit_vectors(10, seed=2):
        np.testing.assert_allclose(b0_in_grid(b, src, dst, world_xfm=T), P_dst.T @ Q @ P_src @ b,
                                   atol=1e-13)
        # and back with the inverse transform
        back = b0_in_grid(b0_in_grid(b, src, dst, world_xfm=T), dst, src,
                          world_xfm=np.linalg.inv(T))
        np.testing.assert_allclose(back, b, atol=1e-13)


def test_b0_from_rotation_matches_affine_of_rotated_acquisition():
    """Acquisition i: head rotated by Q relative to the reference.  Imaging the rotated head
    with an axial grid is the same as imaging the fixed head with a grid rotated by Qᵀ."""
    Q = _rot('x', 20) @ _rot('y', -15)
    ref_affine = np.diag([1.0, 1.2, 2.0, 1.0])
    T = np.eye(4)
    T[:3, :3] = Q  # world transform acquisition -> reference
    b = b0_direction_from_rotation(T, ref_affine)
    A_equiv = ref_affine.copy()
    A_equiv[:3, :3] = Q.T @ ref_affine[:3, :3]
    np.testing.assert_allclose(b, b0_direction_from_affine(A_equiv), atol=1e-12)
    # the same as carrying the reference's own axial B0 through the transform
    np.testing.assert_allclose(b0_in_grid(Z, np.eye(4), ref_affine, world_xfm=T), b,
                               atol=1e-12)
    np.testing.assert_allclose(b0_direction_from_rotation(T), Q @ Z, atol=1e-12)  # world
    # 12-dof matrix with scaling: polar decomposition recovers nearly the same direction
    T2 = T.copy()
    T2[:3, :3] = Q @ np.diag([1.05, 0.97, 1.02])
    np.testing.assert_allclose(b0_direction_from_rotation(T2, ref_affine), b, atol=0.05)
    with pytest.raises(ValueError, match='reflection'):
        b0_direction_from_rotation(np.diag([1.0, 1.0, -1.0]))
