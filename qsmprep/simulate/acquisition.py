"""Multi-orientation, multi-echo GRE acquisitions of a :class:`~qsmprep.simulate.phantom.Phantom`.

Frames and geometry
-------------------
* **Head frame**: the phantom's model-grid world coordinates (RAS mm).
* **Scanner frame**: world coordinates of the acquisitions; B0 is world ``+z``.  For
  acquisition ``i`` the head is physically rotated about the brain centre ``c``:
  ``x_scanner = R_i (x_head − c) + c``; ``R_0 = I`` (the reference orientation), the others
  are tilts of 15–40° about well-spread axes (:func:`head_rotations`).  The tensor values
  rotate with the head (``R χ Rᵀ``).  In the head frame the B0 direction of acquisition
  ``i`` is ``R_iᵀ ẑ``.
* **Acquisition grid**: its voxel axes in the scanner frame are the columns of a
  prescription rotation ``P_i`` (identity: axis-aligned scanner grid; otherwise an
  *oblique* prescription), affine ``[P_i·diag(Δ) | t_i]``.  B0 in its voxel frame is
  ``P_iᵀ ẑ`` (= :func:`qsmprep.numerics.geometry.b0_direction_from_affine`).  All acquisitions
  share one matrix size, centred on the brain, that contains the brain in every orientation
  plus a margin.
* **Reference frame** (ground truth): the voxel frame of the first acquisition's grid
  (``R_0 = I``).  The tensor is stored there (``P_0ᵀ χ P_0``), and the B0 direction of
  acquisition ``i`` in that frame is ``P_0ᵀ R_iᵀ ẑ``.

Field computation
-----------------
Each acquisition is simulated on its own grid: positions are resampled from the model grid
with :func:`scipy.ndimage.affine_transform` (trilinear), tensor values rotated into the
acquisition voxel frame with :func:`qsmprep.numerics.forward.rotate_tensor`.  The field is
computed on a **padded simulation grid**: the acquisition grid extended so that it contains
the whole head (with neck) plus ``padding`` mm of air on every side, rounded up to fast FFT
sizes.  Outside the model box the object is air: because ``D(0) = 0`` a uniform medium
creates no field, so padding with air is the same as padding with zeros in χ − χ_air.  The
FFT is periodic, so the head sees periodic copies of itself at ≥ 2·``padding`` mm; their
field is smooth across the brain and part of the (self-consistent) background field.

* local field: :func:`qsmprep.numerics.forward.tensor_forward` of the tensor inside the
  brain mask (zero outside), 7 FFTs;
* background field: :func:`qsmprep.numerics.forward.dipole_forward` of the (isotropic)
  susceptibility outside the brain mask: CSF rim, skull, scalp, face, neck, sinuses and
  air, 2 FFTs;
* total = local + background (linearity); all in ppm, cropped to the acquisition grid.

Signal
------
``S_e = PD · exp(−TE_e R2*) · exp(i(2π γ̄ B0 TE_e δ·1e-6 + φ0)) + n``, ``n`` complex Gaussian
with ``σ = mean_brain(|S_1|)/SNR``; φ0 a smooth receiver phase offset (same for all echoes);
phase wrapped to [−π, π) (:func:`qsmprep.numerics.unwrap.wrap_phase`).  R2* scales linearly
with B0 from its 3 T value.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_directions, as_voxel_size, positive, positive_array
from qsmprep.numerics.constants import ppm_to_rad
from qsmprep.numerics.dipole import kspace_coordinates
from qsmprep.numerics.forward import (
    apparent_susceptibility,
    dipole_forward,
    rotate_tensor,
    tensor_forward,
)
from qsmprep.numerics.geometry import (  # rotation_about re-exported (public name)
    apply_affine,
    b0_direction_from_affine,
    direction_cosines,
    rotation_about,
    voxel_sizes,
)
from qsmprep.numerics.unwrap import wrap_phase  # [−π, π), one helper for the project
from qsmprep.simulate.phantom import AIR_CHI, Phantom

__all__ = ['AcquisitionFields', 'Geometry', 'arbitrary_to_phase', 'axis_signs', 'bias_field',
           'body_field', 'dephasing_factor', 'design_condition', 'field_gradient',
           'gre_signal', 'head_rotations', 'oblique_prescriptions', 'phase_to_arbitrary',
           'plan_geometries', 'receiver_phase', 'reference_fields', 'rotation_about',
           'sample_labels', 'simulate_acquisition', 'smooth_random_field', 'tensor_field',
           'tensor_rotation_matrix', 'wrap_phase']

_Z = np.array([0.0, 0.0, 1.0])
#: Integer range of phase in ``'arbitrary'`` units (as written by Siemens scanners).
PHASE_INT_RANGE = (-4096, 4095)


# ----------------------------------------------------------------------------------------
# rotations
# ----------------------------------------------------------------------------------------

def design_condition(b0_directions) -> float:
    """Condition number of the ``N × 6`` design of ``b̂ᵀχb̂`` (√2-weighted off-diagonals).

    ``cond₂`` of the rows ``[b1², √2 b1b2, √2 b1b3, b2², √2 b2b3, b3²]``: finite only when the
    directions determine a symmetric tensor (≥ 6 directions not on one quadric cone).  It
    is a quick, k-independent proxy of the STI conditioning (see
    :func:`qsmprep.numerics.sti.sti_condition_number` for the per-k value).

    >>> t = np.deg2rad(30)
    >>> cone = [[np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)]
    ...         for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    >>> design_condition(cone) > 1e12  # all on one cone: degenerate
    True
    """
    b = np.asarray(b0_directions, dtype=float)
    s = np.sqrt(2.0)
    M = np.stack([b[:, 0] ** 2, s * b[:, 0] * b[:, 1], s * b[:, 0] * b[:, 2], b[:, 1] ** 2,
                  s * b[:, 1] * b[:, 2], b[:, 2] ** 2], axis=1)
    sv = np.linalg.svd(M, compute_uv=False)
    if sv.size < 6 or sv[-1] <= sv[0] * 1e-15:
        return float('inf')
    return float(sv[0] / sv[-1])


def head_rotations(n: int, *, rng, tilt_range=(15.0, 40.0), in_plane: float = 10.0,
                   candidates: int = 64):
    """Head rotations ``R_i`` (head → scanner) for ``n`` orientations; ``R_0 = I``.

    Orientation ``i > 0`` tilts the head by an angle in ``tilt_range`` (degrees) so that B0
    in the head frame, ``b̂_i = R_iᵀ ẑ``, points at an azimuth spread around the circle, plus
    a random in-plane rotation about the scanner ``z`` (±``in_plane`` degrees; it does not
    change ``b̂_i``).  Among ``candidates`` random draws the set with the smallest
    :func:`design_condition` is kept (seeded, so reproducible), so that STI with ≥ 6
    orientations is as well conditioned as the tilt range allows.

    Returns
    -------
    ndarray, shape (n, 3, 3)

    >>> R = head_rotations(6, rng=np.random.default_rng(0))
    >>> tilts = np.degrees(np.arccos(R[:, 2, 2]))
    >>> bool(tilts[0] == 0 and np.all((tilts[1:] > 14.99) & (tilts[1:] < 40.01)))
    True
    >>> design_condition(R[:, 2, :]) < 30  # b̂_i = R_iᵀ ẑ = third row of R_i
    True
    """
    n = int(n)
    if n < 1:
        raise ValueError(f'number of orientations must be >= 1; got {n}')
    lo, hi = (float(v) for v in tilt_range)
    if not 0.0 <= lo <= hi < 90.0:
        raise ValueError(f'tilt_range must satisfy 0 <= min <= max < 90 degrees; got '
                         f'{tilt_range!r}')
    best, best_cond = None, np.inf
    m = n - 1
    for _ in range(max(1, int(candidates))):
        tilt = rng.uniform(lo, hi, m)
        az = (np.arange(m) + rng.uniform(-0.35, 0.35, m)) * 2 * np.pi / max(m, 1) + \
            rng.uniform(0, 2 * np.pi)
        psi = rng.uniform(-in_plane, in_plane, m)
        b = np.vstack([_Z, np.stack([np.sin(np.deg2rad(tilt)) * np.cos(az),
                                     np.sin(np.deg2rad(tilt)) * np.sin(az),
                                     np.cos(np.deg2rad(tilt))], axis=1)])
        c = design_condition(b) if n >= 6 else 0.0
        if c < best_cond or best is None:
            best, best_cond = (tilt, az, psi), c
    tilt, az, psi = best
    R = [np.eye(3)]
    for t, a, p in zip(tilt, az, psi, strict=True):
        b = np.array([np.sin(np.deg2rad(t)) * np.cos(a), np.sin(np.deg2rad(t)) * np.sin(a),
                      np.cos(np.deg2rad(t))])
        # rotation taking b to ẑ (about b × ẑ), then an in-plane turn about scanner z
        R0 = rotation_about(np.cross(b, _Z), t) if t > 0 else np.eye(3)
        R.append(rotation_about(_Z, p) @ R0)
    return np.array(R)


def oblique_prescriptions(n: int, *, rng, max_angle: float = 0.0):
    """Prescription rotations ``P_i`` of the acquisition grids (scanner frame).

    ``max_angle = 0`` gives axis-aligned grids (identity).  Otherwise each grid is rotated
    about a random axis by an angle in ``[max_angle/3, max_angle]`` degrees (e.g. an AC-PC
    aligned slab).

    >>> P = oblique_prescriptions(2, rng=np.random.default_rng(0), max_angle=20)
    >>> bool(np.allclose(P[0] @ P[0].T, np.eye(3)) and not np.allclose(P[0], np.eye(3)))
    True
    """
    out = []
    for _ in range(int(n)):
        if max_angle <= 0:
            out.append(np.eye(3))
            continue
        axis = rng.standard_normal(3)
        out.append(rotation_about(axis, rng.uniform(max_angle / 3.0, max_angle)))
    return np.array(out)


def tensor_rotation_matrix(rotation):
    """6 × 6 matrix ``W`` with ``rotate_tensor(T, R) == T @ Wᵀ`` (components on last axis).

    Built from :func:`qsmprep.numerics.forward.rotate_tensor` applied to the six basis
    tensors (the map is linear), so a whole volume is rotated with six multiply-adds per
    component.

    >>> R = rotation_about((1, 2, 3), 33)
    >>> T = np.random.default_rng(0).standard_normal(6)
    >>> bool(np.allclose(tensor_rotation_matrix(R) @ T, rotate_tensor(T, R)))
    True
    """
    return np.stack([rotate_tensor(e, rotation) for e in np.eye(6)], axis=1)


# ----------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class Geometry:
    """One acquisition: head rotation, grid prescription and grid.

    Attributes
    ----------
    label : str
        ``acq-`` label (e.g. ``'ori01'``).
    rotation : (3, 3)
        Head rotation ``R`` (head → scanner, about ``centre``).
    prescription : (3, 3)
        Direction cosines ``P`` of the grid axes in the scanner frame (columns).
    affine : (4, 4)
        Grid affine in the scanner frame (mm).
    shape : tuple of 3 int
    centre : (3,)
        Rotation centre (brain centre, mm), also the grid centre.
    """

    label: str
    rotation: np.ndarray
    prescription: np.ndarray
    affine: np.ndarray
    shape: tuple
    centre: np.ndarray

    @property
    def voxel_size(self):
        return voxel_sizes(self.affine)

    @property
    def b0_voxel(self):
        """B0 direction in this grid's voxel frame (``Pᵀ ẑ``, from the affine)."""
        return b0_direction_from_affine(self.affine)

    def b0_head(self):
        """B0 direction in the head frame, ``Rᵀ ẑ``."""
        return self.rotation.T @ _Z

    @property
    def tilt_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip(self.b0_head()[2], -1, 1))))

    def head_to_scanner(self):
        """4 × 4 world transform head → scanner."""
        T = np.eye(4)
        T[:3, :3] = self.rotation
        T[:3, 3] = self.centre - self.rotation @ self.centre
        return T

    def voxel_to_model(self, model_affine, offset=(0, 0, 0)):
        """4 × 4 map from (offset) grid voxel indices to model-grid voxel indices."""
        A = self.affine.copy()
        A[:3, 3] += A[:3, :3] @ np.asarray(offset, dtype=float)
        return np.linalg.inv(model_affine) @ np.linalg.inv(self.head_to_scanner()) @ A

    def head_points_to_voxel(self, points):
        """Head-frame points (n, 3) → this grid's continuous voxel indices (n, 3)."""
        return apply_affine(np.linalg.inv(self.affine) @ self.head_to_scanner(), points)


