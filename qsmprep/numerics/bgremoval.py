"""Background field removal: SHARP, V-SHARP, iSMV, RESHARP (SMV filters), PDF and LBV.

Conventions (``docs/physics.md`` §5):

* SMV kernel ``S_r(x) = 1[|x| ≤ r] / Σ 1[|x| ≤ r]`` with ``x`` in mm on the voxel grid
  (binary sphere, sum-normalised, as QSM.jl ``smv_kernel``); in k-space ``Ŝ_r(0) = 1``.
  High-pass ``C_r = δ − S_r``, ``Ĉ_r = 1 − Ŝ_r``.
* Erosion by a sphere of radius ``r``: ``M_r = (M ⊗ S_r) > 1 − ε`` with
  ``ε = 1/(2 n_r)`` (half a voxel of the ``n_r``-voxel sphere).  This is exactly the binary
  erosion of ``M`` by the sphere (a voxel survives iff its whole sphere lies in the mask;
  outside the array counts as outside the mask), like QSM.jl's ``1 − √eps`` rule, but it
  cannot be flipped by float32 rounding of the FFT convolution.
* All transforms run on a grid cropped to the bounding box of the mask and zero-padded by
  ``ceil(r_max / min(Δ))`` voxels per side, rounded up to fast FFT sizes
  (:func:`qsmprep.numerics.fft.fast_shape`), as QSM.jl ``sharp``/``vsharp`` do.  Field
  values outside the mask are set to 0 first and never influence the result.
* float32 input is processed in float32/complex64, float64 in float64.
* The SMV kernels ``Ŝ_r`` are exact cosine sums (no FFT) and the 12 most recent are cached
  (keyed by grid, voxel size, radius and dtype), so repeated calls on one grid reuse them.
* :func:`ismv` and :func:`resharp` use the same SMV spheres, erosion and padding; :func:`pdf`
  pads the mask's bounding box by ``padding`` voxels (room for the background sources) and
  uses :func:`qsmprep.numerics.dipole.dipole_kernel`; :func:`lbv` needs no FFT (sparse
  7-point Laplacian with ``1/Δ_d²`` per axis).  Every method returns
  ``(local_field, final_mask)`` with the local field exactly 0 outside ``final_mask``
  (:data:`METHODS` maps the ``--bgremoval`` names to them).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_mask, as_volume, as_voxel_size, positive

__all__ = ['METHODS', 'erode_mask', 'ismv', 'lbv', 'pdf', 'resharp', 'resharp_radius', 'sharp',
           'smv_kernel', 'sphere_offsets', 'vsharp', 'vsharp_ls', 'vsharp_radii',
           'vsharp_shells']

_RTOL = 1e-9  # relative tolerance on |x| ≤ r so that e.g. r = 2 mm includes (2, 0, 0) mm


# --------------------------------------------------------------------------- kernels
def sphere_offsets(voxel_size, radius_mm):
    """Boolean ball ``|x| ≤ r`` (x in mm) on the voxel lattice, centred in an odd array.

    Parameters
    ----------
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius_mm : float
        Sphere radius in mm.

    Returns
    -------
    ndarray of bool, shape ``(2h_x + 1, 2h_y + 1, 2h_z + 1)``, ``h_d = floor(r/Δ_d)``
        Usable as a structuring element for :func:`scipy.ndimage.binary_erosion`.

    >>> int(sphere_offsets(1.0, 2.0).sum())  # lattice points with x² + y² + z² ≤ 4
    33
    """
    vs = as_voxel_size(voxel_size)
    r = positive(radius_mm, 'radius_mm', 'mm')
    h = [math.floor(r / v * (1 + _RTOL)) for v in vs]
    ax = [np.arange(-n, n + 1, dtype=np.float64) * v for n, v in zip(h, vs, strict=True)]
    d2 = ax[0][:, None, None] ** 2 + ax[1][None, :, None] ** 2 + ax[2][None, None, :] ** 2
    return d2 <= r * r * (1 + 2 * _RTOL)


@functools.lru_cache(maxsize=12)
def _smv_spectrum(shape, voxel_size, radius_mm, dtype):
    """Cached read-only ``Ŝ_r`` (half spectrum, real) and the sphere voxel count.

    The ball is symmetric under each axis reflection, so its DFT is the separable cosine
    sum ``Σ_{x∈ball} cos(2πk_x x/N_x) cos(2πk_y y/N_y) cos(2πk_z z/N_z)``: the z sums are
    Dirichlet kernels of each column's half-length, then two small matrix products over
    the y and x offsets.  Identical (to rounding) to the rfftn of the sphere, without a
    full-grid FFT.
    """
    ball = sphere_offsets(voxel_size, radius_mm)
    for n, b, v in zip(shape, ball.shape, voxel_size, strict=True):
        if b > n:
            raise ValueError(
                f'SMV sphere of radius {radius_mm} mm ({b} voxels across at {v} mm) does not '
                f'fit in a grid of {n} voxels; use a larger grid or a smaller radius')
    count = int(ball.sum())
    hx, hy, hz = (b // 2 for b in ball.shape)
    nx, ny, nz = shape
    q = ball[hx:, hy:, hz:]                       # octant x, y, z >= 0
    zmax = np.where(q.any(axis=2), q.shape[2] - 1 - np.argmax(q[:, :, ::-1], axis=2), -1)
    # Dirichlet kernels D_h(k_z) = Σ_{|z|≤h} cos(2πk_z z/N_z), h = 0..hz (row 0: empty)
    kz = np.arange(nz // 2 + 1)
    cz = np.cos(2.0 * np.pi * np.outer(np.arange(hz + 1), kz) / nz)
    cz[1:] *= 2.0
    dirichlet = np.vstack([np.zeros((1, kz.size)), np.cumsum(cz, axis=0)])
    a1 = dirichlet[zmax + 1]                      # (hx+1, hy+1, nz//2+1)

    def cos_matrix(n, h):
        c = np.cos(2.0 * np.pi * np.outer(np.arange(n), np.arange(h + 1)) / n)
        c[:, 1:] *= 2.0                           # ±offset pairs
        return c

    a2 = np.matmul(cos_matrix(ny, hy), a1)        # (hx+1, ny, nz//2+1)
    cx = (cos_matrix(nx, hx) / count).astype(dtype)
    # one full-size product, directly in the working dtype (no full-size temporaries)
    S = (cx @ a2.reshape(hx + 1, -1).astype(dtype)).reshape(nx, ny, kz.size)
    S.flat[0] = 1.0  # Σ S_r = 1 exactly
    S.setflags(write=False)
    return S, count


def smv_kernel(shape, voxel_size, radius_mm, *, dtype=np.float64):
    """Spherical mean value kernel ``Ŝ_r(k)`` on the half spectrum of an rfft grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid the kernel multiplies (the last axis of the result is ``N_z // 2 + 1``).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius_mm : float
        Sphere radius in mm (must exceed a voxel, otherwise ``S_r`` is the identity).
    dtype : numpy dtype
        float64 or float32.

    Returns
    -------
    ndarray
        Real ``Ŝ_r`` with ``Ŝ_r(0) = 1`` (the sphere sums to 1); use ``1 − Ŝ_r`` for the
        high-pass ``Ĉ_r``.

    Notes
    -----
    ``S_r(x) = 1[|x| ≤ r] / Σ 1[|x| ≤ r]`` with ``x`` in mm, centred at index 0 of the
    periodic grid (QSM.jl ``src/utils/kernels.jl``, ``_sphere!``/``_smv_kernel!``).

    References
    ----------
    Li L, Leigh JS. High-precision mapping of the magnetic field utilizing the harmonic
    function mean value property. J Magn Reson 2001;148:442-448.

    Examples
    --------
    >>> S = smv_kernel((16, 16, 16), 1.0, 3.0)
    >>> float(S[0, 0, 0]), S.shape
    (1.0, (16, 16, 9))
    """
    shape = _check_shape(shape)
    vs = tuple(float(v) for v in as_voxel_size(voxel_size))
    r = _check_radius(radius_mm, vs)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f'dtype must be float32 or float64; got {dtype}')
    return _smv_spectrum(shape, vs, r, dtype)[0].copy()


def _check_shape(shape):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f'shape must be 3 positive integers; got {shape!r}')
    return shape


def _check_radius(radius_mm, vs):
    r = positive(radius_mm, 'radius', 'mm')
    if r * (1 + _RTOL) < min(vs):
        raise ValueError(
            f'SMV radius {r} mm is smaller than the smallest voxel size {min(vs)} mm: the '
            'sphere would be a single voxel (identity filter); use a radius >= 1 voxel')
    return r


def _check_radii(radii, vs):
    arr = np.atleast_1d(np.asarray(radii, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f'radii must be a non-empty 1-D sequence in mm; got {radii!r}')
    rs = sorted({_check_radius(r, vs) for r in arr.tolist()}, reverse=True)
    return tuple(rs)


def _check_threshold(threshold):
    t = positive(threshold, 'threshold', 'units of |1 - S(k)|')
    if t >= 1:
        raise ValueError(f'threshold must be in (0, 1) (TSVD cut on |1 - S(k)|); got {t}')
    return t


def vsharp_radii(voxel_size=1.0):
    """Default V-SHARP radii (mm): ``18·min(Δ)`` down to ``2·max(Δ)`` in steps of ``2·max(Δ)``,
    largest first, always ending at ``2·max(Δ)``.

    QSM.jl's Julia range ``18min(Δ):-2max(Δ):2max(Δ)`` stops at the last step above
    ``2·max(Δ)`` when the steps do not land on it (anisotropic voxels: 27 … 7 mm at
    1.5×1.5×2 mm); V-SHARP's output mask is its input eroded by the smallest radius, so
    qsmprep appends ``2·max(Δ)``: on the 7 T 1.5×1.5×2 mm simulation the local mask then
    covers 0.83 instead of 0.72 of the brain (``benchmarks/bench_masks.py``).

    >>> vsharp_radii(1.0)
    (18.0, 16.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0)
    >>> vsharp_radii((1.0, 1.0, 2.0))
    (18.0, 14.0, 10.0, 6.0, 4.0)
    """
    vs = as_voxel_size(voxel_size)
    start, step = 18.0 * vs.min(), 2.0 * vs.max()
    n = math.floor((start - step) / step * (1 + _RTOL)) + 1
    radii = [float(start - i * step) for i in range(max(n, 1))]
    if radii[-1] > step * (1 + _RTOL):
        radii.append(float(step))
    return tuple(radii)


# --------------------------------------------------------------------------- grids
class _Grid(fft.MaskBox):
    """Mask bounding box, padded FFT shape and the padded field/mask (working dtype)."""

    def __init__(self, mask, r_max, vs, dtype, field=None):
        if not mask.any():
            raise ValueError('mask is empty; background removal needs a non-empty mask')
        super().__init__(mask, math.ceil(r_max / float(vs.min()) * (1 - _RTOL)))
        m = mask[self.box]
        self.dtype = dtype
        self.mask = fft.pad(m.astype(dtype), self.pshape)
        self.field = None
        if field is not None:
            self.field = fft.pad(np.where(m, field[self.box], dtype.type(0)), self.pshape)


def _eroded_masks(Mk, grid, vs, radii):
    """Yield ``(radius, Ŝ_r, M_r)`` for each radius; ``M_r`` = SMV erosion (1 FFT each)."""
    buf = np.empty_like(Mk)
    for r in radii:
        S, count = _smv_spectrum(grid.pshape, vs, r, grid.dtype)
        np.multiply(Mk, S, out=buf)
        conv = fft.irfftn(buf, grid.pshape)
        yield r, S, conv > (1.0 - 0.5 / count)


def _tsvd_inverse(S, threshold):
    """``1/Ĉ`` where ``|Ĉ| ≥ threshold`` else 0, with ``Ĉ = 1 − Ŝ``."""
    C = 1.0 - S
    keep = np.abs(C) >= threshold
    inv = np.zeros_like(C)
    np.divide(1.0, C, out=inv, where=keep)
    return inv


def _inputs(field, mask, voxel_size):
    f = as_volume(field, 'field')
    m = as_mask(mask, f.shape)
    vs = as_voxel_size(voxel_size)
    return f, m, vs


# --------------------------------------------------------------------------- erosion
def erode_mask(mask, *, voxels: int | None = None, radius_mm: float | None = None,
               voxel_size=1.0):
    """Erode a binary mask by ``voxels`` steps or by a sphere of ``radius_mm``.

    Parameters
    ----------
    mask : ndarray, shape (X, Y, Z)
        Binary mask (non-zero = inside).
    voxels : int, optional
        Number of erosions with the 6-connected structuring element (face neighbours,
        :func:`scipy.ndimage.generate_binary_structure` ``(3, 1)``): removes every voxel
        within city-block distance ``voxels`` of the background (QSM.jl's README erodes
        the brain mask by 5 before unwrapping).
    radius_mm : float, optional
        Sphere radius in mm: SMV erosion ``(M ⊗ S_r) > 1 − 1/(2n_r)``, exactly the binary
        erosion by the ball of :func:`sphere_offsets` (the erosion used by
        :func:`sharp`/:func:`vsharp`).  Exactly one of ``voxels``/``radius_mm`` is needed.
    voxel_size : float or 3 floats
        Voxel size in mm (used with ``radius_mm``).

    Returns
    -------
    ndarray of bool
        Eroded mask; voxels outside the array count as background.

    Examples
    --------
    >>> m = np.zeros((9, 9, 9), bool); m[1:8, 1:8, 1:8] = True
    >>> int(erode_mask(m, voxels=2).sum()), int(erode_mask(m, radius_mm=2.0).sum())
    (27, 27)
    """
    if (voxels is None) == (radius_mm is None):
        raise ValueError('give exactly one of voxels= (6-connected steps) or radius_mm= '
                         '(sphere, mm)')
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f'mask must be a 3-D array; got shape {m.shape}')
    m = as_mask(m, m.shape)
    if voxels is not None:
        if isinstance(voxels, bool) or not isinstance(voxels, int | np.integer) or voxels < 0:
            raise ValueError(f'voxels must be a non-negative integer; got {voxels!r}')
        if voxels == 0 or not m.any():
            return m.copy()
        return ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1),
                                      iterations=int(voxels), border_value=0)
    vs = as_voxel_size(voxel_size)
    r = _check_radius(radius_mm, vs)
    if not m.any():
        return m.copy()
    grid = _Grid(m, r, vs, np.dtype(np.float64))
    Mk = fft.rfftn(grid.mask)
    (_, _, Mr), = _eroded_masks(Mk, grid, tuple(float(v) for v in vs), (r,))
    return grid.unpad(Mr, False)


# --------------------------------------------------------------------------- SHARP
def sharp(field, mask, *, voxel_size=1.0, radius=None, threshold: float = 0.05):
    """SHARP background field removal (single SMV radius, TSVD deconvolution).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (any unit: ppm, Hz or rad; the output has the same unit).
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius : float, optional
        SMV radius in mm; default ``18·min(voxel_size)`` (QSM.jl ``sharp``).
    threshold : float
        TSVD cut: ``1/Ĉ`` where ``|Ĉ| ≥ threshold``, else 0 (default 0.05).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        ``mask`` eroded by the sphere of ``radius``.

    Notes
    -----
    ``f_L = M_r · F⁻¹[T(Ĉ_r)⁻¹ · F(M_r · (f − S_r ⊗ f))]`` with ``M_r`` the mask eroded by
    ``r`` and ``T(Ĉ)⁻¹ = 1/Ĉ`` where ``|Ĉ| ≥ thr``, else 0.  6 FFTs (field, mask,
    erosion, filter, deconvolution pair).

    References
    ----------
    Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic
    magnetic tissue properties using MRI signal phase. NeuroImage 2011;54:2789-2807.

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> mask = x**2 + y**2 + z**2 <= 13**2
    >>> background = 0.3 * x - 0.2 * z + 1.0          # harmonic: removed completely
    >>> loc, m = sharp(background, mask, radius=4.0)
    >>> bool(np.abs(loc).max() < 1e-10), bool(m.sum() < mask.sum())
    (True, True)
    """
    f, m, vs = _inputs(field, mask, voxel_size)
    r = _check_radius(18.0 * vs.min() if radius is None else radius, vs)
    thr = _check_threshold(threshold)
    vst = tuple(float(v) for v in vs)
    grid = _Grid(m, r, vs, f.dtype, field=f)
    F = fft.rfftn(grid.field)
    Mk = fft.rfftn(grid.mask)
    (_, S, Mr), = _eroded_masks(Mk, grid, vst, (r,))
    if not Mr.any():
        raise ValueError(f'the mask eroded by {r} mm is empty; use a smaller radius')
    F *= S
    g = fft.irfftn(F, grid.pshape)                 # S_r ⊗ f
    np.subtract(grid.field, g, out=g)              # C_r ⊗ f
    g[~Mr] = 0.0
    G = fft.rfftn(g)
    G *= _tsvd_inverse(S, thr)
    out = fft.irfftn(G, grid.pshape)
    out[~Mr] = 0.0
    return grid.unpad(out), grid.unpad(Mr, False)


# --------------------------------------------------------------------------- V-SHARP
def vsharp_shells(mask, *, voxel_size=1.0, radii=None):
    """Shells of V-SHARP: ``M_i ∖ M_{i−1}`` for the radii in descending order.

    ``M_i`` is ``mask`` eroded by the sphere of radius ``r_i`` (``M_0 = ∅``): the
    centre of the mask gets the largest kernel, the boundary the smallest.  The shells
    are disjoint and their union is the final V-SHARP mask (``mask`` eroded by the
    smallest radius).  Uses the same erosion as :func:`vsharp`.

    Returns
    -------
    radii : tuple of float
        Radii in mm, descending (duplicates dropped).
    shells : list of ndarray of bool
        One shell per radius (possibly empty).

    >>> x, y, z = np.mgrid[:24, :24, :24] - 11.5
    >>> rs, shells = vsharp_shells(x**2 + y**2 + z**2 <= 10**2, radii=(2, 6, 4))
    >>> rs, [int(s.sum()) > 0 for s in shells]
    ((6.0, 4.0, 2.0), [True, True, True])
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f'mask must be a 3-D array; got shape {m.shape}')
    m = as_mask(m, m.shape)
    vs = as_voxel_size(voxel_size)
    rs = _check_radii(vsharp_radii(vs) if radii is None else radii, vs)
    grid = _Grid(m, rs[0], vs, np.dtype(np.float64))
    Mk = fft.rfftn(grid.mask)
    shells, prev = [], np.zeros(grid.pshape, dtype=bool)
    for _, _, Mi in _eroded_masks(Mk, grid, tuple(float(v) for v in vs), rs):
        shells.append(grid.unpad(Mi & ~prev, False))
        prev = Mi
    return rs, shells


