"""Laplacian phase unwrapping (FFT Poisson solvers) and phase wrapping.

Two estimators of the Laplacian of the true phase ``φ`` from the wrapped phase ``φw``
are provided, each followed by a periodic FFT Poisson solve on a zero-padded grid:

``'wrapped-difference'`` (default; QSM.jl ``unwrap_laplacian(…, solver=:fft)``)
    ``∇²φ ≈ Σ_d [wrap(φ_{i+1} − φ_i) − wrap(φ_i − φ_{i−1})] / Δ_d²`` along each axis
    ``d``, inverted with the symbol of the *same* discrete 7-point Laplacian.  Exact (up to
    a constant) when every true neighbour difference is below π in magnitude.  2 FFTs.
``'sin-cos'`` (Schofield & Zhu 2003)
    ``∇²φ = Im(e^{−iφw} ∇² e^{iφw})`` (the complex form of
    ``cos φw ∇² sin φw − sin φw ∇² cos φw``) with either the continuous kernel
    ``−4π²|k|²`` (default for this method, variant (b) of ``docs/physics.md`` §4) or the
    discrete 7-point kernel (variant (a), MEDI ``unwrapLaplacian.m``; underestimates steep
    phase by ≈ (Δφ)²/6).  4 FFTs (one complex pair, one real pair).

Conventions
-----------
* Phase in rad, voxel sizes in mm; the Laplacian is in rad/mm².
* k-space coordinates ``k_d = fftfreq(N_d, Δ_d)`` (cycles/mm); the continuous symbol is
  ``−4π²|k|²``, the discrete one ``Σ_d (2 cos(2πk_dΔ_d) − 2)/Δ_d²``; the inverse is 0 at
  ``k = 0`` (the DC of ``∇⁻²`` is undefined).
* Harmonic functions (``∇²h = 0``: constants, ramps, …) are invisible to the Laplacian.
  With the periodic solver only a constant is lost for periodic-consistent phase; a linear
  ramp becomes a discontinuity at the periodic boundary and is **not** recovered (the
  output then differs from the true phase by a function that is harmonic inside the
  object).  The subsequent background-field removal removes such harmonic terms.
* The output is **not** a 2πn unwrap: ``φ_L − φw`` is close to, but not exactly, a
  multiple of 2π wherever the Laplacian estimate is not exact.
"""

from __future__ import annotations

import functools

import numpy as np

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_mask, as_volume, as_voxel_size

__all__ = ['laplacian_unwrap', 'wrap_phase', 'wrapped_laplacian']

_METHODS = ('wrapped-difference', 'sin-cos')
_KERNELS = ('discrete', 'continuous')
_OFFSETS = ('congruent', 'mean', 'none')
_TWO_PI = 2.0 * np.pi


def wrap_phase(x):
    """Wrap phase (rad) into the half-open interval ``[−π, π)``: the project's one convention.

    ``wrap(x) = x − 2π·floor((x + π)/2π)``, with ``π`` the value of π in the array's dtype
    (float32 input stays float32; integers become float64), then folded once, because the
    rounded quotient can be off by one next to ±π: the result is in ``[−π, π)`` for every
    finite input.  Values already in ``[−π, π)`` are returned unchanged (bit for bit), so
    wrapping is idempotent, and ``exp(i·wrap(x)) = exp(i·x)`` up to rounding.

    Why ``[−π, π)`` and not the ``(−π, π]`` of :func:`numpy.angle`: it is the range of
    scanner phase (signed 12-bit ``[−4096, 4095]`` is exactly ``x·π/4096``, and
    ``'arbitrary'`` phase is rescaled onto it by :func:`qsmprep.io.nifti.rescale_arbitrary_phase`),
    and it is what ``floor`` gives (``x mod 2π`` shifted by π).  The two conventions differ
    only for values that are exactly ``±π``, which are the same angle.

    >>> wrap_phase(np.array([np.pi, -np.pi, 3 * np.pi, -3 * np.pi, 0.5, 4.0])).round(6).tolist()
    [-3.141593, -3.141593, -3.141593, -3.141593, 0.5, -2.283185]
    """
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f'phase must be a real numeric array; got dtype {x.dtype}')
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    scalar = x.ndim == 0
    x = x.reshape(-1) if scalar else x
    pi = x.dtype.type(np.pi)
    two_pi = x.dtype.type(_TWO_PI)  # == 2·pi exactly in every binary float type
    out = np.floor((x + pi) / two_pi)
    out *= -two_pi
    out += x
    # the fold: exact, so x in [−π, π) comes back bit for bit even when the quotient
    # rounded up to 1 (x just below π)
    np.subtract(out, two_pi, out=out, where=out >= pi)
    np.add(out, two_pi, out=out, where=out < -pi)
    bad = ~((out >= -pi) & (out < pi)) & np.isfinite(x)
    if bad.any():  # |x| beyond ~2π/eps: x − n·2π has lost more than 2π; fmod is exact
        r = np.fmod(x[bad], two_pi)
        r = np.where(r >= pi, r - two_pi, r)
        out[bad] = np.where(r < -pi, r + two_pi, r)
    return out[0] if scalar else out