def plan_geometries(phantom: Phantom, rotations, prescriptions, voxel_size, *,
                    fov_margin: float = 12.0, labels=None, grid_orientation: str = 'RAS'):
    """Acquisition grids sharing one matrix size that contains the brain in every orientation.

    Parameters
    ----------
    phantom : Phantom
    rotations, prescriptions : (N, 3, 3)
        Head rotations (:func:`head_rotations`) and grid prescriptions
        (:func:`oblique_prescriptions`).
    voxel_size : float or 3 floats
        Acquisition voxel size (mm), may be anisotropic.
    fov_margin : float
        Margin (mm) around the brain on every side.
    labels : list of str, optional
        ``acq-`` labels (default ``ori01``, ``ori02``, ...).
    grid_orientation : str
        Axis code of the grids before the prescription rotation: ``'RAS'`` or a sign flip
        of some axes (``'LAS'``: voxel x runs right → left).  The stored ``prescription``
        then includes the flip (``P·S``, an improper rotation), so the tensor is rotated
        into the voxel frame as ``(P S)ᵀ R χ Rᵀ (P S)``.

    Returns
    -------
    list of Geometry
    """
    vs = as_voxel_size(voxel_size)
    R = np.asarray(rotations, dtype=float)
    P = np.asarray(prescriptions, dtype=float)
    if R.shape != P.shape or R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError('rotations and prescriptions must both have shape (N, 3, 3)')
    pts = phantom.brain_points() - phantom.centre
    half = np.zeros(3)
    for Ri, Pi in zip(R, P, strict=True):
        v = pts @ (Pi.T @ Ri).T / vs  # voxel-frame offsets from the centre
        half = np.maximum(half, np.abs(v).max(0))
    # at least 2 voxels of margin so that interpolated brain voxels stay inside the grid
    shape = tuple(int(2 * np.ceil(h + max(fov_margin / s, 2.0)))
                  for h, s in zip(half, vs, strict=True))
    labels = labels or [f'ori{i + 1:02d}' for i in range(R.shape[0])]
    S = np.diag(axis_signs(grid_orientation))
    out = []
    for lab, Ri, Pi in zip(labels, R, P, strict=True):
        Pi = Pi @ S
        A = np.eye(4)
        A[:3, :3] = Pi @ np.diag(vs)
        A[:3, 3] = phantom.centre - A[:3, :3] @ ((np.array(shape) - 1) / 2.0)
        out.append(Geometry(label=lab, rotation=Ri, prescription=Pi, affine=A, shape=shape,
                            centre=phantom.centre.copy()))
    return out