def vsharp(field, mask, *, voxel_size=1.0, radii=None, threshold: float = 0.05):
    """V-SHARP background field removal (variable SMV radii, TSVD deconvolution).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (ppm, Hz or rad; the output has the same unit).  V-SHARP is
        linear in the field, so run it once on the echo-combined field.
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radii : sequence of float, optional
        SMV radii in mm (sorted descending, duplicates dropped).  Default
        :func:`vsharp_radii`: ``18·min(Δ)`` down to ``2·max(Δ)`` (9 radii, 18…2 mm, at
        1 mm isotropic).
    threshold : float
        TSVD cut on ``|Ĉ_{r_1}|`` of the largest kernel (default 0.05).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        ``mask`` eroded by the **smallest** radius (the union of the shells of
        :func:`vsharp_shells`).

    Notes
    -----
    For radii ``r_1 > … > r_n`` with eroded masks ``M_i`` (``M_0 = ∅``)::

        g_i = f − S_{r_i} ⊗ f
        f_L = M_n · F⁻¹[ T(Ĉ_{r_1})⁻¹ · F( Σ_i 1_{M_i ∖ M_{i−1}} g_i ) ]

    with ``T(Ĉ)⁻¹ = 1/Ĉ`` where ``|Ĉ| ≥ thr``, else 0 (QSM.jl ``src/bgremove/sharp.jl``).
    ``2R + 4`` FFTs for ``R`` radii (the SMV kernels are direct cosine sums, cached).  A
    single radius gives :func:`sharp`.

    References
    ----------
    Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects spatial
    variation in tissue composition. NeuroImage 2011;55:1645-1656.  Wu B, Li W, Guidon A,
    Liu C. Whole brain susceptibility mapping using compressed sensing. Magn Reson Med
    2012;67:137-147.

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> mask = x**2 + y**2 + z**2 <= 13**2
    >>> loc, m = vsharp(0.5 * x * y - 0.1 * z, mask, radii=(6, 4, 2))  # harmonic field
    >>> bool(np.abs(loc).max() < 1e-10), bool((loc[~m] == 0).all())
    (True, True)
    """
    f, m, vs = _inputs(field, mask, voxel_size)
    rs = _check_radii(vsharp_radii(vs) if radii is None else radii, vs)
    thr = _check_threshold(threshold)
    vst = tuple(float(v) for v in vs)
    grid = _Grid(m, rs[0], vs, f.dtype, field=f)
    F = fft.rfftn(grid.field)
    Mk = fft.rfftn(grid.mask)
    acc = np.zeros(grid.pshape, dtype=f.dtype)
    prev = np.zeros(grid.pshape, dtype=bool)
    buf = np.empty_like(F)
    inv = None
    for _r, S, Mi in _eroded_masks(Mk, grid, vst, rs):
        if inv is None:
            inv = _tsvd_inverse(S, thr)        # largest kernel
        np.multiply(F, S, out=buf)
        g = fft.irfftn(buf, grid.pshape)       # S_r ⊗ f
        new = np.logical_and(Mi, np.logical_not(prev, out=prev), out=prev)
        np.subtract(grid.field, g, out=acc, where=new)   # C_r ⊗ f on the new shell
        prev = Mi
    del buf, F, Mk
    if not prev.any():
        raise ValueError(f'the mask eroded by the smallest radius {rs[-1]} mm is empty; '
                         'use smaller radii or check the mask')
    A = fft.rfftn(acc)
    A *= inv
    out = fft.irfftn(A, grid.pshape)
    out[~prev] = 0.0
    return grid.unpad(out), grid.unpad(prev, False)