def _wrap_inplace(g):
    """Wrap differences into ``[−π, π]`` in place (round-to-nearest multiple of 2π)."""
    t = g * (1.0 / _TWO_PI)
    np.rint(t, out=t)
    t *= _TWO_PI
    g -= t
    return g


def wrapped_laplacian(phase, voxel_size=1.0):
    """Discrete 7-point Laplacian of the phase built from wrapped neighbour differences.

    ``L_i = Σ_d [wrap(φ_{i+1} − φ_i) − wrap(φ_i − φ_{i−1})] / Δ_d²`` with **periodic**
    boundaries (``φ_{N} ≡ φ_0``), in rad/mm².  Equals the discrete Laplacian of the true
    phase wherever all true neighbour differences are below π in magnitude, is invariant
    to adding multiples of 2π to any voxel, and sums to exactly 0 over the array
    (telescoping), which makes the periodic Poisson problem consistent.

    Parameters
    ----------
    phase : ndarray, shape (X, Y, Z)
        Wrapped phase in rad (any real values; only ``phase mod 2π`` matters).
    voxel_size : float or 3 floats
        Voxel size in mm.

    Returns
    -------
    ndarray
        Same shape and floating dtype as ``phase``.

    Examples
    --------
    >>> x = np.arange(8.0)[:, None, None] * np.ones((8, 8, 8))
    >>> phi = 2.0 * np.sin(2 * np.pi * x / 8)          # smooth, periodic, ≤ 1.6 rad/voxel
    >>> lap = wrapped_laplacian(wrap_phase(phi))
    >>> ref = np.roll(phi, -1, 0) - 2 * phi + np.roll(phi, 1, 0)
    >>> bool(np.allclose(lap, ref))
    True
    """
    u = as_volume(phase, 'phase')
    vs = as_voxel_size(voxel_size)
    return _wrapped_laplacian(u, vs)


def _wrapped_laplacian(u, vs):
    lap = np.zeros_like(u)
    g = np.empty_like(u)
    for d in range(3):
        n = u.shape[d]
        if n == 1:
            continue  # a single periodic sample has zero differences
        s = [slice(None)] * 3

        def sl(a, b, _d=d, _s=s):
            idx = list(_s)
            idx[_d] = slice(a, b)
            return tuple(idx)

        # forward difference g_i = wrap(u_{i+1} − u_i), periodic
        np.subtract(u[sl(1, None)], u[sl(None, -1)], out=g[sl(None, -1)])
        np.subtract(u[sl(0, 1)], u[sl(n - 1, n)], out=g[sl(n - 1, n)])
        _wrap_inplace(g)
        w = 1.0 / (vs[d] * vs[d])
        if w != 1.0:
            g *= w
        # lap_i += g_i − g_{i−1}, periodic
        lap += g
        lap[sl(1, None)] -= g[sl(None, -1)]
        lap[sl(0, 1)] -= g[sl(n - 1, n)]
    return lap