def axis_signs(code: str = 'RAS'):
    """Signs of the voxel axes for an axis code (``'LAS'`` → ``(-1, 1, 1)``).

    >>> axis_signs('LAS'), axis_signs('RPI')
    ((-1.0, 1.0, 1.0), (1.0, -1.0, -1.0))
    """
    code = str(code).upper()
    if len(code) != 3 or any(c not in pair for c, pair in zip(code, ('RL', 'AP', 'SI'),
                                                                 strict=True)):
        raise ValueError(f'axis code must be like RAS or LAS (R/L, A/P, S/I); got {code!r}')
    return tuple(1.0 if c in 'RAS' else -1.0 for c in code)


# ----------------------------------------------------------------------------------------
# sampling and fields
# ----------------------------------------------------------------------------------------

def _resample(src, M, shape, cval, offset_vox=(0, 0, 0)):
    """``src`` sampled (trilinear) at ``M @ (j + offset_vox)`` for ``j`` in ``shape``."""
    off = M[:3, :3] @ np.asarray(offset_vox, dtype=float) + M[:3, 3]
    return ndimage.affine_transform(src, M[:3, :3], offset=off, output_shape=tuple(shape),
                                    order=1, mode='constant', cval=cval, prefilter=False,
                                    output=np.float32)


def _is_z(b0_direction) -> bool:
    return bool(np.array_equal(np.asarray(b0_direction, dtype=float), _Z))


