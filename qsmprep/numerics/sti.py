"""Multi-orientation inversions: COSMOS (isotropic χ) and per-k susceptibility tensor imaging.

Inputs common to every function here:

* ``fields``: local fields (ppm) of ``N`` head orientations, all resampled into **one common
  reference voxel frame**, stacked on the last axis: shape ``(X, Y, Z, N)``;
* ``b0_directions``: ``(N, 3)`` unit B0 vectors of those orientations **in that same
  reference voxel frame** (e.g. from
  :func:`qsmprep.numerics.geometry.b0_direction_from_rotation`);
* ``voxel_size`` in mm; optional common brain ``mask`` ``(X, Y, Z)`` and optional
  per-orientation masks ``orientation_masks`` ``(X, Y, Z, N)``.

Tensor components are ``[χ11, χ12, χ13, χ22, χ23, χ33]`` on the last axis (ppm), in the
reference voxel frame, as in :mod:`qsmprep.numerics.forward`.

How the closed forms are evaluated
----------------------------------
Every orientation enters the models only through ``b̂_i b̂_iᵀ``:
``D_i(k) = ⟨b̂_i b̂_iᵀ, I/3 − k̂k̂ᵀ⟩`` (COSMOS) and ``δ̂_i(k) = b̂_iᵀ 𝓛_k(χ̂) b̂_i`` with
``𝓛_k(χ) = χ/3 − sym(k̂k̂ᵀχ)`` (STI).  Both least-squares problems therefore factor into a
k-independent ``N × 6`` design (applied in image space, one matrix product over the
orientations) and an analytic per-k part.  Consequences: COSMOS needs ``r + 1`` FFTs and
unregularised STI ``12`` FFTs, where ``r = rank{b̂_i b̂_iᵀ} ≤ min(N, 6)`` — never more than
the ``N + 1`` / ``N + 6`` of the textbook per-orientation evaluation, and the results are
identical (tests compare against the per-orientation forward model).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from qsmprep.numerics import fft
from qsmprep.numerics._checks import (
    as_direction,
    as_directions,
    as_mask,
    as_volume,
    as_voxel_size,
)
from qsmprep.numerics.dipole import kspace_coordinates, kspace_products, nyquist_mask
from qsmprep.numerics.forward import apparent_susceptibility, sti_rows, tensor_to_matrix

__all__ = [
    'CosmosConditioning',
    'PoorConditioningWarning',
    'STICondition',
    'STIFit',
    'cosmos',
    'cosmos_conditioning',
    'fibonacci_sphere',
    'fit_sti',
    'sti_adjoint',
    'sti_condition_number',
    'sti_forward',
]

_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
_INDEX = {(p, q): c for c, (p, q) in enumerate(_PAIRS)} | {(q, p): c for c, (p, q)
                                                          in enumerate(_PAIRS)}
#: Frobenius weights of the 6-vector of a symmetric matrix (off-diagonals count twice).
_W = np.array([1.0, 2.0, 2.0, 1.0, 2.0, 1.0])
_NYQUIST = ('symmetrize', 'zero', 'none')


class PoorConditioningWarning(UserWarning):
    """The orientation set determines the unknowns poorly (noise will be amplified)."""


# ----------------------------------------------------------------------------------------
# validation and small helpers
# ----------------------------------------------------------------------------------------

def _float_dtype(arr, dtype):
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f'dtype must be float32 or float64; got {dt}')
        return dt
    return np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)


def _check_inputs(fields, b0_directions, voxel_size, mask, orientation_masks, *, minimum,
                  method, dtype=None):
    f = np.asarray(fields)
    if f.ndim != 4:
        raise ValueError(
            f'fields must be a 4-D array (X, Y, Z, N) with the orientations on the last axis; '
            f'got shape {f.shape}')
    dt = _float_dtype(f, dtype)
    f = as_volume(f, 'fields', ndim=4, dtype=dt)
    b = np.asarray(b0_directions, dtype=float)
    if b.ndim != 2 or b.shape[1] != 3:
        raise ValueError(f'b0_directions must have shape (N, 3); got {b.shape}')
    if b.shape[0] != f.shape[-1]:
        raise ValueError(
            f'fields has {f.shape[-1]} orientations on its last axis but b0_directions has '
            f'{b.shape[0]} rows; they must match (one unit B0 vector per field)')
    b = as_directions(b, minimum=minimum, method=method)
    vs = as_voxel_size(voxel_size)
    shape = f.shape[:3]
    m = None if mask is None else as_mask(mask, shape, 'mask')
    om = None
    if orientation_masks is not None:
        om = as_mask(orientation_masks, f.shape, 'orientation_masks')
    return f, b, vs, m, om, dt


def _output_mask(mask, orientation_masks):
    if mask is not None:
        return mask
    if orientation_masks is not None:
        return np.all(orientation_masks, axis=-1)
    return None


def _hh(b):
    """``(N, 6)`` products ``b_p b_q`` in component order (no Frobenius weights)."""
    return np.stack([b[:, p] * b[:, q] for p, q in _PAIRS], axis=1)


def _combine(fields, weights, mask, orientation_masks, dtype, *, block=1 << 18):
    """Image-space combinations ``z_j = Σ_i weights[j, i] · (m · m_i · δ_i)``: (r, X, Y, Z)."""
    shape = fields.shape[:3]
    n = fields.shape[-1]
    flat = fields.reshape(-1, n)
    w = np.ascontiguousarray(weights, dtype=dtype)
    if orientation_masks is None:
        out = w @ flat.T
    else:
        om = orientation_masks.reshape(-1, n)
        out = np.empty((w.shape[0], flat.shape[0]), dtype=dtype)
        for s in range(0, flat.shape[0], block):
            sl = slice(s, s + block)
            out[:, sl] = w @ (flat[sl] * om[sl]).T
    if mask is not None:
        out *= mask.reshape(1, -1)
    return out.reshape(w.shape[0], *shape)


def _slabs(shape_half, chunk):
    """Slices along axis 0 of the half spectrum with about ``chunk`` k-points each."""
    per_plane = int(np.prod(shape_half[1:]))
    step = max(1, int(chunk) // per_plane)
    for x0 in range(0, shape_half[0], step):
        yield slice(x0, min(x0 + step, shape_half[0]))


def _inv_k2(kx, ky, kz):
    k2 = kx * kx + ky * ky + kz * kz
    with np.errstate(divide='ignore'):
        inv = 1.0 / k2
    inv[k2 == 0] = 0.0
    return inv


def fibonacci_sphere(n: int = 2000) -> np.ndarray:
    """``n`` nearly uniform unit vectors on the sphere (Fibonacci lattice), shape ``(n, 3)``.

    >>> v = fibonacci_sphere(100)
    >>> v.shape, bool(np.allclose(np.linalg.norm(v, axis=1), 1.0))
    ((100, 3), True)
    """
    n = int(n)
    if n < 1:
        raise ValueError(f'n must be a positive integer; got {n}')
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = np.pi * (1.0 + np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _unit_rows(k_directions, n_directions):
    if k_directions is None:
        return fibonacci_sphere(n_directions)
    k = np.asarray(k_directions, dtype=float)
    if k.ndim == 1:
        k = k[None]
    if k.ndim != 2 or k.shape[1] != 3 or not np.all(np.isfinite(k)):
        raise ValueError(f'k_directions must be finite with shape (n, 3); got {k.shape}')
    nrm = np.linalg.norm(k, axis=1, keepdims=True)
    if np.any(nrm == 0):
        raise ValueError('k_directions must be non-zero vectors')
    return k / nrm


# ----------------------------------------------------------------------------------------
# COSMOS
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CosmosConditioning:
    """Summary of ``Σ_i D_i(k̂)²`` over unit k̂ (it depends only on the direction of k).

    Attributes
    ----------
    minimum, median : float
        Minimum and median of ``Σ_i D_i²`` over the sampled directions.  ``1/√minimum`` is
        the worst-case amplification of white field noise (per orientation) into χ̂.
    fraction_below : float
        Fraction of sampled directions with ``Σ_i D_i² < threshold`` (set to 0 by
        :func:`cosmos`).
    threshold : float
        The threshold used for ``fraction_below``.
    """

    minimum: float
    median: float
    fraction_below: float
    threshold: float


def cosmos_conditioning(b0_directions, *, threshold: float = 1e-3, n_directions: int = 2000,
                        k_directions=None) -> CosmosConditioning:
    """How well a set of B0 directions determines isotropic χ (COSMOS), independent of the grid.

    Parameters
    ----------
    b0_directions : (N, 3) array
        Unit B0 vectors in the reference voxel frame.
    threshold : float
        Level of ``Σ_i D_i²`` below which :func:`cosmos` sets χ̂ to 0.
    n_directions : int
        Number of k̂ directions sampled on a Fibonacci sphere.
    k_directions : (n, 3) array, optional
        Explicit k directions instead of the Fibonacci sphere.

    Returns
    -------
    CosmosConditioning

    Notes
    -----
    ``D_i(k̂) = 1/3 − (k̂·b̂_i)²``.  Three non-coplanar directions tilted by about 20° or more
    give a minimum of a few 1e-2 (0.035 for tilts of 23° about x and y); two directions
    always have ``Σ D_i² = 0`` on the lines where their magic-angle cones intersect.

    Examples
    --------
    >>> t = np.deg2rad(23)
    >>> b = [[0, 0, 1], [np.sin(t), 0, np.cos(t)], [0, np.sin(t), np.cos(t)]]
    >>> round(cosmos_conditioning(b, n_directions=20000).minimum, 3)
    0.035
    """
    b = as_directions(b0_directions, minimum=1, method='COSMOS')
    k = _unit_rows(k_directions, n_directions)
    D = 1.0 / 3.0 - (k @ b.T) ** 2
    s = np.sum(D * D, axis=1)
    return CosmosConditioning(minimum=float(s.min()), median=float(np.median(s)),
                              fraction_below=float(np.mean(s < threshold)),
                              threshold=float(threshold))


def cosmos(fields, b0_directions, *, voxel_size=1.0, mask=None, orientation_masks=None,
           threshold: float = 1e-3, nyquist: str = 'symmetrize', warn_below: float = 1e-2,
           dtype=None):
    """COSMOS: isotropic susceptibility from ≥ 2 head orientations, closed form in k-space.

    Parameters
    ----------
    fields : ndarray, shape (X, Y, Z, N)
        Local fields (ppm) of N orientations in one reference voxel frame.
    b0_directions : array, shape (N, 3)
        Unit B0 vectors of the orientations in the reference voxel frame.
    voxel_size : float or 3 floats
        Voxel size in mm.
    mask : ndarray (X, Y, Z), optional
        Common brain mask: fields are set to 0 outside it and so is χ.
    orientation_masks : ndarray (X, Y, Z, N), optional
        Per-orientation masks (field ``i`` is set to 0 outside mask ``i``).  Without a common
        ``mask`` the output is masked by their intersection.
    threshold : float
        χ̂(k) := 0 where ``Σ_i D_i(k)² < threshold`` (and at k = 0).
    nyquist : {'symmetrize', 'zero', 'none'}
        Nyquist handling of the kernels, as in :func:`qsmprep.numerics.dipole.dipole_kernel`;
        the default matches :func:`qsmprep.numerics.forward.dipole_forward`.
    warn_below : float
        Emit :class:`PoorConditioningWarning` when ``min_k̂ Σ_i D_i² < warn_below``.
    dtype : {None, float32, float64}
        Working precision (default: float32 for float32 fields, else float64).

    Returns
    -------
    ndarray, shape (X, Y, Z)
        χ (ppm) with zero mean over the FOV (before masking).

    Notes
    -----
    ``χ̂(k) = Σ_i D_i(k) δ̂_i(k) / Σ_i D_i(k)²`` with ``D_i(k) = 1/3 − (k·b̂_i)²/|k|²``: the
    per-k least-squares solution for full-FOV fields.  With a brain mask the zeros outside
    the mask are treated as data (the paper solves a masked weighted least squares
    iteratively): the dropped exterior field of sources near the mask edge becomes an error
    concentrated at the edge (3 orientations at 25°, ellipsoidal ROI: ≈ 2–7 % demeaned NRMSE
    inside for deep sources, ≈ 30 % for texture filling the ROI up to its edge).  With the
    default ``nyquist='symmetrize'`` a few k-points on the Nyquist planes, where all
    symmetrised kernels vanish together, fall below ``threshold`` and are lost.

    Since ``D_i = ⟨b̂_ib̂_iᵀ, I/3 − k̂k̂ᵀ⟩``, numerator and denominator are evaluated from
    ``r = rank{b̂_ib̂_iᵀ} ≤ min(N, 6)`` image-space combinations of the fields: ``r + 1 ≤
    N + 1`` FFTs in all.

    References
    ----------
    Liu T, Spincemaille P, de Rochefort L, Kressler B, Wang Y. Calculation of susceptibility
    through multiple orientation sampling (COSMOS). Magn Reson Med 2009;61:196-204.

    Examples
    --------
    >>> from qsmprep.numerics.forward import dipole_forward
    >>> rng = np.random.default_rng(0)
    >>> chi = rng.normal(size=(11, 11, 11)); chi -= chi.mean()  # odd grid: no Nyquist planes
    >>> t = np.deg2rad(25)
    >>> b = np.array([[0, 0, 1], [np.sin(t), 0, np.cos(t)], [0, np.sin(t), np.cos(t)]])
    >>> f = np.stack([dipole_forward(chi, 1.0, bi) for bi in b], axis=-1)
    >>> bool(np.allclose(cosmos(f, b), chi, atol=1e-10))
    True
    """
    f, b, vs, m, om, dt = _check_inputs(fields, b0_directions, voxel_size, mask,
                                        orientation_masks, minimum=2, method='COSMOS',
                                        dtype=dtype)
    if nyquist not in _NYQUIST:
        raise ValueError(f'nyquist must be one of {_NYQUIST}; got {nyquist!r}')
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f'threshold must be a finite number >= 0; got {threshold!r}')
    cond = cosmos_conditioning(b, threshold=threshold)
    if cond.minimum < warn_below:
        warnings.warn(
            f'COSMOS orientation set is poorly conditioned: min over k of Σ_i D_i² = '
            f'{cond.minimum:.3g} (< {warn_below:g}); {100 * cond.fraction_below:.2f}% of '
            f'k-space directions fall below the threshold {threshold:g} and are set to 0. '
            'Use more orientations, larger tilts, or tilts about different axes.',
            PoorConditioningWarning, stacklevel=2)
    shape = f.shape[:3]
    # D = Hw q(k) with Hw = [b_p b_q w_c] (N x 6); Hw = U Σ Vᵀ (rank r).
    hw = _hh(b) * _W
    U, sig, Vt = np.linalg.svd(hw, full_matrices=False)
    r = int(np.sum(sig > sig[0] * 1e-10))
    U, sig, Vt = U[:, :r], sig[:r], Vt[:r]
    z = _combine(f, U.T, m, om, dt)
    Z = [fft.rfftn(z[j]) for j in range(r)]
    del z
    k, nyq = kspace_coordinates(shape, vs, rfft=True, dtype=dt)
    kc = [np.where(nyq[d], 0.0, k[d]).astype(dt) if nyquist == 'symmetrize' else k[d]
          for d in range(3)]
    nyq_all = nyquist_mask(shape)
    out = Z[0]  # reuse: the numerator/denominator is written into the first spectrum
    for sl in _slabs(out.shape, 1 << 16):
        kx, ky, kz = k[0][sl], k[1], k[2]
        cx = kc[0][sl]
        inv = _inv_k2(kx, ky, kz)
        num = None
        den = None
        for j in range(r):
            v = Vt[j]
            a = v[0] * kx * kx + v[3] * ky * ky + v[1] * cx * kc[1]
            bb = v[5] * kz * kz + v[2] * cx * kc[2]
            quad = (a + bb) + v[4] * (kc[1] * kc[2])
            quad *= inv
            cj = (v[0] + v[3] + v[5]) / 3.0 - quad
            if nyquist == 'zero':
                cj[nyq_all[sl]] = 0.0
            cj[inv == 0] = 0.0
            term = Z[j][sl] * (sig[j] * cj)
            num = term if num is None else num + term
            cj *= cj
            cj *= sig[j] ** 2
            den = cj if den is None else den + cj
        ok = den >= threshold
        den[~ok] = 1.0
        num /= den
        num[~ok] = 0.0
        out[sl] = num
    chi = fft.irfftn(out, shape).astype(dt, copy=False)
    om_out = _output_mask(m, om)
    if om_out is not None:
        chi *= om_out
    return chi


# ----------------------------------------------------------------------------------------
# STI: forward operator and adjoint
# ----------------------------------------------------------------------------------------

def _check_tensor(tensor):
    T = as_volume(tensor, 'chi_tensor', ndim=4)
    if T.shape[-1] != 6:
        raise ValueError(
            f'chi_tensor must have 6 components [χ11, χ12, χ13, χ22, χ23, χ33] on the last '
            f'axis; got shape {T.shape}')
    return T


def sti_forward(chi_tensor, b0_directions, *, voxel_size=1.0, nyquist: str = 'symmetrize'):
    """STI forward operator: tensor ``(X, Y, Z, 6)`` → fields ``(X, Y, Z, N)`` (ppm).

    ``δ_i = F⁻¹[Σ_c a_ic(k) χ̂_c(k)]`` with the rows of
    :func:`qsmprep.numerics.forward.sti_rows`; equals
    :func:`qsmprep.numerics.forward.tensor_forward` per orientation but shares the 6 forward
    FFTs (6 + N FFTs).

    >>> T = np.zeros((8, 8, 8, 6)); T[4, 4, 4] = [1, 0, 0, 1, 0, 1]
    >>> sti_forward(T, [[0, 0, 1], [0, 0.6, 0.8]]).shape
    (8, 8, 8, 2)
    """
    T = _check_tensor(chi_tensor)
    b = as_directions(b0_directions, minimum=1, method='sti_forward')
    shape = T.shape[:3]
    X = [fft.rfftn(np.ascontiguousarray(T[..., c])) for c in range(6)]
    out = np.empty((*shape, b.shape[0]), dtype=T.dtype)
    products = kspace_products(shape, voxel_size, nyquist=nyquist, dtype=T.dtype)
    for i, bi in enumerate(b):
        rows = sti_rows(shape, voxel_size, bi, nyquist=nyquist, dtype=T.dtype,
                        products=products)
        acc = X[0] * rows[0]
        for c in range(1, 6):
            acc += X[c] * rows[c]
        out[..., i] = fft.irfftn(acc, shape)
    return out


def sti_adjoint(fields, b0_directions, *, voxel_size=1.0, nyquist: str = 'symmetrize'):
    """Adjoint of :func:`sti_forward`: fields ``(X, Y, Z, N)`` → tensor ``(X, Y, Z, 6)``.

    ``x_c = F⁻¹[Σ_i a_ic(k) ŷ_i(k)]`` (the rows are real and even, so the adjoint of each
    convolution is itself).  Satisfies ``⟨A x, y⟩ = ⟨x, Aᴴ y⟩`` for Hermitian-consistent
    rows (``nyquist`` 'symmetrize' or 'zero').  N + 6 FFTs.

    >>> y = np.zeros((8, 8, 8, 2)); y[4, 4, 4] = 1.0
    >>> sti_adjoint(y, [[0, 0, 1], [0, 0.6, 0.8]]).shape
    (8, 8, 8, 6)
    """
    y = as_volume(fields, 'fields', ndim=4)
    b = as_directions(b0_directions, minimum=1, method='sti_adjoint')
    if y.shape[-1] != b.shape[0]:
        raise ValueError(f'fields has {y.shape[-1]} orientations but b0_directions has '
                         f'{b.shape[0]}')
    shape = y.shape[:3]
    products = kspace_products(shape, voxel_size, nyquist=nyquist, dtype=y.dtype)
    acc = None
    for i, bi in enumerate(b):
        Y = fft.rfftn(np.ascontiguousarray(y[..., i]))
        rows = sti_rows(shape, voxel_size, bi, nyquist=nyquist, dtype=y.dtype,
                        products=products)
        if acc is None:
            acc = [Y * rows[c] for c in range(6)]
        else:
            for c in range(6):
                acc[c] += Y * rows[c]
    out = np.empty((*shape, 6), dtype=y.dtype)
    for c in range(6):
        out[..., c] = fft.irfftn(acc[c], shape)
    return out


# ----------------------------------------------------------------------------------------
# STI: conditioning
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class STICondition:
    """Condition number of the per-k STI system, summarised over k̂ directions.

    Attributes
    ----------
    median, p5, p95, minimum, maximum : float
        Statistics of ``cond₂(A(k̂))`` over the sampled unit directions (``inf`` when the
        orientations do not determine the tensor).
    values : ndarray, shape (n,)
        ``cond₂(A(k̂))`` per sampled direction.
    directions : ndarray, shape (n, 3)
        The sampled unit k̂.

    Notes
    -----
    ``cond(AᵀA) = cond(A)²``; :attr:`normal_median` gives it for the median.
    """

    median: float
    p5: float
    p95: float
    minimum: float
    maximum: float
    values: np.ndarray = field(repr=False)
    directions: np.ndarray = field(repr=False)

    @property
    def normal_median(self) -> float:
        """Median of ``cond(A(k̂)ᵀA(k̂)) = cond(A(k̂))²``."""
        return float(np.median(self.values ** 2))


def _sti_design(b, k):
    """Rows ``a_i(k̂)`` for unit k̂: ``(n_k, N, 6)``, component order, factor 2 off-diag."""
    hk = k @ b.T  # (n, N)
    rows = np.empty((k.shape[0], b.shape[0], 6))
    for c, (p, q) in enumerate(_PAIRS):
        if p == q:
            rows[..., c] = b[:, p] ** 2 / 3.0 - hk * k[:, p, None] * b[:, p]
        else:
            rows[..., c] = (2.0 * b[:, p] * b[:, q] / 3.0
                            - hk * (k[:, p, None] * b[:, q] + k[:, q, None] * b[:, p]))
    return rows


def sti_condition_number(b0_directions, *, n_directions: int = 2000, k_directions=None,
                         warn_above: float = 1e3, warn: bool = True) -> STICondition:
    """Condition number of the per-k STI least-squares system for an orientation set.

    Parameters
    ----------
    b0_directions : (N, 3) array
        Unit B0 vectors in the reference voxel frame.
    n_directions : int
        Number of k̂ sampled on a Fibonacci sphere.
    k_directions : (n, 3) array, optional
        Explicit k directions (normalised here) instead of the Fibonacci sphere.
    warn_above : float
        Emit :class:`PoorConditioningWarning` when the median exceeds this (or is infinite).
    warn : bool
        Set False to only compute.

    Returns
    -------
    STICondition

    Notes
    -----
    Definition: ``A(k̂)`` is the ``N × 6`` matrix with rows ``a_i(k̂)`` of
    :func:`qsmprep.numerics.forward.sti_rows`, with the off-diagonal columns scaled by
    ``1/√2`` (unknowns ``[χ11, √2χ12, √2χ13, χ22, √2χ23, χ33]``, an isometry of the
    Frobenius norm, so the number does not depend on how off-diagonals are stored).  The
    summary is over unit ``k̂`` because ``A`` depends only on the direction of ``k ≠ 0``;
    the reported value is ``cond₂(A) = σ_max/σ_min``, i.e. ``√cond(AᵀA)``.  Typical
    medians (random tilts about random axes, first orientation axial): 12 orientations with
    tilts ≤ 25–40° ≈ 30–160; 18 orientations ≤ 30° ≈ 60–85; 12 unrestricted ≈ 7–20; six
    orientations ≤ 25–45° ≈ 80–4000; max/median ≈ 1.3–1.8.  Tilts about axes with evenly
    spread azimuths do better: 12 orientations at 15–40° ≈ 14, 18 at 15–30° ≈ 20, 6 at
    20–40° ≈ 35, 12 at 5–10° ≈ 200.  These match the ~40–130 quoted for cond(A) in the
    physics notes; cond(AᵀA) is their square (≈ 1e2–2.5e4), so the warning threshold
    (1e3) applies to cond(A).  Directions that all lie on one quadric cone (e.g. tilts
    about a single axis) make ``A`` rank deficient: ``inf``.

    References
    ----------
    Liu C. Susceptibility tensor imaging. Magn Reson Med 2010;63:1471-1477.

    Examples
    --------
    >>> t = np.deg2rad(30)
    >>> b = [[0, 0, 1]] + [[np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)]
    ...                    for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    >>> c = sti_condition_number(b, warn=False)
    >>> bool(c.median < np.inf)  # 7 directions, not on one cone
    True
    """
    b = as_directions(b0_directions, minimum=1, method='STI')
    k = _unit_rows(k_directions, n_directions)
    A = _sti_design(b, k)
    A[..., [1, 2, 4]] /= np.sqrt(2.0)
    s = np.linalg.svd(A, compute_uv=False)  # (n, min(N, 6))
    smin = s[:, -1] if b.shape[0] >= 6 else np.zeros(k.shape[0])
    with np.errstate(divide='ignore'):
        vals = np.where(smin > s[:, 0] * 1e-12, s[:, 0] / smin, np.inf)
    pct = np.percentile(vals, [5, 50, 95], method='nearest')  # 'nearest': safe with inf
    res = STICondition(median=float(pct[1]), p5=float(pct[0]),
                       p95=float(pct[2]), minimum=float(vals.min()),
                       maximum=float(vals.max()), values=vals, directions=k)
    if warn:
        _warn_sti(res, warn_above, stacklevel=3)
    return res


def _warn_sti(res, warn_above, *, stacklevel):
    if res.median <= warn_above:
        return
    why = ('infinite: the orientations do not determine the tensor (fewer than 6, or '
           'all B0 directions on one cone, e.g. tilts about a single axis)'
           if not np.isfinite(res.median) else f'{res.median:.3g} > {warn_above:g}')
    warnings.warn(
        f'STI orientation set is poorly conditioned: median cond(A(k)) = {why}. '
        'Anisotropy will be dominated by noise; use more orientations with larger tilts '
        'about different axes.', PoorConditioningWarning, stacklevel=stacklevel + 1)


# ----------------------------------------------------------------------------------------
# STI: fit result
# ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class STIFit:
    """Result of :func:`fit_sti`: the tensor and maps derived from it.

    Attributes
    ----------
    tensor : ndarray, shape (X, Y, Z, 6)
        ``[χ11, χ12, χ13, χ22, χ23, χ33]`` (ppm) in the reference voxel frame; zero mean
        per component over the FOV (k = 0 is not measurable) before masking.
    mask : ndarray of bool, shape (X, Y, Z)
        Where the derived maps are computed (everywhere if no mask was given).
    reference_direction : ndarray, shape (3,)
        B0 direction used by :meth:`chi33` by default (the first orientation's).
    condition : STICondition or None
        Conditioning of the orientation set (:func:`sti_condition_number`).
    eig_chunk : int
        Voxels per batch for the eigen-decomposition.
    """

    tensor: np.ndarray
    mask: np.ndarray | None = None
    reference_direction: np.ndarray = field(
        default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    condition: STICondition | None = None
    eig_chunk: int = 1 << 18
    _eig: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        T = np.asarray(self.tensor)
        if T.ndim != 4 or T.shape[-1] != 6:
            raise ValueError(f'tensor must have shape (X, Y, Z, 6); got {T.shape}')
        self.tensor = T
        self.mask = as_mask(self.mask, T.shape[:3], 'mask')
        self.reference_direction = as_direction(self.reference_direction,
                                                name='reference_direction')

    @property
    def condition_number(self) -> float:
        """Median ``cond₂(A(k̂))`` of the orientation set (see :func:`sti_condition_number`)."""
        return float('nan') if self.condition is None else self.condition.median

    def chi_along(self, direction):
        """Apparent susceptibility ``b̂ᵀχb̂`` (ppm) along a unit ``direction`` (voxel frame)."""
        return apparent_susceptibility(self.tensor, direction, self.mask)

    def chi33(self, reference_direction=None):
        """χ33 := ``b̂_refᵀ χ b̂_ref``, the susceptibility along the reference B0.

        ``reference_direction`` defaults to :attr:`reference_direction` (the first
        orientation's B0).  It equals the stored ``tensor[..., 5]`` (voxel-z component) only
        when the reference B0 is exactly the voxel z axis; pass ``(0, 0, 1)`` to get that.
        """
        b = self.reference_direction if reference_direction is None else reference_direction
        return self.chi_along(b)

    @property
    def mms(self):
        """Mean magnetic susceptibility ``tr(χ)/3`` (ppm)."""
        T = self.tensor
        return np.where(self.mask, (T[..., 0] + T[..., 3] + T[..., 5]) / 3.0, 0.0).astype(
            T.dtype, copy=False)

    def _eigh(self):
        if self._eig is None:
            T = self.tensor
            idx = np.flatnonzero(self.mask)
            flat = T.reshape(-1, 6)
            lam = np.zeros((*T.shape[:3], 3), dtype=T.dtype)
            vec = np.zeros((*T.shape[:3], 3, 3), dtype=T.dtype)
            lf, vf = lam.reshape(-1, 3), vec.reshape(-1, 3, 3)
            for s in range(0, idx.size, int(self.eig_chunk)):
                ii = idx[s:s + int(self.eig_chunk)]
                # float64 LAPACK is both faster and more accurate than float32 for 3x3
                w, v = np.linalg.eigh(tensor_to_matrix(flat[ii]).astype(np.float64))
                lf[ii] = w[:, ::-1]  # descending λ1 ≥ λ2 ≥ λ3
                vf[ii] = v[:, :, ::-1]
            self._eig = (lam, vec)
        return self._eig

    @property
    def eigenvalues(self):
        """Eigenvalues ``(X, Y, Z, 3)``, sorted λ1 ≥ λ2 ≥ λ3 (0 outside the mask)."""
        return self._eigh()[0]

    @property
    def msa(self):
        """Magnetic susceptibility anisotropy ``λ1 − (λ2 + λ3)/2`` (ppm)."""
        lam = self.eigenvalues
        return lam[..., 0] - 0.5 * (lam[..., 1] + lam[..., 2])

    @property
    def pev(self):
        """Principal eigenvector (of λ1), unit, ``(X, Y, Z, 3)``; 0 outside the mask.

        Sign convention: the component of largest magnitude is made positive (eigenvectors
        are defined up to sign; for RGB maps use ``abs``).
        """
        v = self._eigh()[1][..., :, 0]
        big = np.take_along_axis(v, np.argmax(np.abs(v), axis=-1)[..., None], axis=-1)
        sign = np.where(big < 0, -1.0, 1.0).astype(v.dtype)
        return v * sign

    @property
    def pev_modulated(self):
        """PEV weighted by MSA, ``(X, Y, Z, 3)``."""
        return self.pev * self.msa[..., None]


# ----------------------------------------------------------------------------------------
# STI: fit
# ----------------------------------------------------------------------------------------

def _apply_L(M, kx, ky, kz, inv):
    """``w ∘ vec(𝓛_k(M))`` for symmetric ``M`` given as 6 arrays; ``𝓛 = M/3 − sym(k̂k̂ᵀM)``."""
    kv = (kx, ky, kz)
    u = [M[_INDEX[p, 0]] * kx + M[_INDEX[p, 1]] * ky + M[_INDEX[p, 2]] * kz
         for p in range(3)]
    u = [ui * inv for ui in u]
    out = []
    for c, (p, q) in enumerate(_PAIRS):
        if p == q:
            val = M[c] / 3.0 - kv[p] * u[p]
        else:
            val = 2.0 * (M[c] / 3.0) - (kv[p] * u[q] + kv[q] * u[p])
        out.append(val)
    return out


#: Penalty matrix of the deviatoric (anisotropic) part of a tensor in component order
#: ``[χ11, χ12, χ13, χ22, χ23, χ33]``: ``xᵀ R x = ‖χ − tr(χ)/3·I‖_F²``.
ANISOTROPY_PENALTY = np.array([
    [2 / 3, 0, 0, -1 / 3, 0, -1 / 3],
    [0, 2, 0, 0, 0, 0],
    [0, 0, 2, 0, 0, 0],
    [-1 / 3, 0, 0, 2 / 3, 0, -1 / 3],
    [0, 0, 0, 0, 2, 0],
    [-1 / 3, 0, 0, -1 / 3, 0, 2 / 3],
])


def _ldl_solve(N, rhs, ridge, penalty=None):
    """Solve ``(N + ridge·P) x = rhs`` per k for SPD 6×6 ``N`` (dict (i, j), i ≥ j) by LDLᵀ.

    ``P`` is the identity, or the constant symmetric ``penalty`` matrix.
    """
    n = 6
    P = np.eye(n) if penalty is None else np.asarray(penalty, float)
    L = {}
    d = [None] * n
    E = {}  # E[i, k] = L[i, k] * d[k]
    for j in range(n):
        dj = N[j, j] + ridge * P[j, j]
        for k in range(j):
            dj = dj - L[j, k] * E[j, k]
        d[j] = dj
        inv_dj = 1.0 / dj
        for i in range(j + 1, n):
            s = N[i, j] + ridge * P[i, j] if P[i, j] else N[i, j]
            for k in range(j):
                s = s - L[i, k] * E[j, k]
            E[i, j] = s
            L[i, j] = s * inv_dj
    y = list(rhs)
    for i in range(n):
        for k in range(i):
            y[i] = y[i] - L[i, k] * y[k]
    x = [y[i] / d[i] for i in range(n)]
    for i in range(n - 1, -1, -1):
        for k in range(i + 1, n):
            x[i] = x[i] - L[k, i] * x[k]
    return x


def fit_sti(fields, b0_directions, *, voxel_size=1.0, mask=None, orientation_masks=None,
            tikhonov: float = 0.0, regularizer: str = 'identity', chunk: int = 1 << 16,
            dtype=None, warn_above: float = 1e3) -> STIFit:
    """Susceptibility tensor from ≥ 6 head orientations: per-k least squares in closed form.

    Parameters
    ----------
    fields : ndarray, shape (X, Y, Z, N)
        Local fields (ppm) of N ≥ 6 orientations in one reference voxel frame.
    b0_directions : array, shape (N, 3)
        Unit B0 vectors of the orientations in the reference voxel frame.
    voxel_size : float or 3 floats
        Voxel size in mm.
    mask : ndarray (X, Y, Z), optional
        Common brain mask: fields set to 0 outside it; tensor and derived maps too.
    orientation_masks : ndarray (X, Y, Z, N), optional
        Per-orientation masks (field ``i`` set to 0 outside mask ``i``); without ``mask`` the
        output is masked by their intersection.
    tikhonov : float
        ε ≥ 0.  0 (default): the exact unregularised least-squares solution (STI Suite
        ``STI_Parfor.m``).  ε > 0: per-k Tikhonov ``(AᵀA + ε·tr(AᵀA)/6·I) x = Aᵀŷ`` solved by a
        batched float64 LDLᵀ (slower; for rank-deficient or very poorly conditioned sets).
    regularizer : {'identity', 'anisotropy'}
        Penalty used when ``tikhonov > 0``: ``'identity'`` shrinks the whole tensor;
        ``'anisotropy'`` penalises only its deviatoric part ``‖χ − tr(χ)/3·I‖_F²``
        (:data:`ANISOTROPY_PENALTY`), pulling poorly determined components towards an
        isotropic tensor while leaving the mean susceptibility unpenalised.  Anisotropy in
        brain tissue is small (≈ 0.01–0.02 ppm) next to the errors of measured local
        fields, so this is the penalty the participant pipeline uses.
    chunk : int
        k-points per batch of the per-k step (bounds temporary memory).
    dtype : {None, float32, float64}
        Working precision (default: float32 for float32 fields, else float64).
    warn_above : float
        Warn (:class:`PoorConditioningWarning`) when the median ``cond(A)`` exceeds this.

    Returns
    -------
    STIFit
        ``.tensor`` (X, Y, Z, 6), ``.condition_number``, and the derived maps ``.mms``,
        ``.msa``, ``.pev``, ``.eigenvalues``, ``.chi33()``, ``.chi_along(b)``.

    Notes
    -----
    Model (Liu 2010): ``δ̂_i(k) = b̂_iᵀ χ̂ b̂_i/3 − (b̂_i·k̂)(k̂ᵀ χ̂ b̂_i) = a_i(k)·x̂(k)``.
    Writing ``𝓛_k(χ) = χ/3 − sym(k̂k̂ᵀχ)``, ``δ̂_i = ⟨b̂_ib̂_iᵀ, 𝓛_k(χ̂)⟩``, i.e.
    ``A(k) = H_w L_k`` with the k-independent ``N × 6`` design ``H_w`` (rows
    ``[b1², 2b1b2, 2b1b3, b2², 2b2b3, b3²]``) and the invertible ``L_k`` (cond ≤ 4).  The
    per-k least-squares solution is therefore ``x̂ = L_k⁻¹ H_w⁺ ŷ``: ``H_w⁺`` is applied to
    the fields in image space (one matrix product), followed by 6 FFTs, the analytic
    ``𝓛_k⁻¹(B) = 3B − 9(PB + BP) + 13.5 PBP`` (``P = k̂k̂ᵀ``) and 6 inverse FFTs: 12 FFTs for
    any N, identical to solving ``AᵀA x = Aᵀŷ`` at every k.  k = 0 and the Nyquist planes of
    even axes are set to 0 (the system loses rank there; physics notes §2).  The Tikhonov
    variant builds ``AᵀA = (W L_k)ᵀ(W L_k)`` with ``H_wᵀH_w = WᵀW`` and ``Aᵀŷ = L_kᵀ H_wᵀ ŷ``
    (also 12 FFTs).

    References
    ----------
    Liu C. Susceptibility tensor imaging. Magn Reson Med 2010;63:1471-1477.
    Li W, Wu B, Avram AV, Liu C. Magnetic susceptibility anisotropy of human brain in vivo
    and its molecular underpinnings. NeuroImage 2012;59:2088-2097 (STI Suite).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> T = rng.normal(size=(9, 9, 9, 6)); T -= T.mean(axis=(0, 1, 2))  # odd grid
    >>> t = np.deg2rad(35)
    >>> b = [[0, 0, 1]] + [[np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)]
    ...                    for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    >>> fit = fit_sti(sti_forward(T, b), b)
    >>> bool(np.allclose(fit.tensor, T, atol=1e-9))
    True
    """
    f, b, vs, m, om, dt = _check_inputs(fields, b0_directions, voxel_size, mask,
                                        orientation_masks, minimum=6, method='STI',
                                        dtype=dtype)
    if not (np.isfinite(tikhonov) and tikhonov >= 0):
        raise ValueError(f'tikhonov must be a finite number >= 0; got {tikhonov!r}')
    if regularizer not in ('identity', 'anisotropy'):
        raise ValueError(
            f"regularizer must be 'identity' or 'anisotropy'; got {regularizer!r}")
    penalty = ANISOTROPY_PENALTY if regularizer == 'anisotropy' else None
    cond = sti_condition_number(b, warn=False)
    _warn_sti(cond, warn_above, stacklevel=2)
    shape = f.shape[:3]
    cdt = np.result_type(dt, np.complex64)
    hw = _hh(b) * _W
    U, sig, Vt = np.linalg.svd(hw, full_matrices=False)
    rank = int(np.sum(sig > sig[0] * 1e-10))
    if tikhonov == 0 and rank < 6:
        raise ValueError(
            f'the {b.shape[0]} B0 directions do not determine a susceptibility tensor (rank '
            f'{rank} < 6: fewer than 6 distinct directions, or all on one cone, e.g. tilts '
            'about a single axis). Add orientations tilted about other axes, or pass '
            'tikhonov > 0 for a regularised solution.')
    k, _ = kspace_coordinates(shape, vs, rfft=True,
                               dtype=np.float64 if tikhonov else dt)
    nyq_all = nyquist_mask(shape)
    if tikhonov == 0:
        pinv = (Vt.T / sig) @ U.T  # H_w⁺, 6 x N
        Bf = _combine(f, pinv, m, om, dt)
        S = [fft.rfftn(Bf[c]) for c in range(6)]
        del Bf
        for sl in _slabs(S[0].shape, chunk):
            kx, ky, kz = k[0][sl], k[1], k[2]
            inv = _inv_k2(kx, ky, kz)
            Bm = [S[c][sl] for c in range(6)]
            kv = (kx, ky, kz)
            t = []
            for p in range(3):
                v = Bm[_INDEX[p, 0]] * kx + Bm[_INDEX[p, 1]] * ky + Bm[_INDEX[p, 2]] * kz
                v *= 9.0 * inv
                t.append(v)
            s = kx * t[0] + ky * t[1] + kz * t[2]
            s *= 1.5 * inv
            new = []
            for c, (p, q) in enumerate(_PAIRS):
                val = 3.0 * Bm[c] - (kv[p] * t[q] + kv[q] * t[p])
                val += s * (kv[p] * kv[q])
                new.append(val)
            zero = nyq_all[sl] | (inv == 0)
            for c in range(6):
                new[c][zero] = 0.0
                S[c][sl] = new[c]
    else:
        W = sig[:, None] * Vt  # H_wᵀH_w = WᵀW (6 x 6)
        Mw = W / _W  # matrix entries of the virtual "directions"
        Gf = _combine(f, _hh(b).T, m, om, dt)
        S = [fft.rfftn(Gf[c]) for c in range(6)]
        del Gf
        for sl in _slabs(S[0].shape, chunk):
            kx, ky, kz = k[0][sl], k[1], k[2]
            inv = _inv_k2(kx, ky, kz)
            rows = [_apply_L(list(Mw[j]), kx, ky, kz, inv) for j in range(6)]
            N = {}
            for i in range(6):
                for jj in range(i + 1):
                    acc = rows[0][i] * rows[0][jj]
                    for r in range(1, 6):
                        acc += rows[r][i] * rows[r][jj]
                    N[i, jj] = acc
            ridge = tikhonov * (N[0, 0] + N[1, 1] + N[2, 2] + N[3, 3] + N[4, 4] + N[5, 5]) / 6
            G = [S[c][sl].astype(np.complex128) for c in range(6)]
            rhs = _apply_L(G, kx, ky, kz, inv)
            x = _ldl_solve(N, rhs, ridge, penalty)
            zero = nyq_all[sl] | (inv == 0)
            for c in range(6):
                xc = x[c].astype(cdt)
                xc[zero] = 0.0
                S[c][sl] = xc
    out = np.empty((*shape, 6), dtype=dt)
    om_out = _output_mask(m, om)
    for c in range(6):
        comp = fft.irfftn(S[c], shape)
        S[c] = None
        if om_out is not None:
            comp *= om_out
        out[..., c] = comp
    return STIFit(tensor=out, mask=om_out, reference_direction=b[0], condition=cond)