def vsharp_ls(field, mask, *, voxel_size=1.0, radii=None, tol: float = 1e-3,
              maxit: int = 10):
    """V-SHARP with a least-squares deconvolution that is consistent on every shell.

    V-SHARP (:func:`vsharp`) deconvolves the high-passed fields of all shells with the
    largest kernel's inverse, ``T(Ĉ_{r_1})⁻¹``, although each shell was filtered with its own
    ``Ĉ_{r_i}``: near the mask edge (the small-radius shells) the local field is then
    distorted.  Here the local field ``x`` solves

    .. math:: \\min_x \\sum_i \\| 1_{\\text{shell}_i} (C_{r_i} ⊗ x − C_{r_i} ⊗ f) \\|^2

    by conjugate gradients from ``x = 0`` (so no component in the operator's null space —
    fields harmonic on the shells, i.e. the background — is introduced), with the same
    radii, shells and final mask as :func:`vsharp`.  Measured on the ``demo`` simulation,
    true local fields of 6 orientations, closed-form χ33: 50.2 % NRMSE after V-SHARP,
    43.7 % after this (the same mask), at ``maxit`` 10 (converged: 60 iterations give the
    same); cost ``(2R + 2)·(maxit + 1)`` FFTs for ``R`` radii.

    Parameters
    ----------
    field, mask, voxel_size, radii :
        As for :func:`vsharp`.
    tol : float
        Stop when the residual of the normal equations falls below ``tol`` of its start.
    maxit : int
        Iteration cap.

    Returns
    -------
    local_field, final_mask :
        As for :func:`vsharp` (``mask`` eroded by the smallest radius).

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> mask = x**2 + y**2 + z**2 <= 13**2
    >>> loc, m = vsharp_ls(0.5 * x * y - 0.1 * z, mask, radii=(6, 4, 2))  # harmonic field
    >>> bool(np.abs(loc).max() < 1e-6), bool((loc[~m] == 0).all())
    (True, True)
    """
    f, m, vs = _inputs(field, mask, voxel_size)
    rs = _check_radii(vsharp_radii(vs) if radii is None else radii, vs)
    _check_iterations(tol, maxit)
    vst = tuple(float(v) for v in vs)
    grid = _Grid(m, rs[0], vs, f.dtype, field=f)
    Mk = fft.rfftn(grid.mask)
    kernels, shells = [], []
    prev = np.zeros(grid.pshape, dtype=bool)
    for _r, S, Mi in _eroded_masks(Mk, grid, vst, rs):
        new = Mi & ~prev
        if new.any():
            kernels.append((1.0 - S).astype(f.dtype))
            shells.append(new)
        prev = Mi
    del Mk
    if not prev.any():
        raise ValueError(f'the mask eroded by the smallest radius {rs[-1]} mm is empty; '
                         'use smaller radii or check the mask')
    shape = grid.pshape

    def normal(x):  # Σ_i C_i W_i C_i x (C_i symmetric convolutions, W_i shell masks)
        X = fft.rfftn(x)
        acc = None
        for C, W in zip(kernels, shells, strict=True):
            y = fft.irfftn(X * C, shape)
            y[~W] = 0.0
            part = fft.rfftn(y) * C
            acc = part if acc is None else acc + part
        return fft.irfftn(acc, shape)

    # CG from x = 0 on the normal equations Σ_i C_i W_i C_i x = Σ_i C_i W_i C_i f
    x, _, _ = _cg(normal, normal(grid.field), tol=tol, maxit=maxit)
    out = x.astype(f.dtype, copy=False)
    out[~prev] = 0.0
    return grid.unpad(out), grid.unpad(prev, False)