@functools.lru_cache(maxsize=4)
def _symbol(shape, voxel_size, kind, dtype, half, inverse):
    """Laplacian symbol on an FFT grid (``inverse``: ``1/L`` with 0 at DC); read-only.

    Cached (a few entries) so that the echoes of one series reuse it.
    """
    dtype = np.dtype(dtype)
    parts = []
    for d, (n, v) in enumerate(zip(shape, voxel_size, strict=True)):
        k = np.fft.rfftfreq(n, v) if (half and d == 2) else np.fft.fftfreq(n, v)
        if kind == 'discrete':
            p = (2.0 * np.cos(2.0 * np.pi * k * v) - 2.0) / (v * v)
        else:
            p = -4.0 * np.pi ** 2 * k * k
        view = [1, 1, 1]
        view[d] = k.size
        parts.append(p.astype(dtype).reshape(view))
    sym = parts[0] + parts[1]
    sym = np.add(sym, parts[2], out=np.empty(np.broadcast_shapes(sym.shape, parts[2].shape),
                                             dtype=dtype))
    if inverse:
        small = np.abs(sym) < 1e-10        # only k = 0 on a grid (DC of ∇⁻² := 0)
        small.flat[0] = True
        np.divide(1.0, sym, out=sym, where=~small)
        sym[small] = 0.0
    sym.setflags(write=False)
    return sym


def _poisson_solve(lap, vs, kind):
    """``∇⁻²`` of a real array with periodic boundaries (2 FFTs), DC of the result = 0."""
    inv = _symbol(lap.shape, tuple(vs), kind, lap.dtype, True, True)
    spec = fft.rfftn(lap)
    spec *= inv
    return fft.irfftn(spec, lap.shape)


def _sincos_laplacian(u, pshape, vs, kind):
    """``Im(e^{−iu} ∇² e^{iu})`` on the padded grid via one complex FFT pair.

    ``u`` is the unpadded phase; ``e^{iu} = 1`` in the zero padding.
    """
    ctype = np.result_type(u.dtype, np.complex64)
    z = np.ones(pshape, dtype=ctype)
    zc = fft.crop(z, u.shape)
    np.cos(u, out=zc.real)
    np.sin(u, out=zc.imag)
    sym = _symbol(pshape, tuple(vs), kind, u.dtype, False, False)
    Z = fft.fftn(z)
    Z *= sym
    w = fft.ifftn(Z)
    del Z
    # Im(conj(z) w) = Re(z) Im(w) − Im(z) Re(w)   (reusing z's memory for the second term)
    lap = z.real * w.imag
    second = np.multiply(z.imag, w.real, out=z.real)
    lap -= second
    return lap