def tensor_field(chi_iso, chi_aniso=None, voxel_size=1.0, b0_direction=(0.0, 0.0, 1.0), *,
                 region=None):
    """Field (ppm) of the tensor ``χ_iso·I + χ_aniso`` on one (already padded) grid.

    This is the forward model the simulator uses for every acquisition.  For a general B0
    direction it is :func:`qsmprep.numerics.forward.tensor_forward` of the full tensor (7
    FFTs).  When ``b̂`` is exactly ``ẑ`` (every axis-aligned scanner grid) only χ13, χ23 and
    χ33 create a field, ``δ̂ = D·F(χ33) − (k_x k_z F(χ13) + k_y k_z F(χ23))/|k|²``, evaluated
    with 4 FFTs and the same conventions (``D(0) = 0``, cross products symmetrised on the
    Nyquist planes as in :func:`qsmprep.numerics.dipole.kspace_products`); the tests check
    both paths against ``tensor_forward``.

    Parameters
    ----------
    chi_iso : (X, Y, Z)
        Isotropic part (ppm).
    chi_aniso : (X, Y, Z, 6) or (..., 6) on ``region``, optional
        Anisotropic part ``[χ11, χ12, χ13, χ22, χ23, χ33]`` in the grid's voxel frame.
    voxel_size : float or 3 floats
    b0_direction : 3 floats
        Unit B0 vector in the voxel frame.
    region : tuple of 3 slices, optional
        ``chi_aniso`` covers only this block of the grid (zero elsewhere).

    Returns
    -------
    ndarray (X, Y, Z), dtype of ``chi_iso``

    Examples
    --------
    >>> from qsmprep.numerics.forward import dipole_forward
    >>> chi = np.zeros((16, 16, 16)); chi[6:10, 6:10, 6:10] = 0.1
    >>> bool(np.allclose(tensor_field(chi), dipole_forward(chi)))
    True
    """
    chi_iso = np.asarray(chi_iso)
    shape = chi_iso.shape
    dtype = chi_iso.dtype
    region = region or (slice(None),) * 3

    def component(c):
        out = np.zeros(shape, dtype)
        out[region] = chi_aniso[..., c]
        return out

    if not _is_z(b0_direction):
        T = np.zeros((*shape, 6), dtype)
        if chi_aniso is not None:
            T[region] = chi_aniso
        for c in (0, 3, 5):
            T[..., c] += chi_iso
        return tensor_forward(T, voxel_size, b0_direction)
    k, nyq = kspace_coordinates(shape, voxel_size, rfft=True, dtype=dtype)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = np.where(k2 > 0, 1.0 / k2, 0.0).astype(dtype)
    del k2
    D = (k[2] ** 2) * inv
    D *= -1.0
    D += dtype.type(1.0 / 3.0)
    D[0, 0, 0] = 0.0
    if chi_aniso is None:
        src = chi_iso
    else:
        src = chi_iso.copy()
        src[region] += chi_aniso[..., 5]
    acc = fft.rfftn(src)
    del src
    acc *= D
    del D
    if chi_aniso is not None:
        for d, c in ((0, 2), (1, 4)):
            P = np.where(nyq[d] | nyq[2], 0.0, k[d] * k[2] * inv).astype(dtype)
            term = fft.rfftn(component(c))
            term *= P
            acc -= term
            del term, P
    return fft.irfftn(acc, shape)


@dataclass(eq=False)
class AcquisitionFields:
    """Noise-free quantities of one acquisition on its grid (float32, ppm where relevant).

    ``local`` (brain sources), ``background`` (sources outside the brain), ``brain``
    (bool), ``apparent`` (``b̂ᵀχb̂``, brain only), ``pd``, ``r2star`` (1/s at 3 T);
    ``tensor`` (brain-masked tensor in this grid's voxel frame) and ``chi_mean`` (brain
    only) when requested; ``sim_shape``: the padded simulation grid.
    """

    geometry: Geometry
    local: np.ndarray
    background: np.ndarray
    brain: np.ndarray
    apparent: np.ndarray
    pd: np.ndarray
    r2star: np.ndarray
    tensor: np.ndarray | None = None
    chi_mean: np.ndarray | None = None
    sim_shape: tuple = ()

    @property
    def total(self):
        return self.local + self.background