# --------------------------------------------------------------------------- solvers
def _cg(apply, b, *, tol, maxit, x0=None):
    """Conjugate gradients for the SPD operator ``apply`` (arrays of any shape).

    Stops when ``‖b − A x‖ ≤ tol·‖b‖`` or after ``maxit`` iterations.  Returns
    ``(x, iterations, relative_residual)``.
    """
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - apply(x) if x0 is not None else b.copy()
    bnorm = float(np.linalg.norm(b))
    if bnorm == 0.0:
        return np.zeros_like(b), 0, 0.0
    p = r.copy()
    rr = float(np.vdot(r, r).real)
    it = 0
    while it < maxit and math.sqrt(rr) > tol * bnorm:
        Ap = apply(p)
        pAp = float(np.vdot(p, Ap).real)
        if pAp <= 0.0:
            break
        a = rr / pAp
        x += a * p
        r -= a * Ap
        rr_new = float(np.vdot(r, r).real)
        p *= rr_new / rr
        p += r
        rr = rr_new
        it += 1
    return x, it, math.sqrt(rr) / bnorm


def _check_iterations(tol, maxit):
    t = positive(tol, 'tol', 'relative residual')
    if isinstance(maxit, bool) or not isinstance(maxit, int | np.integer) or maxit < 1:
        raise ValueError(f'maxit must be a positive integer; got {maxit!r}')
    return t, int(maxit)