def laplacian_unwrap(phase, *, voxel_size=1.0, mask=None, method: str = 'wrapped-difference',
                     padding: int = 12, solver_kernel: str | None = None,
                     offset: str = 'congruent'):
    """Unwrap phase with a Laplacian estimate and an FFT Poisson solve.

    Parameters
    ----------
    phase : ndarray, shape (X, Y, Z)
        Wrapped phase of one echo in rad (float32 stays float32, float64 stays float64).
    voxel_size : float or 3 floats
        Voxel size in mm (anisotropic voxels are supported).
    mask : ndarray of bool, optional
        Region of interest.  The phase is set to 0 **outside** the mask before unwrapping
        (noise outside the object then cannot corrupt the Laplacian inside it, except
        through the boundary of the mask), and the output is exactly 0 outside the mask.
        ``None`` uses the whole array.
    method : {'wrapped-difference', 'sin-cos'}
        Laplacian estimator (module docstring).  ``'wrapped-difference'`` is exact when the
        true neighbour differences are below π; ``'sin-cos'`` is the classic Schofield &
        Zhu estimator.
    padding : int
        Zero padding (voxels per side) before the periodic FFT solve, rounded up to a fast
        FFT size with :func:`qsmprep.numerics.fft.fast_shape`; the output is cropped back
        exactly.  STI Suite uses 12.
    solver_kernel : {'discrete', 'continuous'}, optional
        Laplacian symbol used by the FFT solver.  Default: ``'discrete'`` (7-point) for
        ``'wrapped-difference'`` (the only exact choice, and the only one accepted) and
        ``'continuous'`` (``−4π²|k|²``) for ``'sin-cos'``; ``'discrete'`` with
        ``'sin-cos'`` reproduces MEDI ``unwrapLaplacian``.
    offset : {'congruent', 'mean', 'none'}
        Choice of the undefined additive constant.  ``'congruent'`` (default): the constant
        is chosen so that the circular mean of ``φ_L − φw`` over the mask is 0 (the output
        agrees with the measured phase modulo 2π on average), and then shifted by the
        multiple of 2π that puts the in-mask mean of the output in ``[−π, π)``.
        ``'mean'``: in-mask mean 0.  ``'none'``: the raw solution (mean 0 over the padded
        grid, DC of ``∇⁻²`` set to 0).

    Returns
    -------
    ndarray
        Unwrapped phase in rad, same shape and dtype as ``phase``, 0 outside ``mask``.

    Notes
    -----
    Wrapped-difference variant: ``φ_L = L⁻¹ Σ_d [wrap(φ_{i+1} − φ_i) −
    wrap(φ_i − φ_{i−1})]/Δ_d²`` with ``L(k) = Σ_d (2cos(2πk_dΔ_d) − 2)/Δ_d²``.
    Schofield & Zhu variant: ``φ_L = K⁻¹ F[Im(e^{−iφw} F⁻¹(K F e^{iφw}))]`` with
    ``K = −4π²|k|²`` or ``L``.  In both, ``K⁻¹(0) := 0``.  Harmonic components of the true
    phase (e.g. a linear ramp across a truncated field of view) are not recovered.  Where
    the true phase changes by π or more between neighbours (noise, veins at late echoes,
    outside the brain) the result is wrong locally: mask or erode those regions first.

    References
    ----------
    Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric applications.
    Opt Lett 2003;28:1194-1196.  QSM.jl (kamesy/QSM.jl) ``src/unwrap/laplacian.jl``:
    wrapped finite differences with the periodic FFT solver (``solver=:fft``).

    Examples
    --------
    >>> x, y, z = np.mgrid[:32, :32, :32] - 15.5
    >>> phi = 20.0 * np.exp(-(x**2 + y**2 + z**2) / (2 * 6.0**2))   # 20 rad bump
    >>> out = laplacian_unwrap(wrap_phase(phi), offset='mean')
    >>> bool(np.abs(out - (phi - phi.mean())).max() < 1e-9)
    True
    """
    u = as_volume(phase, 'phase')
    vs = as_voxel_size(voxel_size)
    m = None if mask is None else as_mask(mask, u.shape)
    if method not in _METHODS:
        raise ValueError(f'method must be one of {_METHODS}; got {method!r}')
    if solver_kernel is None:
        solver_kernel = 'discrete' if method == 'wrapped-difference' else 'continuous'
    if solver_kernel not in _KERNELS:
        raise ValueError(f'solver_kernel must be one of {_KERNELS}; got {solver_kernel!r}')
    if method == 'wrapped-difference' and solver_kernel != 'discrete':
        raise ValueError(
            "method='wrapped-difference' builds the discrete 7-point Laplacian, so it must "
            "be inverted with solver_kernel='discrete'; use method='sin-cos' for the "
            'continuous kernel')
    if offset not in _OFFSETS:
        raise ValueError(f'offset must be one of {_OFFSETS}; got {offset!r}')
    if isinstance(padding, bool) or not isinstance(padding, int | np.integer) or padding < 0:
        raise ValueError(f'padding must be a non-negative integer (voxels); got {padding!r}')
    if m is not None and not m.any():
        raise ValueError('mask is empty; nothing to unwrap')

    shape = u.shape
    pshape = fft.fast_shape(shape, int(padding)) if padding else shape
    work = u if m is None else np.where(m, u, u.dtype.type(0))
    if method == 'sin-cos':
        lap = _sincos_laplacian(work, pshape, vs, solver_kernel)
    elif pshape == shape:
        lap = _wrapped_laplacian(work, vs)
    else:
        # The zero padding has zero differences, so the Laplacian vanishes outside the
        # data plus a one-voxel ring: compute it there only and embed it (identical to the
        # periodic wrapped Laplacian of the padded array, at a fraction of the cost).
        lap = fft.pad(_wrapped_laplacian(np.pad(work, 1), vs), pshape)
    del work
    out = _poisson_solve(lap, vs, solver_kernel)
    del lap
    if pshape != shape:
        out = np.ascontiguousarray(fft.crop(out, shape))

    if offset != 'none':
        sel = m if m is not None else slice(None)
        vals = out[sel]
        if offset == 'mean':
            c = -float(np.mean(vals, dtype=np.float64))
        else:
            d = vals - u[sel]
            c0 = float(np.arctan2(np.sum(np.sin(d), dtype=np.float64),
                                  np.sum(np.cos(d), dtype=np.float64)))
            mu = float(np.mean(vals, dtype=np.float64)) - c0
            c = -c0 + (float(wrap_phase(np.float64(mu))) - mu)
        out += out.dtype.type(c)
    if m is not None:
        out[~m] = 0.0
    return out