def simulate_acquisition(phantom: Phantom, geometry: Geometry, *, padding: float = 24.0,
                         threads: int = 1, keep_tensor: bool = False,
                         body: bool = False) -> AcquisitionFields:
    """Sample the rotated head on ``geometry``'s grid and compute its fields.

    Parameters
    ----------
    phantom : Phantom
    geometry : Geometry
        Its grid must contain the brain with a margin of ≥ 2 voxels
        (:func:`plan_geometries` does this).
    padding : float
        Air (mm) added around the whole head for the FFT (module docstring).
    threads : int
        Threads for the resampling (scipy's ``affine_transform`` mostly holds the GIL, so
        more than 1 rarely helps; parallelise over acquisitions instead).
    keep_tensor : bool
        Also return the brain-masked tensor and mean susceptibility on the grid (for the
        reference-frame ground truth).
    body : bool
        Add :func:`body_field` (neck and shoulders below the model box) to the background.

    Returns
    -------
    AcquisitionFields
    """
    vs = geometry.voxel_size
    shape = np.array(geometry.shape)
    # simulation grid: the whole head plus padding, containing the acquisition grid
    v = geometry.head_points_to_voxel(phantom.head_points())
    pad = np.ceil(padding / vs)
    lo = np.minimum(np.floor(v.min(0)) - pad, 0).astype(int)
    hi = np.maximum(np.ceil(v.max(0)) + pad + 1, shape).astype(int)
    sim_shape = fft.fast_shape(tuple(int(n) for n in hi - lo))
    fov = tuple(slice(int(-o), int(-o + n)) for o, n in zip(lo, shape, strict=True))
    M = geometry.voxel_to_model(phantom.affine)
    # brain sub-box of the acquisition grid (the anisotropic part is zero elsewhere)
    bv = geometry.head_points_to_voxel(phantom.brain_points())
    b_lo = np.clip(np.floor(bv.min(0)) - 2, 0, shape).astype(int)
    b_hi = np.clip(np.ceil(bv.max(0)) + 3, 0, shape).astype(int)
    sub_shape = tuple(int(n) for n in b_hi - b_lo)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(b_lo, b_hi, strict=True))

    # the head occupies only part of the simulation grid: resample χ there, air elsewhere
    h_lo = np.clip(np.floor(v.min(0)) - 2 - lo, 0, sim_shape).astype(int)
    h_hi = np.clip(np.ceil(v.max(0)) + 3 - lo, 0, sim_shape).astype(int)
    head = tuple(slice(int(a), int(b)) for a, b in zip(h_lo, h_hi, strict=True))
    jobs = {
        'chi': (phantom.chi_mean, tuple(int(n) for n in h_hi - h_lo), AIR_CHI, lo + h_lo),
        'brain': (phantom.brain_float(), sub_shape, 0.0, b_lo),
        'pd': (phantom.pd, tuple(shape), 0.0, (0, 0, 0)),
        'r2star': (phantom.r2star, tuple(shape), 0.0, (0, 0, 0)),
    }
    # the anisotropic part is traceless (and stays so under interpolation and rotation)
    for c in range(5):
        jobs[c] = (phantom.aniso_component(c), sub_shape, 0.0, b_lo)
    if threads > 1:
        with ThreadPoolExecutor(int(threads)) as ex:
            futs = {k: ex.submit(_resample, src, M, shp, cval, off)
                    for k, (src, shp, cval, off) in jobs.items()}
            res = {k: f.result() for k, f in futs.items()}
    else:
        res = {k: _resample(src, M, shp, cval, off) for k, (src, shp, cval, off) in jobs.items()}

    brain = np.zeros(tuple(shape), bool)
    brain[sub] = res.pop('brain') >= 0.5
    chi = np.full(sim_shape, AIR_CHI, np.float32)
    chi[head] = res.pop('chi')
    aniso = [res.pop(c) for c in range(5)]
    aniso.append(-aniso[0] - aniso[3])
    # tensor values into the acquisition voxel frame: χ_vox = Q χ_head Qᵀ, Q = Pᵀ R
    W = tensor_rotation_matrix(geometry.prescription.T @ geometry.rotation).astype(np.float32)
    bsub = brain[sub]
    A = np.empty((*sub_shape, 6), np.float32)
    for c in range(6):
        acc = np.zeros(sub_shape, np.float32)
        for d in range(6):
            if W[c, d] != 0.0:
                acc += W[c, d] * aniso[d]
        acc *= bsub
        A[..., c] = acc
    del aniso, acc
    sim_sub = tuple(slice(f.start + s.start, f.start + s.stop) for f, s in zip(fov, sub,
                                                                          strict=True))
    brain_sim = np.zeros(sim_shape, bool)
    brain_sim[fov] = brain
    chi_in = chi * brain_sim
    chi *= ~brain_sim
    del brain_sim
    b0 = geometry.b0_voxel
    if np.allclose(b0, _Z, atol=1e-12):
        b0 = _Z  # axis-aligned grid: exact ẑ (fast path of tensor_field)
    local = tensor_field(chi_in, A, vs, b0, region=sim_sub)
    # sources outside the brain, relative to air: only the k = 0 term changes (D(0) = 0),
    # and the mostly-zero array keeps float32 rounding small
    chi -= AIR_CHI
    background = dipole_forward(chi, vs, b0)
    del chi
    out = AcquisitionFields(
        geometry=geometry, local=np.ascontiguousarray(local[fov], dtype=np.float32),
        background=np.ascontiguousarray(background[fov], dtype=np.float32),
        brain=brain, apparent=np.zeros(tuple(shape), np.float32), pd=res['pd'],
        r2star=res['r2star'], sim_shape=tuple(sim_shape))
    del local, background
    if body:
        out.background += body_field(phantom, geometry)
    chi_fov = np.ascontiguousarray(chi_in[fov])
    del chi_in
    out.apparent = chi_fov.copy()
    out.apparent[sub] += apparent_susceptibility(A, b0).astype(np.float32)
    if keep_tensor:
        T = np.zeros((*shape, 6), np.float32)
        T[sub] = A
        for c in (0, 3, 5):
            T[..., c] += chi_fov
        out.tensor = T
        out.chi_mean = chi_fov
    return out


#: Body below the model box (template/MNI mm): the neck as an elliptic cylinder continuing
#: the phantom's neck, shoulders and upper torso as an ellipsoid (top at z ≈ −170 mm).
BODY_NECK = ((0.0, -30.0), (50.0, 50.0), (-250.0, None))  # centre xy, radii, z range
BODY_TORSO = ((0.0, -30.0, -330.0), (190.0, 110.0, 160.0))  # centre, semi-axes


