"""Multi-orientation inversion as the pipeline runs it: COSMOS and STI maps from fields.

:func:`solve_multi_orientation` is the one function the participant pipeline's
multi-orientation node calls (and the accuracy benchmark's *oracle*): arrays in, maps out.

Two solvers
-----------
``'single-step'`` (default)
    COSMOS and STI fitted **directly to the total fields** through a spherical-mean-value
    (SMV) data term, jointly over all orientations (:func:`single_step_inversion`)::

        min_x  Σ_i ‖ H (A_i M x − f_i) ‖²  +  λ ‖dev(x)‖²         (x supported on M)

    ``H = Σ_s 1_{shell s} · (δ − S_{r_s})⊗`` is the V-SHARP high-pass assembled over
    shells of the mask (largest radius deepest), ``A_i`` the dipole (COSMOS) or tensor
    (STI) forward model of orientation ``i``.  Every harmonic function inside the mask —
    all of the background field, whatever its source — is in the null space of ``H``, so
    no separate background removal is needed; and because the unknown is the
    susceptibility (inside the whole, un-eroded mask), the part of the *local* field that
    happens to be harmonic inside the mask is not thrown away, as it is by V-SHARP's
    truncated deconvolution (≈ 55 % of the local field's energy on the 2 mm simulated head:
    ``docs/physics.md``).  Solved by preconditioned conjugate gradients on the normal
    equations, preconditioner the per-k inverse of the unmasked normal operator; stopping
    rule ``‖r_k‖ ≤ tol·‖r_0‖`` (normal-equation residual) or ``max_iter``: nothing is tuned
    against a ground truth.
``'closed-form'``
    The per-k closed forms of :func:`qsmprep.numerics.sti.cosmos` and
    :func:`qsmprep.numerics.sti.fit_sti` on background-removed local fields (V-SHARP etc.),
    the classical two-step route (STI Suite ``STI_Parfor.m``).

Both return maps with the undefined mean removed inside the output mask.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_direction, as_directions, as_mask, as_voxel_size
from qsmprep.numerics.dipole import dipole_kernel, kspace_products
from qsmprep.numerics.forward import sti_rows

__all__ = ['SOLVERS', 'SingleStepInfo', 'default_smv_radii', 'single_step_inversion',
           'solve_multi_orientation']

SOLVERS = ('single-step', 'closed-form')
_RTOL = 1e-9


def default_smv_radii(voxel_size=1.0) -> tuple[float, float]:
    """SMV radii (mm) of the single-step data term: deep shell and edge shell.

    ``(max(12, 6·max Δ), max(4, 3·max Δ))``: the large radius conditions the low spatial
    frequencies deep in the brain, the small one keeps data close to the mask edge.  The
    edge radius spans at least 3 voxels: on a sphere of 2 voxels the discrete mean-value
    property is too inexact, and a fraction of the (40× stronger) background field leaks
    into the data term (on the 2 mm simulated head, 4 mm instead of 6 mm costs 8 points of
    COSMOS NRMSE).

    >>> default_smv_radii(1.0), default_smv_radii((1.5, 1.5, 2.0)), default_smv_radii(3.0)
    ((12.0, 4.0), (12.0, 6.0), (18.0, 9.0))
    """
    vmax = float(as_voxel_size(voxel_size).max())
    return (max(12.0, 6.0 * vmax), max(4.0, 3.0 * vmax))


@dataclass
class SingleStepInfo:
    """How a :func:`single_step_inversion` ran (for sidecars and reports)."""

    model: str
    radii: tuple[float, ...]
    iterations: int
    relative_residual: float
    converged: bool
    tol: float
    max_iter: int
    anisotropy_penalty: float
    residual_history: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {'model': self.model, 'smv_radii_mm': list(self.radii),
                'iterations': self.iterations,
                'relative_residual': float(self.relative_residual),
                'converged': bool(self.converged), 'tol': self.tol, 'max_iter': self.max_iter,
                'anisotropy_penalty': self.anisotropy_penalty}


def _smv(shape, vs, radius, dtype):
    from qsmprep.numerics.bgremoval import _smv_spectrum

    return _smv_spectrum(tuple(shape), tuple(float(v) for v in vs), float(radius), dtype)


def single_step_inversion(fields, b0_directions, *, voxel_size=1.0, mask, model='cosmos',
                          radii=None, anisotropy_penalty: float = 0.1, damping: float = 0.0,
                          tol: float = 1e-2, max_iter: int = 40, dtype=np.float32, progress=None):
    """COSMOS or STI fitted to total (or local) fields through an SMV data term.

    Parameters
    ----------
    fields : ndarray (X, Y, Z, N)
        Fields (ppm) of N orientations on one reference grid: total fields (unwrapped,
        echo-combined; background included) or local fields — any harmonic part inside
        ``mask`` is ignored.
    b0_directions : (N, 3)
        Unit B0 vectors in the reference voxel frame.
    voxel_size : float or 3 floats
        mm.
    mask : ndarray (X, Y, Z) of bool
        Where the susceptibility is estimated (the common brain mask).  The data term uses
        the mask eroded by the smallest radius (V-SHARP's shells).
    model : {'cosmos', 'sti'}
        Isotropic χ (N ≥ 2) or the 6-component tensor (N ≥ 6).
    radii : sequence of float, optional
        SMV radii (mm), any order (default :func:`default_smv_radii`).
    anisotropy_penalty : float
        STI only: weight of ``‖χ − tr(χ)/3·I‖²`` relative to the mean diagonal of the
        normal operator (the isotropic part is never penalised).
    tol, max_iter :
        Stopping rule on the normal-equation residual.
    dtype : float32 or float64
        Working precision.
    progress : callable, optional
        Called as ``progress(iteration, relative_residual)``.

    Returns
    -------
    x : ndarray (X, Y, Z) for COSMOS, (X, Y, Z, 6) for STI
        0 outside ``mask``; the mean is not removed here.
    info : SingleStepInfo

    Examples
    --------
    A field that is harmonic inside the mask (a uniform gradient) gives χ = 0:

    >>> m = np.zeros((24, 24, 24), bool); m[6:18, 6:18, 6:18] = True
    >>> ramp = np.broadcast_to(np.arange(24.0)[:, None, None], m.shape)
    >>> f = np.stack([ramp, -ramp], -1)
    >>> x, info = single_step_inversion(f, [[0, 0, 1], [0, 0.6, 0.8]], voxel_size=2.0,
    ...                                 mask=m, radii=(4.0,))
    >>> float(np.abs(x).max()) < 1e-3
    True
    """
    dt = np.dtype(dtype)
    f = np.asarray(fields)
    if f.ndim != 4:
        raise ValueError(f'fields must have shape (X, Y, Z, N); got {f.shape}')
    b = as_directions(b0_directions, minimum=1, method='single-step inversion')
    if b.shape[0] != f.shape[-1]:
        raise ValueError(f'fields has {f.shape[-1]} orientations but b0_directions has '
                         f'{b.shape[0]}')
    if model not in ('cosmos', 'sti'):
        raise ValueError(f"model must be 'cosmos' or 'sti'; got {model!r}")
    need = 2 if model == 'cosmos' else 6
    if b.shape[0] < need:
        raise ValueError(f'{model} needs at least {need} orientations; got {b.shape[0]}')
    m = as_mask(mask, f.shape[:3])
    if not m.any():
        raise ValueError('mask is empty')
    vs = as_voxel_size(voxel_size)
    radii = tuple(sorted({float(r) for r in (radii or default_smv_radii(vs))}, reverse=True))
    if not (tol > 0 and max_iter >= 1):
        raise ValueError('tol must be > 0 and max_iter >= 1')
    ncomp = 1 if model == 'cosmos' else 6
    pad = math.ceil(radii[0] / float(vs.min()) * (1 - _RTOL)) + 8
    g = fft.MaskBox(m, pad)
    shape = g.pshape
    S = g.take(m, dt)
    # shells: largest radius deepest, each voxel of the data region in exactly one shell
    smv, shells, covered = [], [], None
    Mk = fft.rfftn(S)
    for r in radii:
        Sk, count = _smv(shape, vs, r, dt)
        inner = fft.irfftn(Mk * Sk, shape) > (1.0 - 0.5 / count)
        shell = inner if covered is None else inner & ~covered
        covered = inner if covered is None else covered | inner
        smv.append((1.0 - Sk).astype(dt))
        shells.append(shell.astype(dt))
    del Mk
    if not covered.any():
        raise ValueError(f'the mask is too small for an SMV radius of {radii[-1]} mm')
    weights = [float(s.sum()) / float(covered.sum()) for s in shells]
    products = kspace_products(shape, vs, nyquist='zero', dtype=dt) if ncomp == 6 else None

    def kernel(i):
        if ncomp == 1:
            return dipole_kernel(shape, vs, b[i], nyquist='zero', dtype=dt)[None]
        return sti_rows(shape, vs, b[i], nyquist='zero', dtype=dt, products=products)

    def high_pass(Yk):
        out = None
        for sh, C in zip(shells, smv, strict=True):
            part = sh * fft.irfftn(C * Yk, shape)
            out = part if out is None else out + part
        return out

    def high_pass_adjoint(y):
        acc = None
        for sh, C in zip(shells, smv, strict=True):
            part = C * fft.rfftn(sh * y)
            acc = part if acc is None else acc + part
        return acc

    h = sum(w * C * C for w, C in zip(weights, smv, strict=True))
    diag = [np.zeros(h.shape, dt) for _ in range(ncomp)]
    data = []
    for i in range(b.shape[0]):
        K = kernel(i)
        for c in range(ncomp):
            diag[c] += h * K[c] * K[c]
        data.append(high_pass(fft.rfftn(g.take(f[..., i], dt))))
    scale = float(np.mean([d.mean() for d in diag]))
    lam = float(anisotropy_penalty) * scale if ncomp == 6 else 0.0
    damp = float(damping) * scale
    eps = 1e-2 * max(float(d.max()) for d in diag)
    precond = [(1.0 / (d + eps + lam + damp)).astype(dt) for d in diag]
    del diag

    from qsmprep.numerics.sti import ANISOTROPY_PENALTY

    def penalty(x):
        return np.einsum('ij,j...->i...', ANISOTROPY_PENALTY.astype(dt), x)

    def adjoint(ys):
        acc = [None] * ncomp
        for i, y in enumerate(ys):
            K = kernel(i)
            Hy = high_pass_adjoint(y)
            for c in range(ncomp):
                acc[c] = K[c] * Hy if acc[c] is None else acc[c] + K[c] * Hy
        return np.stack([S * fft.irfftn(a, shape) for a in acc])

    def normal(x):
        X = [fft.rfftn(S * x[c]) for c in range(ncomp)]
        ys = []
        for i in range(b.shape[0]):
            K = kernel(i)
            Y = K[0] * X[0]
            for c in range(1, ncomp):
                Y += K[c] * X[c]
            ys.append(high_pass(Y))
        out = adjoint(ys)
        if lam:
            out += lam * S * penalty(x)
        if damp:
            out += damp * S * x
        return out

    def apply_precond(v):
        return np.stack([S * fft.irfftn(precond[c] * fft.rfftn(S * v[c]), shape)
                         for c in range(ncomp)])

    rhs = adjoint(data)
    del data
    x = np.zeros_like(rhs)
    res = rhs.copy()
    r0 = float(np.linalg.norm(res))
    history = [1.0]
    it = 0
    if r0 > 0:
        z = apply_precond(res)
        p = z.copy()
        rz = float(np.vdot(res, z))
        for it in range(1, int(max_iter) + 1):
            q = normal(p)
            pq = float(np.vdot(p, q))
            if not pq > 0:
                break
            alpha = rz / pq
            x += alpha * p
            res -= alpha * q
            rel = float(np.linalg.norm(res)) / r0
            history.append(rel)
            if progress is not None:
                progress(it, rel)
            if rel <= tol:
                break
            z = apply_precond(res)
            rz_new = float(np.vdot(res, z))
            p = z + (rz_new / rz) * p
            rz = rz_new
    rel = history[-1]
    info = SingleStepInfo(model=model, radii=radii, iterations=it, relative_residual=rel,
                          converged=rel <= tol, tol=float(tol), max_iter=int(max_iter),
                          anisotropy_penalty=float(anisotropy_penalty) if ncomp == 6 else 0.0,
                          residual_history=history)
    out = np.stack([g.unpad(x[c]) for c in range(ncomp)], -1) * m[..., None]
    return (out[..., 0] if ncomp == 1 else out), info


def _demean(x, mask):
    x = np.where(mask, x, 0).astype(x.dtype, copy=False)
    if mask.any():
        x[mask] -= x[mask].mean()
    return x


def solve_multi_orientation(fields, b0_directions, *, voxel_size, mask, reference_b0=None,
                            solver: str = 'single-step', sti_regularization: float | None = None,
                            radii=None, tol: float = 1e-2, max_iter: int = 40,
                            dtype=np.float32, progress=None) -> dict:
    """COSMOS (N ≥ 2) and STI maps (N ≥ 6) from fields on the reference grid.

    Parameters
    ----------
    fields : ndarray (X, Y, Z, N)
        ``solver='single-step'``: total fields (ppm, background included) or local fields;
        ``'closed-form'``: background-removed local fields.
    b0_directions : (N, 3)
        B0 unit vectors in the reference voxel frame.
    voxel_size : float or 3 floats
    mask : (X, Y, Z) bool
        Common mask; every map is 0 outside it.
    reference_b0 : 3 floats, optional
        Defines χ33 (default: the first orientation's B0).
    solver : {'single-step', 'closed-form'}
    sti_regularization : float, optional
        Anisotropy-penalty weight (default 0.1 single-step, 0.3 closed form).
    radii, tol, max_iter, dtype, progress :
        Single-step settings (:func:`single_step_inversion`).

    Returns
    -------
    dict
        ``mask``; ``cosmos`` (N ≥ 2); ``tensor`` (4-D, 6 components), ``chi33``, ``mms``,
        ``msa``, ``pev`` (N ≥ 6); ``report`` (solver settings, iterations, condition
        number, warnings).  χ maps have zero mean inside ``mask``.
    """
    from qsmprep.numerics.sti import STIFit, cosmos, fit_sti, sti_condition_number

    if solver not in SOLVERS:
        raise ValueError(f'solver must be one of {SOLVERS}; got {solver!r}')
    f = np.asarray(fields)
    m = as_mask(mask, f.shape[:3])
    b = as_directions(b0_directions, minimum=1, method='multi-orientation')
    vs = as_voxel_size(voxel_size)
    ref = b[0] if reference_b0 is None else as_direction(reference_b0)
    n = b.shape[0]
    if sti_regularization is None:
        sti_regularization = 0.1 if solver == 'single-step' else 0.3
    out = {'mask': m}
    report = {'solver': solver, 'n_orientations': int(n), 'b0_directions': b.tolist(),
              'reference_b0': [float(v) for v in ref], 'warnings': []}
    f = np.where(m[..., None], f, 0).astype(dtype, copy=False)
    if n >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            if solver == 'single-step':
                chi, info = single_step_inversion(f, b, voxel_size=vs, mask=m, model='cosmos',
                                                  radii=radii, tol=tol, max_iter=max_iter,
                                                  dtype=dtype, progress=progress)
                report['cosmos'] = info.as_dict()
            else:
                chi = cosmos(f, b, voxel_size=vs, mask=m)
        report['warnings'] += [str(w.message) for w in caught]
        out['cosmos'] = _demean(chi, m)
    if n >= 6:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            cond = sti_condition_number(b)
            if solver == 'single-step':
                tensor, info = single_step_inversion(
                    f, b, voxel_size=vs, mask=m, model='sti', radii=radii,
                    anisotropy_penalty=sti_regularization, tol=tol, max_iter=max_iter,
                    dtype=dtype, progress=progress)
                report['sti'] = info.as_dict()
            else:
                tensor = fit_sti(f, b, voxel_size=vs, mask=m, tikhonov=sti_regularization,
                                 regularizer='anisotropy').tensor
        report['warnings'] += [str(w.message) for w in caught]
        report['sti_regularization'] = {'weight': float(sti_regularization),
                                        'penalty': 'anisotropy (deviatoric norm)'}
        report['condition_number'] = {
            'definition': 'cond(A(k)) over unit k directions (qsmprep.numerics.sti)',
            **{k: float(getattr(cond, k)) for k in ('median', 'p5', 'p95', 'minimum',
                                                     'maximum')}}
        tensor = tensor * m[..., None]
        if m.any():
            iso = tensor[..., [0, 3, 5]].mean(-1)[m].mean()  # the undefined mean
            tensor[..., [0, 3, 5]] -= iso
        tensor *= m[..., None]
        fit = STIFit(tensor=tensor, mask=m, reference_direction=ref, condition=cond)
        out.update(tensor=tensor, chi33=fit.chi33() * m, mms=fit.mms * m, msa=fit.msa * m,
                   pev=fit.pev * m[..., None])
    out['report'] = report
    return out
