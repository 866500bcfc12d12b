"""Multi-echo phase → field shift: per-echo normalisation and echo combination.

Input is the spatially unwrapped phase (rad) of every echo, shape ``(X, Y, Z, E)`` with the
echoes on the **last** axis, echo times in s (strictly increasing) and the field strength B0
in T.  Outputs are field shifts in ppm (``docs/physics.md`` §1, §6):

.. math:: δ_t = \\frac{φ_t}{2π \\bar γ B_0 \\mathrm{TE}_t} 10^6 .

Three combinations are offered by :func:`combine_echoes`:

``'average'`` (default)
    Plain mean of the per-echo fields ``δ = (1/E) Σ_t δ_t`` (the method of the qsmprep
    thesis).  Simple, but the noise of the early echoes (``σ_δ,t ∝ 1/TE_t``) is not
    down-weighted, and a TE-independent phase offset ``φ0`` biases it by
    ``mean_t(φ0/TE_t)/(2πγ̄B0)·1e6``.
``'weighted'``
    Inverse-variance weights ``w_t ∝ |S_t|² TE_t²`` (:func:`inverse_variance_weights`).
``'linear-fit'``
    Least-squares line ``φ_t = φ0 + ω TE_t`` (optionally weighted by ``|S_t|²``); the slope
    ``ω`` gives the field and the intercept ``φ0`` absorbs a TE-independent phase offset.
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics._checks import as_mask, as_volume, positive, positive_array
from qsmprep.numerics.constants import ppm_scale

__all__ = ['COMBINATION_METHODS', 'combine_echoes', 'inverse_variance_weights',
           'normalize_echoes']

#: Methods accepted by :func:`combine_echoes`.
COMBINATION_METHODS = ('average', 'weighted', 'linear-fit')


def _echo_times(echo_times, n_echoes: int | None = None) -> np.ndarray:
    te = positive_array(echo_times, 'echo_times', 's')
    if te.size > 1 and np.any(np.diff(te) <= 0):
        raise ValueError(f'echo_times must be strictly increasing (in s); got {te.tolist()}')
    if n_echoes is not None and te.size != n_echoes:
        raise ValueError(
            f'the data have {n_echoes} echoes on the last axis but {te.size} echo_times were '
            'given; pass one echo time (s) per echo, in the order of the last axis'
        )
    if np.any(te > 1.0):
        raise ValueError(
            f'echo_times look like milliseconds ({te.tolist()}); BIDS EchoTime is in seconds')
    return te


def _phase(unwrapped_phase):
    phi = as_volume(unwrapped_phase, 'unwrapped_phase', ndim=4)
    if phi.shape[-1] < 1:
        raise ValueError('unwrapped_phase has no echoes on its last axis')
    return phi


def _magnitude(magnitude, shape, name='magnitude'):
    mag = as_volume(magnitude, name, ndim=4)
    if mag.shape != tuple(shape):
        raise ValueError(
            f'{name} has shape {mag.shape}; expected {tuple(shape)} (same as unwrapped_phase)')
    if np.any(mag < 0):
        raise ValueError(f'{name} must be non-negative (the modulus |S_t| of every echo)')
    return mag


def _echo_weights(mag, mask):
    """One magnitude per echo: the RMS over the mask (or over voxels with signal), shape (E,)."""
    region = mask if mask is not None else np.any(mag > 0, axis=-1)
    if not np.any(region):
        return np.zeros(mag.shape[-1])
    return np.sqrt(np.mean(np.square(mag[region], dtype=np.float64), axis=0))


def normalize_echoes(unwrapped_phase, echo_times, field_strength):
    """Per-echo field shift (ppm) from unwrapped phase (rad).

    Parameters
    ----------
    unwrapped_phase : ndarray, shape (X, Y, Z, E)
        Spatially unwrapped phase of each echo in rad, echoes on the last axis.
    echo_times : sequence of E floats
        Echo times in s, strictly increasing.
    field_strength : float
        B0 in T.

    Returns
    -------
    ndarray, shape (X, Y, Z, E)
        ``δ_t`` in ppm, same floating dtype as the input.

    Notes
    -----
    ``δ_t = φ_t / (2π γ̄ B0 TE_t) · 1e6`` with :data:`qsmprep.numerics.constants.GAMMA_BAR`.

    Examples
    --------
    >>> te = np.array([0.01, 0.02])
    >>> phi = np.ones((1, 1, 1, 2)) * ppm_scale(te, 3.0)  # 1 ppm at both echoes
    >>> normalize_echoes(phi, te, 3.0).ravel().round(12).tolist()
    [1.0, 1.0]
    """
    phi = _phase(unwrapped_phase)
    te = _echo_times(echo_times, phi.shape[-1])
    scale = ppm_scale(te, positive(field_strength, 'field_strength', 'T'))
    return phi / scale.astype(phi.dtype)


def inverse_variance_weights(magnitude, echo_times):
    """Normalised inverse-variance echo weights ``w_t = |S_t|² TE_t² / Σ_s |S_s|² TE_s²``.

    Parameters
    ----------
    magnitude : ndarray, shape (..., E)
        Magnitude ``|S_t|`` of each echo (any units), echoes on the last axis.
    echo_times : sequence of E floats
        Echo times in s.

    Returns
    -------
    ndarray, shape (..., E)
        Weights summing to 1 over the echoes; 0 for every echo of a voxel whose magnitude is
        0 at all echoes.

    Notes
    -----
    With phase noise ``σ_φ,t ≈ σ/|S_t|`` (high-SNR limit of complex Gaussian noise of standard
    deviation σ), the per-echo field ``δ_t = φ_t/(2πγ̄B0 TE_t)`` has variance
    ``σ² / (|S_t|² (2πγ̄B0 TE_t)²)``.  For independent, unbiased ``δ_t`` the weights
    proportional to the inverse variances, ``|S_t|² TE_t²``, give the minimum-variance
    unbiased linear combination (Gauss–Markov; for Gaussian noise also the maximum-likelihood
    estimate), with variance ``σ² / ((2πγ̄B0)² Σ_t |S_t|² TE_t²)``.  The combination equals
    the magnitude-weighted zero-intercept line fit ``ω = Σ|S_t|² TE_t φ_t / Σ|S_t|² TE_t²``
    (QSM.jl ``multi_echo_linear_fit`` with ``W = |S|``).

    References
    ----------
    Robinson SD et al. NMR Biomed 2017;30:e3601 (phase combination, appendix A2).

    Examples
    --------
    >>> inverse_variance_weights(np.ones(2), [0.01, 0.02]).tolist()
    [0.2, 0.8]
    """
    mag = np.asarray(magnitude)
    if mag.ndim < 1 or not np.issubdtype(mag.dtype, np.number) or np.iscomplexobj(mag):
        raise TypeError(f'magnitude must be a real array with echoes on the last axis; '
                        f'got dtype {mag.dtype}, shape {mag.shape}')
    if not np.issubdtype(mag.dtype, np.floating):
        mag = mag.astype(np.float64)
    if not np.all(np.isfinite(mag)) or np.any(mag < 0):
        raise ValueError('magnitude must be finite and non-negative')
    te = _echo_times(echo_times, mag.shape[-1]).astype(mag.dtype)
    w = mag * mag * (te * te)
    total = w.sum(axis=-1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def _masked(x, mask):
    return x if mask is None else np.where(mask, x, x.dtype.type(0))


def combine_echoes(unwrapped_phase, echo_times, field_strength, *, method: str = 'average',
                   magnitude=None, mask=None, weights: str = 'voxel',
                   return_intercept: bool = False):
    """Combine multi-echo unwrapped phase into one field shift map (ppm).

    Parameters
    ----------
    unwrapped_phase : ndarray, shape (X, Y, Z, E)
        Spatially unwrapped phase of each echo (rad), echoes on the last axis.
    echo_times : sequence of E floats
        Echo times in s, positive and strictly increasing.
    field_strength : float
        B0 in T.
    method : {'average', 'weighted', 'linear-fit'}
        ``'average'`` (default): mean of the per-echo fields.  ``'weighted'``: inverse-variance
        weights ``|S_t|² TE_t²`` (needs ``magnitude``).  ``'linear-fit'``: least-squares fit
        ``φ_t = φ0 + ω TE_t`` with intercept, weighted by ``|S_t|²`` when ``magnitude`` is
        given, unweighted otherwise (needs at least 2 echoes).
    magnitude : ndarray, shape (X, Y, Z, E), optional
        Echo magnitudes ``|S_t|``.  Required by ``'weighted'``, optional weights for
        ``'linear-fit'``, not used by ``'average'``.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Output (and intercept) set to 0 outside the mask.
    weights : {'voxel', 'echo'}
        How ``magnitude`` weights the echoes: ``'voxel'`` (default) with each voxel's own
        ``|S_t|``; ``'echo'`` with one weight per echo, the RMS of ``|S_t|`` over the mask
        (over voxels with signal when no mask is given), the same in every voxel.  Use
        ``'echo'`` after Laplacian unwrapping: each echo is then known only up to its own
        harmonic function ``h_t``, and only spatially constant coefficients keep
        ``Σ_t c_t h_t`` harmonic, i.e. removable by background-field removal (Notes).
    return_intercept : bool
        Only for ``'linear-fit'``: also return the fitted intercept ``φ0`` (rad).

    Returns
    -------
    field : ndarray, shape (X, Y, Z)
        Combined field shift in ppm (dtype of the input phase).
    intercept : ndarray, shape (X, Y, Z)
        Only with ``return_intercept=True``: ``φ0`` in rad.

    Notes
    -----
    With ``s_t = 2π γ̄ B0 TE_t · 1e-6`` (rad per ppm, :func:`~qsmprep.numerics.constants.ppm_scale`)
    and ``δ_t = φ_t/s_t``:

    * average: ``δ = (1/E) Σ_t δ_t``.  For ``φ_t = φ0 + ω TE_t`` it returns
      ``ω/(2πγ̄B0)·1e6 + mean_t(φ0/s_t)``: a TE-independent offset ``φ0`` biases it.
    * weighted: ``δ = Σ_t w_t δ_t`` with ``w_t ∝ |S_t|² TE_t²``, the minimum-variance unbiased
      combination for independent phase noise ``σ/|S_t|`` (:func:`inverse_variance_weights`).
      Voxels with zero magnitude at every echo get 0.
    * linear-fit: with weights ``v_t`` (``|S_t|²`` or 1), ``T̄ = Σv_t TE_t/Σv_t``,
      ``ω = Σ v_t (TE_t − T̄) φ_t / Σ v_t (TE_t − T̄)²``, ``φ0 = Σ v_t (φ_t − ω TE_t)/Σ v_t``,
      ``δ = ω/(2πγ̄B0)·1e6``.  Unbiased for any ``φ0``, at the price of a larger variance than
      the zero-intercept estimators.  Voxels whose weights leave fewer than two echoes get 0.

    Every method is linear in the phases: ``δ(r) = Σ_t c_t(r) φ_t(r)``.  Laplacian unwrapping
    returns ``φ_t + h_t`` with ``∇²h_t = 0`` in the mask, a different ``h_t`` per echo.  With
    coefficients ``c_t`` that vary in space (``weights='voxel'`` with magnitudes), ``Σ c_t h_t``
    is not harmonic and survives SHARP/V-SHARP as an error in the local field; with
    ``weights='echo'`` (or without magnitudes) it stays harmonic and is removed with the
    background.  On the simulated ``demo`` dataset voxel-wise ``|S|²`` weights of the linear fit
    left a non-harmonic error of ≈ 0.01 ppm (twice the local field) in half of the
    orientations.

    References
    ----------
    QSM.jl ``src/utils/multi_echo.jl`` (``multi_echo_average``, ``multi_echo_linear_fit``);
    Robinson SD et al. NMR Biomed 2017;30:e3601.

    Examples
    --------
    >>> te = np.array([0.005, 0.010, 0.015])
    >>> phi = 0.3 + ppm_scale(te, 3.0) * np.full((2, 2, 2, 1), 0.05)  # 0.05 ppm + 0.3 rad
    >>> f, phi0 = combine_echoes(phi, te, 3.0, method='linear-fit', return_intercept=True)
    >>> round(float(f[0, 0, 0]), 12), round(float(phi0[0, 0, 0]), 12)
    (0.05, 0.3)
    >>> bool(combine_echoes(phi, te, 3.0)[0, 0, 0] > 0.05)  # averaging is biased by φ0
    True
    """
    if method not in COMBINATION_METHODS:
        raise ValueError(f'method must be one of {COMBINATION_METHODS}; got {method!r}')
    if return_intercept and method != 'linear-fit':
        raise ValueError(f"only method='linear-fit' estimates an intercept; got {method!r}")
    phi = _phase(unwrapped_phase)
    n_echoes = phi.shape[-1]
    te = _echo_times(echo_times, n_echoes)
    b0 = positive(field_strength, 'field_strength', 'T')
    m = None if mask is None else as_mask(mask, phi.shape[:3])
    mag = None if magnitude is None else _magnitude(magnitude, phi.shape)
    if weights not in ('voxel', 'echo'):
        raise ValueError(f"weights must be 'voxel' or 'echo'; got {weights!r}")
    # spatially uniform weights (one per echo): every method is then a fixed linear
    # combination of the echoes, applied with one matrix product
    uniform = None if mag is None else (_echo_weights(mag, m) if weights == 'echo' else None)
    dt = phi.dtype
    scale = ppm_scale(te, b0).astype(dt)  # rad per ppm at each echo

    if method == 'average':
        field = (phi / scale).mean(axis=-1)
        return _masked(field, m)

    if method == 'weighted':
        if mag is None:
            raise ValueError("method='weighted' needs the echo magnitudes: pass magnitude=")
        if uniform is not None:
            w = uniform ** 2 * te ** 2
            w = w / w.sum() if w.sum() > 0 else w
            return _masked(phi @ (w / scale).astype(dt), m)
        w = inverse_variance_weights(mag.astype(dt, copy=False), te)
        field = np.einsum('...t,...t->...', w, phi / scale)
        return _masked(field, m)

    # linear fit with intercept
    if n_echoes < 2:
        raise ValueError(
            "method='linear-fit' needs at least 2 echoes to fit a slope and an intercept; got 1 "
            "(use method='average' or 'weighted' for single-echo data)")
    tt = te.astype(dt)
    rad_per_ppm_per_s = dt.type(ppm_scale(1.0, b0))
    if mag is None or uniform is not None:
        v = np.ones(n_echoes) if mag is None else uniform ** 2
        if np.count_nonzero(v) < 2:  # no signal: nothing to fit
            v = np.zeros(n_echoes)
            c = d = v
        else:
            te64 = te.astype(np.float64)
            tbar = float(v @ te64 / v.sum())
            tc = te64 - tbar
            c = v * tc / float(v @ (tc * tc))       # ω = Σ c_t φ_t
            d = v / v.sum() - c * tbar              # φ0 = Σ d_t φ_t
        omega = phi @ c.astype(dt)
        phi0 = phi @ d.astype(dt)
    else:
        v = mag.astype(dt, copy=False) ** 2
        sv = v.sum(axis=-1)
        safe = np.where(sv > 0, sv, 1)
        tbar = (v @ tt) / safe
        tc = tt - tbar[..., None]
        vtc = v * tc
        den = np.einsum('...t,...t->...', vtc, tc)
        num = np.einsum('...t,...t->...', vtc, phi)
        # need two distinct echo times with non-zero weight: den > 0 (relative to TE spread)
        ok = (sv > 0) & (den > sv * 1e-12 * float(np.ptp(te)) ** 2)
        omega = np.divide(num, den, out=np.zeros_like(num), where=ok)
        phi0 = np.where(ok, (np.einsum('...t,...t->...', v, phi) - omega * (v @ tt)) / safe, 0)
        phi0 = phi0.astype(dt, copy=False)
    field = _masked(omega / rad_per_ppm_per_s, m)
    if return_intercept:
        return field, _masked(phi0, m)
    return field