def body_field(phantom: Phantom, geometry: Geometry, *, spacing: float = 6.0):
    """Field (ppm) on ``geometry``'s grid of the neck and shoulders below the model box.

    The phantom's model grid stops at the bottom of its box (``z = −122`` mm in the head
    frame), so its neck ends there.  A real head continues into the neck, shoulders and
    chest: tissue (χ ≈ −9.4 ppm relative to air) outside the model and far outside the
    acquired field of view that still shifts the field in the brain (smooth, harmonic
    there).  The body (:data:`BODY_NECK`, :data:`BODY_TORSO`, scaled with the subject,
    starting at the bottom of the model box) is voxelised on a coarse grid of ``spacing``
    mm aligned with the acquisition's voxel axes and its field computed by a **linear**
    (zero-padded, aperiodic) convolution with the real-space dipole kernel
    ``(3cos²θ − 1)/(4π r³)`` — periodic copies of a body this large would not be
    negligible — then interpolated (cubic) onto the acquisition grid.  Lungs are not
    modelled.  The field's mean is that of free space (unlike the FFT fields, whose mean
    is fixed by ``D(0) = 0``); a constant is unmeasurable anyway.
    """
    from scipy.signal import fftconvolve

    from qsmprep.simulate.phantom import _CENTRE, template_grid

    h = float(spacing)
    A_model, _ = template_grid(float(phantom.voxel_size[0]))
    z_cut = float(A_model[2, 3])  # bottom of the model box (head frame, mm)
    scale = np.asarray(phantom.deformation.get('scale', (1.0, 1.0, 1.0)), dtype=float)
    (cx, cy, cz), (ax, ay, az) = BODY_TORSO
    corners_t = np.array([[x, y, z] for x in (cx - ax, cx + ax) for y in (cy - ay, cy + ay)
                          for z in (cz - az, z_cut)])
    corners_h = _CENTRE + (corners_t - _CENTRE) * scale
    H = geometry.head_to_scanner()
    axes = direction_cosines(geometry.affine)  # unit voxel axes (scanner frame), P·S
    # coarse grid in the voxel frame covering the body and the acquisition grid
    fov = apply_affine(geometry.affine, [[i, j, k] for i in (0, geometry.shape[0] - 1)
                                         for j in (0, geometry.shape[1] - 1)
                                         for k in (0, geometry.shape[2] - 1)])
    pts = np.vstack([apply_affine(H, corners_h), fov])
    u = pts @ axes  # coordinates along the voxel axes (mm)
    lo = u.min(0) - 2 * h
    shape = tuple(int(np.ceil(n)) for n in (u.max(0) + 2 * h - lo) / h + 1)
    grid = [lo[d] + h * np.arange(shape[d], dtype=float) for d in range(3)]
    U = np.meshgrid(*grid, indexing='ij')
    Xh = []
    Hi = np.linalg.inv(H)
    for d in range(3):
        Xh.append(sum(Hi[d, e] * sum(axes[e, k] * U[k] for k in range(3)) for e in range(3))
                  + Hi[d, 3])
    del U
    t = [_CENTRE[d] + (Xh[d] - _CENTRE[d]) / scale[d] for d in range(3)]
    (nx, ny), (rx, ry), (nz0, _) = BODY_NECK
    rho = np.sqrt(((t[0] - nx) / rx) ** 2 + ((t[1] - ny) / ry) ** 2)
    neck = np.clip(0.5 - (rho - 1.0) * min(rx, ry) / h, 0, 1) * (t[2] > nz0)
    rho = np.sqrt(((t[0] - cx) / ax) ** 2 + ((t[1] - cy) / ay) ** 2 + ((t[2] - cz) / az) ** 2)
    torso = np.clip(0.5 - (rho - 1.0) * min(ax, ay, az) / h, 0, 1)
    below = np.clip(0.5 - (Xh[2] - z_cut) / h, 0, 1)  # head-frame z below the model box
    chi = np.maximum(neck, torso) * below * -AIR_CHI
    del t, Xh, rho, neck, torso, below
    b0 = geometry.b0_voxel
    # real-space dipole kernel on offsets −(n−1)…(n−1) voxels (free space, no images)
    off = [h * np.arange(-(n - 1), n, dtype=float) for n in shape]
    R = np.meshgrid(*off, indexing='ij', sparse=True)
    r2 = R[0] ** 2 + R[1] ** 2 + R[2] ** 2
    rb = R[0] * b0[0] + R[1] * b0[1] + R[2] * b0[2]
    with np.errstate(divide='ignore', invalid='ignore'):
        K = (3.0 * rb ** 2 / r2 - 1.0) / (4.0 * np.pi * r2 ** 1.5) * h ** 3
    K[tuple(n - 1 for n in shape)] = 0.0
    del R, r2, rb
    f = fftconvolve(chi, K, mode='same')
    del chi, K
    # acquisition voxel j → coarse index: (axesᵀ (A j + t) − lo)/h
    M = np.eye(4)
    M[:3, :3] = axes.T @ geometry.affine[:3, :3] / h
    M[:3, 3] = (axes.T @ geometry.affine[:3, 3] - lo) / h
    return ndimage.affine_transform(f.astype(np.float32), M[:3, :3], offset=M[:3, 3],
                                    output_shape=tuple(geometry.shape), order=3,
                                    mode='nearest', output=np.float32)


def sample_labels(phantom: Phantom, geometry: Geometry):
    """Label map (nearest neighbour) on ``geometry``'s grid."""
    M = geometry.voxel_to_model(phantom.affine)
    return ndimage.affine_transform(phantom.labels, M[:3, :3], offset=M[:3, 3],
                                    output_shape=tuple(geometry.shape), order=0,
                                    mode='constant', cval=0, prefilter=False)


def reference_fields(chi_tensor, voxel_size, b0_directions, *, padding: int = 0):
    """Fields (ppm) of one tensor for several B0 directions on the **same** grid.

    No resampling: orientation ``i`` is represented only by its B0 direction in the
    reference frame, so these fields are exactly what the multi-orientation inversions
    (COSMOS, STI) model — closing the loop with them is exact up to the unmeasurable mean
    (``D(0) = 0``) and, for STI, the Nyquist planes.

    Parameters
    ----------
    chi_tensor : (X, Y, Z, 6)
    voxel_size : float or 3 floats
    b0_directions : (N, 3)
    padding : int
        Zero padding (voxels per side) before the FFT; 0 keeps the periodic model of the
        inversions.

    Returns
    -------
    ndarray, shape (X, Y, Z, N)

    >>> T = np.zeros((8, 8, 8, 6)); T[3:5, 3:5, 3:5, [0, 3, 5]] = 0.1
    >>> f = reference_fields(T, 1.0, [[0, 0, 1], [0, 0.6, 0.8]])
    >>> f.shape
    (8, 8, 8, 2)
    """
    b = as_directions(b0_directions, minimum=1, method='forward simulation')
    T = np.asarray(chi_tensor)
    shape = T.shape[:3]
    if padding:
        pshape = fft.fast_shape(shape, padding)
        T = np.stack([fft.pad(T[..., c], pshape) for c in range(6)], axis=-1)
    out = np.empty((*shape, b.shape[0]), dtype=T.dtype)
    for i, bi in enumerate(b):
        f = tensor_forward(T, voxel_size, bi)
        out[..., i] = fft.crop(f, shape) if padding else f
    return out