# --------------------------------------------------------------------------- iSMV
def _isotropic_smv(S, shape, vs, radius_mm):
    """``Ŝ_r`` plus per-axis second differences that equalise the sphere's second moments.

    On an anisotropic lattice the binary ball has ``m_d = Σ x_d² S(x)`` unequal (e.g.
    3.26, 3.26, 2.62 mm² for r = 4 mm at 1×1×2 mm), so ``S ⊗ f − f ≈ ½ Σ_d m_d ∂_d² f`` is
    an anisotropic Laplacian whose null space is not the harmonic functions.  Adding
    ``c_d (δ_{+e_d} + δ_{−e_d} − 2δ)`` with ``c_d = (max m − m_d)/(2Δ_d²)`` gives every axis
    the moment ``max m`` (sum and symmetry unchanged).  Identity for isotropic voxels.
    """
    ball = sphere_offsets(vs, radius_mm)
    ax = [(np.arange(b) - b // 2) * v for b, v in zip(ball.shape, vs, strict=True)]
    count = ball.sum()
    moments = [float((ax[d].reshape([-1 if i == d else 1 for i in range(3)]) ** 2
                      * ball).sum() / count) for d in range(3)]
    top = max(moments)
    if all(abs(top - mo) <= 1e-12 * top for mo in moments):
        return S
    out = S.astype(S.dtype, copy=True)
    for d, (n, v) in enumerate(zip(shape, vs, strict=True)):
        c = (top - moments[d]) / (2.0 * v * v)
        k = np.arange(n // 2 + 1 if d == 2 else n)
        view = [1, 1, 1]
        view[d] = k.size
        out += (c * (2.0 * np.cos(2.0 * np.pi * k / n) - 2.0)).astype(S.dtype).reshape(view)
    return out


def ismv(field, mask, *, voxel_size=1.0, radius=None, tol: float = 1e-4, maxit: int = 2000,
         solver: str = 'fixed-point', isotropic_kernel: bool = True):
    """iSMV background field removal (iterative spherical mean value).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (any unit; the output has the same unit).  Linear in it
        up to the stopping tolerance (exactly linear only when converged).
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius : float, optional
        SMV radius in mm; default ``2·max(voxel_size)`` (QSM.jl ``ismv``).
    tol : float
        Stopping tolerance.  ``'fixed-point'``: stop when the update
        ``‖f_B^{k+1} − f_B^k‖`` falls below ``tol·‖M_r f_T‖`` (QSM.jl's rule);
        ``'cg'``: relative residual of the fixed-point equation.  Default 1e-4: QSM.jl's
        1e-3 (with at most 500 iterations) stops far from the fixed point because the
        iteration contracts slowly (62 % instead of 44.6 % NRMSE of the local field on
        the ``demo`` benchmark, ``docs/benchmarks.md``).
    maxit : int
        Maximum number of iterations (default 2000; QSM.jl 500).
    solver : {'fixed-point', 'cg'}
        ``'fixed-point'``: the iteration of Wen et al. (2 FFTs per iteration);
        ``'cg'``: conjugate gradients on the same fixed-point equation
        ``(I − M_r S M_r) x = M_r S b`` (the operator is symmetric positive definite
        because ``S`` is a symmetric averaging kernel), which reaches the same solution
        in far fewer iterations.
    isotropic_kernel : bool
        Equalise the second moments of the lattice sphere for anisotropic voxels
        (qsmprep addition, no effect for isotropic voxels; see Notes).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        ``mask`` eroded by the sphere of ``radius`` (``M_r``).

    Notes
    -----
    The background field obeys the mean value property inside ``M_r``; on the boundary
    shell ``B = M ∖ M_r`` it is approximated by the total field.  With ``b = 1_B f_T``::

        f_B^0 = f_T,   f_B^{k+1} = M_r · (S_r ⊗ f_B^k) + b,   f_L = M_r (f_T − f_B)

    (QSM.jl ``src/bgremove/ismv.jl``).  No deconvolution is needed, so no TSVD threshold.

    For anisotropic voxels the binary lattice sphere has unequal second moments, so its
    fixed point is the solution of an *anisotropic* Laplace equation, not a harmonic
    function; iterating accumulates the difference (3.9 % of the background left at
    1×1×2 mm in ``tests/numerics/test_bgremoval_methods.py``).  With
    ``isotropic_kernel=True`` the smoothing kernel gets per-axis second differences that
    equalise the moments (0.1 % left); the erosion still uses the plain sphere.

    References
    ----------
    Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value method
    for background field removal in MRI. Magn Reson Med 2014;72:1065-1071.

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> mask = x**2 + y**2 + z**2 <= 13**2
    >>> loc, m = ismv(0.3 * x - 0.2 * z + 1.0, mask, radius=2.0)   # harmonic: removed
    >>> bool(np.abs(loc).max() < 1e-10), bool((loc[~m] == 0).all())
    (True, True)
    """
    f, m, vs = _inputs(field, mask, voxel_size)
    r = _check_radius(2.0 * vs.max() if radius is None else radius, vs)
    tol, maxit = _check_iterations(tol, maxit)
    if solver not in ('fixed-point', 'cg'):
        raise ValueError(f"solver must be 'fixed-point' or 'cg'; got {solver!r}")
    vst = tuple(float(v) for v in vs)
    grid = _Grid(m, r, vs, f.dtype, field=f)
    Mk = fft.rfftn(grid.mask)
    (_, S, Mr), = _eroded_masks(Mk, grid, vst, (r,))
    del Mk
    if not Mr.any():
        raise ValueError(f'the mask eroded by {r} mm is empty; use a smaller radius')
    if isotropic_kernel:
        S = _isotropic_smv(S, grid.pshape, vst, r)
    fp = grid.field
    bc = np.where(Mr, fp.dtype.type(0), fp)          # f_T on the shell (0 outside M)

    def smooth(v):
        V = fft.rfftn(v)
        V *= S
        return fft.irfftn(V, grid.pshape)

    if solver == 'fixed-point':
        fb = fp.copy()
        prev = np.where(Mr, fp, fp.dtype.type(0))
        eps = tol * float(np.linalg.norm(prev))
        for _ in range(maxit):
            fb = smooth(fb)
            fb *= Mr
            fb += bc
            step = float(np.linalg.norm(fb - prev))
            prev = fb
            if step <= eps:
                break
        fb_int = fb
    else:
        def apply(v):
            return v - Mr * smooth(v)            # v lives on M_r only
        rhs = Mr * smooth(bc)
        x, _, _ = _cg(apply, rhs.astype(fp.dtype), tol=tol, maxit=maxit)
        fb_int = x
    out = fp - fb_int
    out[~Mr] = 0.0
    return grid.unpad(out), grid.unpad(Mr, False)


# --------------------------------------------------------------------------- PDF
def pdf(field, mask, *, voxel_size=1.0, b0_direction=(0.0, 0.0, 1.0), weights=None,
        padding: int = 40, tol: float = 1e-3, maxit: int = 100):
    """PDF background field removal (projection onto dipole fields).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (any unit; the output has the same unit).  Linear in it
        up to the CG tolerance (about 1 % at ``tol=1e-3``).
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    b0_direction : 3 floats
        Unit B0 vector in the voxel-axis frame (the dipole kernel of
        :func:`qsmprep.numerics.dipole.dipole_kernel`).
    weights : ndarray, optional
        Data weights ``W`` (e.g. ``1/σ`` of the field, or the magnitude); default 1.
    padding : int
        Zero padding in voxels per side of the mask's bounding box, the room for the
        background sources (default 40, MEDI ``PDF.m``).
    tol : float
        CG stop on the relative residual of the normal equations (default 1e-3; MEDI
        uses 0.1 with 30 iterations, QSM.jl 1e-5 with LSMR; 1e-3 is where the
        local field of the benchmark stopped changing, ``docs/benchmarks.md``).
    maxit : int
        Maximum number of CG iterations (default 100).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        The input ``mask`` (PDF does not erode).

    Notes
    -----
    ``χ_out = argmin ‖W M (f_T − d ⊗ (M̄ χ))‖²`` by CG on the normal equations
    ``M̄ D W² M D M̄ χ = M̄ D W² M f_T`` (``M̄`` = outside the mask, padding included;
    ``D`` real and even, so self-adjoint), then ``f_L = M (f_T − d ⊗ (M̄ χ_out))``.
    4 FFTs per iteration on the padded grid.  Local-field components that look like the
    field of an outside source (chiefly near the mask edge, and the part of the local
    field parallel to such fields) are removed with the background.

    References
    ----------
    Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y. A
    novel background field removal method for MRI using projection onto dipole fields.
    NMR Biomed 2011;24:1129-1136.

    Examples
    --------
    >>> from qsmprep.numerics.forward import dipole_forward
    >>> x, y, z = np.mgrid[:40, :40, :40] - 19.5
    >>> chi = 1.0 * ((x - 12)**2 + y**2 + z**2 <= 4**2)          # a source outside
    >>> mask = x**2 + y**2 + z**2 <= 8**2
    >>> f = dipole_forward(chi, padding=40)
    >>> loc, m = pdf(f, mask, padding=20)
    >>> bool(np.sqrt(np.mean(loc[m]**2)) < 0.05 * np.sqrt(np.mean(f[m]**2)))
    True
    """
    from qsmprep.numerics.dipole import dipole_kernel

    f, m, vs = _inputs(field, mask, voxel_size)
    tol, maxit = _check_iterations(tol, maxit)
    if isinstance(padding, bool) or not isinstance(padding, int | np.integer) or padding < 0:
        raise ValueError(f'padding must be a non-negative integer (voxels); got {padding!r}')
    w = None
    if weights is not None:
        w = as_volume(weights, 'weights')
        if w.shape != f.shape:
            raise ValueError(f'weights have shape {w.shape}; expected {f.shape}')
        if np.any(w[m] < 0):
            raise ValueError('weights must be non-negative')
    grid = _Grid(m, max(int(padding), 1) * float(vs.min()), vs, f.dtype, field=f)
    D = dipole_kernel(grid.pshape, vs, b0_direction, dtype=f.dtype)
    inside = grid.mask > 0
    W2 = inside.astype(f.dtype)
    if w is not None:
        W2 *= fft.pad(np.where(m[grid.box], w[grid.box], 0).astype(f.dtype), grid.pshape) ** 2

    def dconv(v):
        V = fft.rfftn(v)
        V *= D
        return fft.irfftn(V, grid.pshape)

    def normal(v):                                   # M̄ D W² M D M̄ v (v lives on M̄)
        u = dconv(v)
        u *= W2
        u = dconv(u)
        u[inside] = 0.0
        return u

    rhs = dconv(W2 * grid.field)
    rhs[inside] = 0.0
    chi, _, _ = _cg(normal, rhs, tol=tol, maxit=maxit)
    fb = dconv(chi)
    out = grid.field - fb
    out[~inside] = 0.0
    return grid.unpad(out), m.copy()


# --------------------------------------------------------------------------- LBV
def lbv(field, mask, *, voxel_size=1.0, tol: float = 1e-6, maxit: int | None = None):
    """LBV background field removal (Laplacian boundary value problem).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (any unit; the output has the same unit).  Linear in it.
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm; the Laplacian weighs axis ``d`` by ``1/Δ_d²``.
    tol : float
        CG stop on the relative residual (default 1e-6; QSM.jl ``lbv`` uses
        ``sqrt(eps)`` with a multigrid preconditioner).
    maxit : int, optional
        Maximum number of CG iterations; default ``20·max(shape)`` (plain CG needs about
        ``O(N^{1/3})`` times the condition-number square root; QSM.jl: ``max(shape)``
        with multigrid).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        Interior of ``mask``: voxels whose six face neighbours are all in ``mask``
        (the boundary layer carries the Dirichlet data).

    Notes
    -----
    With the 7-point Laplacian ``L = Σ_d (f_{i+e_d} − 2f_i + f_{i−e_d})/Δ_d²``, the
    background ``f_B`` solves ``L f_B = 0`` on the interior ``M°`` with ``f_B = f_T`` on the
    boundary layer ``M ∖ M°``.  Equivalently (solved here) the local field ``f_L = f_T − f_B``
    solves ``L f_L = L f_T`` on ``M°`` with ``f_L = 0`` on the boundary layer: a sparse
    symmetric positive definite system on the interior voxels, solved by conjugate
    gradients (:func:`scipy.sparse.linalg.cg`) in float64.

    References
    ----------
    Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the
    Laplacian boundary value problem. NMR Biomed 2014;27:312-319.

    Examples
    --------
    >>> x, y, z = np.mgrid[:24, :24, :24] - 11.5
    >>> mask = x**2 + y**2 + z**2 <= 10**2
    >>> loc, m = lbv(x * y - 0.5 * z**2 + 0.25 * x**2 + 0.25 * y**2, mask)  # harmonic
    >>> bool(np.abs(loc).max() < 1e-4), bool((loc[~m] == 0).all())
    (True, True)
    """
    from scipy import sparse
    from scipy.sparse import linalg as splinalg

    f, m, vs = _inputs(field, mask, voxel_size)
    tol = positive(tol, 'tol', 'relative residual')
    if not m.any():
        raise ValueError('mask is empty; background removal needs a non-empty mask')
    if maxit is None:
        maxit = 20 * max(m.shape)
    _, maxit = _check_iterations(tol, maxit)
    padded = np.pad(m, 1)
    interior = padded.copy()
    for d in range(3):
        for s in (1, -1):
            interior[1:-1, 1:-1, 1:-1] &= np.roll(padded, s, axis=d)[1:-1, 1:-1, 1:-1]
    interior = interior[1:-1, 1:-1, 1:-1] & m
    n = int(interior.sum())
    if n == 0:
        raise ValueError('the mask has no interior voxels (every voxel touches the '
                         'outside); LBV needs a mask at least 3 voxels thick')
    index = np.full(m.shape, -1, dtype=np.int64)
    index[interior] = np.arange(n)
    pos = np.nonzero(interior)
    f64 = np.where(m, f, 0.0).astype(np.float64)
    w = 1.0 / np.square(vs.astype(np.float64))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 2.0 * w.sum())]
    lap = -2.0 * w.sum() * f64[pos]                   # L f_T on the interior
    for d in range(3):
        for s in (1, -1):
            nb = list(pos)
            nb[d] = nb[d] + s                         # inside the array: interior voxel
            j = index[tuple(nb)]
            lap += w[d] * f64[tuple(nb)]
            keep = j >= 0
            rows.append(np.flatnonzero(keep))
            cols.append(j[keep])
            vals.append(np.full(int(keep.sum()), -w[d]))
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n))
    b = -lap                                          # A = −L on the interior (SPD)
    x, _ = splinalg.cg(A, b, rtol=tol, atol=0.0, maxiter=maxit)
    out = np.zeros(m.shape, dtype=f.dtype)
    out[interior] = x
    return out, interior