# ----------------------------------------------------------------------------------------
# signal
# ----------------------------------------------------------------------------------------

def receiver_phase(shape, *, rng, linear: float = 1.0, quadratic: float = 0.5):
    """Smooth receiver phase offset φ0 (rad): random constant, linear and quadratic terms.

    ``φ0 = a0 + Σ_d a_d u_d + Σ_{d≤e} a_de u_d u_e`` with ``u_d ∈ [−1, 1]`` across the grid,
    ``a0 ∈ U(−π, π)``, ``|a_d| ≤ linear``, ``|a_de| ≤ quadratic`` (rad).

    >>> p = receiver_phase((4, 5, 6), rng=np.random.default_rng(0))
    >>> p.shape, p.dtype
    ((4, 5, 6), dtype('float32'))
    """
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if d == k else 1
                                                               for k in range(3)])
         for d, n in enumerate(shape)]
    phi = np.full(tuple(shape), rng.uniform(-np.pi, np.pi), np.float32)
    for d in range(3):
        phi += np.float32(rng.uniform(-linear, linear)) * u[d]
    for d in range(3):
        for e in range(d, 3):
            phi += np.float32(rng.uniform(-quadratic, quadratic)) * (u[d] * u[e])
    return phi


def smooth_random_field(shape, voxel_size=1.0, *, rng, correlation_mm: float = 40.0):
    """Smooth random field with zero mean and ``max |·| = 1`` (non-harmonic in general).

    White noise on a coarse grid of spacing ``correlation_mm/2`` (per axis, at least 4
    points), Gaussian-smoothed by one coarse voxel and interpolated (cubic) to ``shape``:
    features of about ``correlation_mm``.  Its Laplacian does not vanish, so background
    removal (which removes harmonic fields only) cannot remove it.

    >>> f = smooth_random_field((20, 24, 16), 2.0, rng=np.random.default_rng(0))
    >>> f.shape, round(float(np.abs(f).max()), 6), bool(abs(f.mean()) < 1e-6)
    ((20, 24, 16), 1.0, True)
    """
    vs = as_voxel_size(voxel_size)
    step = correlation_mm / 2.0
    cshape = tuple(max(4, int(np.ceil(n * s / step)) + 1) for n, s in zip(shape, vs,
                                                                          strict=True))
    c = ndimage.gaussian_filter(rng.standard_normal(cshape), 1.0, mode='nearest')
    zoom = [n / m for n, m in zip(shape, cshape, strict=True)]
    f = ndimage.zoom(c, zoom, order=3, mode='nearest', grid_mode=True)
    f = f[:shape[0], :shape[1], :shape[2]].astype(np.float64)
    f -= f.mean()
    f /= max(float(np.abs(f).max()), 1e-12)
    return f.astype(np.float32)


def bias_field(shape, voxel_size=1.0, *, rng, amplitude: float = 0.2,
               width_mm: float = 60.0):
    """Smooth multiplicative magnitude bias (B1 transmit/receive inhomogeneity).

    ``b = (1 + a·G) · exp(a/2 · n)`` with ``G = exp(−r²/(2 w²))`` centred on the grid
    (central brightening, as at 7 T; ``r`` in mm) and ``n`` a :func:`smooth_random_field`
    (max ±1); ``a = amplitude``.  ``a = 0`` gives 1 everywhere.

    >>> b = bias_field((21, 21, 21), 3.0, rng=np.random.default_rng(0), amplitude=0.0)
    >>> float(b.min()), float(b.max())
    (1.0, 1.0)
    """
    vs = as_voxel_size(voxel_size)
    a = float(amplitude)
    r2 = np.zeros(tuple(shape), np.float32)
    for d, n in enumerate(shape):
        x = ((np.arange(n) - (n - 1) / 2.0) * vs[d]).astype(np.float32)
        r2 += (x ** 2).reshape([-1 if k == d else 1 for k in range(3)])
    b = 1.0 + a * np.exp(-r2 / np.float32(2.0 * width_mm ** 2))
    if a > 0:
        b *= np.exp(0.5 * a * smooth_random_field(shape, vs, rng=rng, correlation_mm=80.0))
    return b.astype(np.float32)


def field_gradient(field, voxel_size=1.0):
    """Gradient (ppm/mm) of ``field`` along the three voxel axes (central differences).

    >>> g = field_gradient(np.arange(5.0)[:, None, None] * np.ones((5, 2, 2)), 2.0)
    >>> float(g[0][2, 0, 0]), float(g[1].max())
    (0.5, 0.0)
    """
    vs = as_voxel_size(voxel_size)
    f = np.asarray(field, dtype=np.float32)
    return [np.gradient(f, axis=d).astype(np.float32) / np.float32(vs[d]) for d in range(3)]


def dephasing_factor(gradient, voxel_size, echo_time, field_strength):
    """Signed intravoxel dephasing factor ``Π_d sinc(γ G_d Δx_d TE/2)`` of one echo.

    The voxel average of ``exp(i g x)`` over a box of width Δx is ``sin(gΔx/2)/(gΔx/2)``
    with ``g = 2π γ̄ B0 TE·1e-6 ∂δ/∂x`` (rad/mm) the phase gradient of a linear field.
    Negative values (past the first zero) flip the sign of the signal (phase + π).

    >>> from qsmprep.numerics.constants import ppm_to_rad
    >>> g = [np.full((1, 1, 1), np.pi / ppm_to_rad(1.0, 0.01, 3.0)), *np.zeros((2, 1, 1, 1))]
    >>> round(float(dephasing_factor(g, 1.0, 0.01, 3.0)[0, 0, 0]), 6)  # π rad per voxel
    0.63662
    """
    vs = as_voxel_size(voxel_size)
    k = np.float32(ppm_to_rad(1.0, echo_time, field_strength) / (2.0 * np.pi))
    out = np.ones(np.shape(gradient[0]), np.float32)
    for d in range(3):
        out *= np.sinc(gradient[d] * (k * np.float32(vs[d]))).astype(np.float32)
    return out


def gre_signal(field, pd, r2star, *, echo_times, field_strength, phase_offset=None,
               snr=None, brain=None, rng=None, echo_phase=None, field_gradient=None,
               voxel_size=None):
    """Multi-echo GRE magnitude and wrapped phase, one echo at a time (a generator).

    Parameters
    ----------
    field : (X, Y, Z)
        Total field (ppm).
    pd, r2star : (X, Y, Z)
        Proton density and R2* (1/s) **at 3 T** (scaled here by ``field_strength/3``).
    echo_times : sequence of float
        Echo times (s).
    field_strength : float
        B0 (T).
    phase_offset : (X, Y, Z), optional
        Receiver phase φ0 (rad), the same for every echo.
    snr : float or None
        ``mean_brain(|S_1|)/σ``; None or inf: noise-free.
    brain : (X, Y, Z) bool, optional
        Region for the SNR reference (default: PD > 0.5).
    rng : numpy.random.Generator
        Required when there is noise.
    echo_phase : sequence of (X, Y, Z), optional
        An extra phase (rad) per echo (coil-combination phase that varies with echo).
    field_gradient : 3 arrays (X, Y, Z), optional
        Field gradient (ppm/mm, :func:`field_gradient`): intravoxel dephasing
        (:func:`dephasing_factor`) with ``voxel_size`` (mm).

    Yields
    ------
    magnitude, phase : float32 arrays
        Phase in [−π, π).

    >>> f = np.zeros((2, 2, 2)); pd = np.ones((2, 2, 2)); r2 = np.full((2, 2, 2), 20.0)
    >>> (m, p), = gre_signal(f + 0.1, pd, r2, echo_times=[0.01], field_strength=3.0)
    >>> round(float(m[0, 0, 0]), 4), round(float(p[0, 0, 0]), 4)  # exp(-0.2), 2π·127.7·0.01·0.1
    (0.8187, 0.8026)
    """
    b0 = positive(field_strength, 'field_strength', 'T')
    tes = positive_array(echo_times, 'echo_times', 's')
    field = np.asarray(field, dtype=np.float32)
    r2 = np.asarray(r2star, dtype=np.float32) * np.float32(b0 / 3.0)
    pd = np.asarray(pd, dtype=np.float32)
    sigma = 0.0
    if snr is not None and np.isfinite(snr):
        if snr <= 0:
            raise ValueError(f'snr must be > 0 (or None for noise-free); got {snr}')
        if rng is None:
            raise ValueError('an rng is required to add noise')
        ref = np.asarray(brain, bool) if brain is not None else pd > 0.5
        m1 = pd[ref] * np.exp(-tes[0] * r2[ref])
        sigma = float(m1.mean()) / float(snr)
    if echo_phase is not None and len(echo_phase) != len(tes):
        raise ValueError(f'echo_phase must have one array per echo ({len(tes)}); got '
                         f'{len(echo_phase)}')
    for e, te in enumerate(tes):
        mag = pd * np.exp(-np.float32(te) * r2)
        phase = field * np.float32(ppm_to_rad(1.0, te, b0))
        if phase_offset is not None:
            phase += phase_offset
        if echo_phase is not None:
            phase += echo_phase[e]
        if field_gradient is not None:
            d = dephasing_factor(field_gradient, voxel_size, te, b0)
            mag = mag * np.abs(d)
            phase += np.float32(np.pi) * (d < 0)
            del d
        if sigma > 0:
            re = np.cos(phase)
            re *= mag
            im = np.sin(phase, out=phase)
            im *= mag
            re += rng.standard_normal(re.shape, dtype=np.float32) * np.float32(sigma)
            im += rng.standard_normal(im.shape, dtype=np.float32) * np.float32(sigma)
            mag = np.hypot(re, im)
            phase = wrap_phase(np.arctan2(im, re))  # arctan2 gives (−π, π]
            del re, im
        else:
            phase = wrap_phase(phase)
        yield mag.astype(np.float32, copy=False), phase.astype(np.float32, copy=False)


def phase_to_arbitrary(phase):
    """Phase (rad, ``[−π, π)``) → int16 scanner units in ``[−4096, 4095]`` (π ≡ −π).

    ``value = round(φ · 4096/π)``; :func:`arbitrary_to_phase` inverts it.

    >>> phase_to_arbitrary(np.array([-np.pi / 2, 0.0, np.pi])).tolist()
    [-2048, 0, -4096]
    """
    v = np.rint(np.asarray(phase, dtype=np.float32) * np.float32(4096.0 / np.pi))
    v[v >= 4096] -= 8192
    v[v < -4096] += 8192
    return v.astype(np.int16)


def arbitrary_to_phase(values):
    """Scanner integers → phase (rad): ``φ = value · π/4096``.

    >>> float(arbitrary_to_phase(np.array([2048]))[0]) == np.pi / 2
    True
    """
    return np.asarray(values, dtype=np.float64) * (np.pi / 4096.0)