# --------------------------------------------------------------------------- RESHARP
def resharp_radius(voxel_size=1.0):
    """Default RESHARP radius (mm) of sepia ``RESHARP.m``: ``round(6/max(Δ))·max(Δ)``.

    >>> resharp_radius(1.0), resharp_radius((1.0, 1.0, 2.0)), resharp_radius(0.8)
    (6.0, 6.0, 6.4)
    """
    vmax = float(as_voxel_size(voxel_size).max())
    return float(max(round(6.0 / vmax), 1) * vmax)


def resharp(field, mask, *, voxel_size=1.0, radius=None, alpha: float = 0.01,
            tol: float = 1e-2, maxit: int = 40):
    """RESHARP background field removal (SHARP with Tikhonov regularisation, CG).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (any unit; the output has the same unit).  Linear in it
        up to the CG tolerance.
    mask : ndarray of bool
        Region where ``field`` is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius : float, optional
        SMV radius in mm; default :func:`resharp_radius` (6 mm at 1 mm, sepia
        ``RESHARP.m``).
    alpha : float
        Tikhonov weight (default 0.01, sepia ``RESHARP.m``).
    tol : float
        CG stop on the relative residual (default 1e-2, sepia ``RESHARP.m``).
    maxit : int
        Maximum CG iterations (default 40, sepia ``RESHARP.m``).

    Returns
    -------
    local_field : ndarray
        Same shape and dtype as ``field``; exactly 0 outside ``final_mask``.
    final_mask : ndarray of bool
        ``mask`` eroded by the sphere of ``radius``.

    Notes
    -----
    ``x = argmin ‖M_r C_r⊗(x − f_T)‖² + α‖x‖²`` by CG on ``(C M_r C + α I) x = C M_r C f_T``
    (``C = δ − S_r`` real and even, so self-adjoint), ``f_L = M_r x``.  4 FFTs per
    iteration.

    References
    ----------
    Sun H, Wilman AH. Background field removal using spherical mean value filtering and
    Tikhonov regularization. Magn Reson Med 2014;71:1151-1157.

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> mask = x**2 + y**2 + z**2 <= 13**2
    >>> loc, m = resharp(0.3 * x - 0.2 * z + 1.0, mask, radius=3.0)   # harmonic: removed
    >>> bool(np.abs(loc).max() < 1e-10), bool((loc[~m] == 0).all())
    (True, True)
    """
    f, m, vs = _inputs(field, mask, voxel_size)
    r = _check_radius(resharp_radius(vs) if radius is None else radius, vs)
    alpha = positive(alpha, 'alpha', 'units of the squared field')
    tol, maxit = _check_iterations(tol, maxit)
    vst = tuple(float(v) for v in vs)
    grid = _Grid(m, r, vs, f.dtype, field=f)
    Mk = fft.rfftn(grid.mask)
    (_, S, Mr), = _eroded_masks(Mk, grid, vst, (r,))
    del Mk
    if not Mr.any():
        raise ValueError(f'the mask eroded by {r} mm is empty; use a smaller radius')
    C = (1.0 - S).astype(f.dtype)

    def highpass(v):
        V = fft.rfftn(v)
        V *= C
        return fft.irfftn(V, grid.pshape)

    def masked_normal(v):                         # C M_r C v
        u = highpass(v)
        u[~Mr] = 0.0
        return highpass(u)

    rhs = masked_normal(grid.field)
    x, _, _ = _cg(lambda v: masked_normal(v) + alpha * v, rhs, tol=tol, maxit=maxit)
    x[~Mr] = 0.0
    return grid.unpad(x), grid.unpad(Mr, False)


#: Background-removal methods by name (``--bgremoval``); each returns
#: ``(local_field, final_mask)``.
METHODS = {'vsharp': vsharp, 'vsharp-ls': vsharp_ls, 'ismv': ismv, 'pdf': pdf, 'lbv': lbv,
           'resharp': resharp}
