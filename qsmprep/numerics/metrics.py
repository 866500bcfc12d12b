"""Evaluation metrics for susceptibility maps against a reference (``x`` = recon, ``y`` = truth).

Two families of definitions are in use and they give different numbers:

* **2016 QSM reconstruction challenge** (Langkammer 2018): :func:`nrmse` (default, no
  demeaning), :func:`hfen` (``variant='2016'``) and :func:`ssim_2016` (images rescaled to
  0-255).
* **QSM Challenge 2.0 / QSM-CI** (Bilgic 2021, Milovic 2025): :func:`nrmse` with
  ``demean=True``, :func:`nrmse_detrended`, :func:`hfen` (``variant='qsmci'``),
  :func:`xsim` (SSIM on native ppm; :func:`xsim_qsmci` is QSM-CI's own port, which gives
  other numbers), :func:`pearson`, and the regional (ROI-mean) metrics
  :func:`regional_means`, :func:`regional_regression`, :func:`dgm_slope_error`.

The two structural-similarity indices are **not comparable**: SSIM_2016 of a typical
reconstruction is ≈ 0.85 while its XSIM is ≈ 0.45.  Always report which one was used and
never compare a value of one with a value of the other.

All metrics are computed in float64 whatever the input dtype (they are scalars; float64
keeps them equal to the MATLAB/QSM-CI references to rounding).  Inputs are validated: equal
3-D shapes, finite values, a non-empty mask and a non-zero reference norm.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_mask, as_volume

__all__ = ['DGM_LABELS', 'RegionalRegression', 'dgm_slope_error', 'gaussian_window_1d',
           'hfen', 'hfen_kernel', 'nrmse', 'nrmse_detrended', 'pearson', 'regional_means',
           'regional_regression', 'ssim_2016', 'xsim', 'xsim_qsmci']

#: Deep-grey-matter labels of the QSM Challenge 2.0 / QSM-CI segmentation:
#: 1 caudate, 2 globus pallidus, 3 putamen, 4 red nucleus, 5 dentate nucleus,
#: 6 substantia nigra.
DGM_LABELS = (1, 2, 3, 4, 5, 6)


# --------------------------------------------------------------------------- validation

def _volume(x, name):
    return as_volume(x, name).astype(np.float64, copy=False)


def _pair(x, y, *, x_name='x', y_name='y'):
    xa = _volume(x, x_name)
    ya = _volume(y, y_name)
    if xa.shape != ya.shape:
        raise ValueError(f'{x_name} and {y_name} must have the same shape; got {xa.shape} '
                         f'and {ya.shape} (resample them onto one grid first)')
    return xa, ya


def _nonempty_mask(mask, shape, name='mask'):
    m = as_mask(mask, shape, name)
    if not m.any():
        raise ValueError(f'{name} is empty (no voxel selected); a metric needs at least one '
                         'voxel')
    return m


def _ratio_percent(err_norm, ref_norm, what):
    if not ref_norm > 0:
        raise ValueError(f'the reference {what} has zero norm, so a relative error is '
                         'undefined; check that the reference is non-zero inside the mask')
    return float(100.0 * err_norm / ref_norm)


# --------------------------------------------------------------------------- NRMSE family

def nrmse(x, y, mask=None, *, demean: bool = False) -> float:
    """Normalised root-mean-square error (%) of ``x`` against the reference ``y``.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference (same shape, finite), e.g. χ in ppm.
    mask : array_like of bool, optional
        Voxels to evaluate (default: all).  Voxels outside are ignored, which equals the
        2016 challenge practice of zeroing the images outside the brain mask.
    demean : bool, default False
        ``False``: the 2016-challenge definition (``compute_rmse.m``), no demeaning.
        ``True``: the QSM Challenge 2.0 / QSM-CI definition, both images demeaned over the
        mask first (insensitive to the arbitrary χ offset of QSM).

    Returns
    -------
    float
        NRMSE in percent (0 for a perfect reconstruction, 100 for ``x = 0`` when not
        demeaned).

    Notes
    -----
    ``NRMSE = 100 · ‖x − y‖₂ / ‖y‖₂`` over the mask; with ``demean=True``
    ``NRMSE = 100 · ‖(x − x̄) − (y − ȳ)‖₂ / ‖y − ȳ‖₂`` with means over the mask.

    References
    ----------
    Langkammer C, et al. Quantitative susceptibility mapping: report from the 2016
    reconstruction challenge. Magn Reson Med 2018;79:1661-1673.
    QSM Challenge 2.0 Organization Committee (Bilgic B, et al.). QSM reconstruction
    challenge 2.0: design and report of results. Magn Reson Med 2021;86:1241-1255.

    Examples
    --------
    >>> y = np.linspace(0.1, 1.0, 8 * 8 * 8).reshape(8, 8, 8)
    >>> round(nrmse(1.1 * y, y), 10)
    10.0
    >>> nrmse(np.zeros_like(y), y)
    100.0
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(mask, xa.shape)
    xv, yv = xa[m], ya[m]
    if demean:
        xv = xv - xv.mean()
        yv = yv - yv.mean()
    what = 'image (demeaned over the mask)' if demean else 'image'
    return _ratio_percent(np.linalg.norm(xv - yv), np.linalg.norm(yv), what)


def nrmse_detrended(x, y, mask=None) -> float:
    """Detrended NRMSE (%), QSM Challenge 2.0 "dNRMSE": error left after a linear recalibration.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference (same shape, finite).
    mask : array_like of bool, optional
        Evaluation region (default: all voxels).  The Challenge 2.0 variants use the brain
        mask, the tissue labels 7-9 ("Tissue"), the dilated vessel label 11 ("Blood") or
        the DGM labels 1-6 ("DGM", see :data:`DGM_LABELS`).

    Returns
    -------
    float
        dNRMSE in percent; ``inf`` when ``x`` is constant over the mask (no linear trend to
        invert; QSM-CI returns the demeaned NRMSE in that case instead).

    Notes
    -----
    Least squares over the mask, ``x ≈ a·y + b``, with ``a = Σ x_c y_c / Σ y_c²`` and
    ``b = x̄ − a ȳ`` (``_c``: demeaned over the mask).  The recalibrated image
    ``x' = (x − b)/a`` then has mean ``ȳ`` exactly, so it is compared with the reference
    after removing that common mean:

    ``dNRMSE = 100 · ‖(x' − ȳ) − y_c‖ / ‖y_c‖ = 100 · ‖x_c/a − y_c‖ / ‖y_c‖``

    (identical to ``100·‖x' − y‖/‖y_c‖``, and to QSM-CI's ``nrmse_challenge``, which fits
    the demeaned images).  Comparing ``x'`` itself with the demeaned ``y_c`` would leave the
    offset ``ȳ`` in the error and break the defining identity
    ``dNRMSE(a·y + b, y) = 0`` for every ``a ≠ 0`` and ``b``, which holds here to rounding.

    Expanding the norm gives ``dNRMSE = 100·sqrt(1/ρ² − 1)`` with ``ρ`` the Pearson
    correlation of ``x`` and ``y`` over the mask (:func:`pearson`): the metric is a
    monotone function of the correlation alone.

    References
    ----------
    QSM Challenge 2.0 Organization Committee (Bilgic B, et al.). QSM reconstruction
    challenge 2.0: design and report of results. Magn Reson Med 2021;86:1241-1255.

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(size=(8, 8, 8))
    >>> bool(nrmse_detrended(0.7 * y - 0.02, y) < 1e-10)
    True
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(mask, xa.shape)
    xv, yv = xa[m], ya[m]
    yc = yv - yv.mean()
    ref = np.linalg.norm(yc)
    if not ref > 0:
        raise ValueError('the reference is constant over the mask (zero norm after '
                         'demeaning), so the detrended NRMSE is undefined')
    if np.all(xv == xv[0]):
        return float('inf')
    xc = xv - xv.mean()
    a = float(np.dot(xc, yc) / np.dot(yc, yc))
    if a == 0.0:
        return float('inf')
    return _ratio_percent(np.linalg.norm(xc / a - yc), ref, 'image (demeaned over the mask)')


def pearson(x, y, mask=None) -> float:
    """Pearson correlation coefficient of ``x`` and ``y`` over the mask.

    Notes
    -----
    ``ρ = Σ x_c y_c / (‖x_c‖ ‖y_c‖)`` with ``_c``: demeaned over the mask.

    Raises
    ------
    ValueError
        If either image is constant over the mask (correlation undefined).

    Examples
    --------
    >>> y = np.arange(27.0).reshape(3, 3, 3)
    >>> round(pearson(-2.0 * y + 1.0, y), 12)
    -1.0
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(mask, xa.shape)
    xc = xa[m] - xa[m].mean()
    yc = ya[m] - ya[m].mean()
    nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
    if not (nx > 0 and ny > 0):
        raise ValueError('pearson needs both images to vary over the mask; one is constant')
    return float(np.clip(np.dot(xc, yc) / (nx * ny), -1.0, 1.0))


# --------------------------------------------------------------------------- HFEN

def hfen_kernel(size: int = 15, sigma: float = 1.5) -> np.ndarray:
    """Laplacian-of-Gaussian kernel of the 2016 challenge ``compute_hfen.m``.

    Parameters
    ----------
    size : int, default 15
        Odd edge length of the cubic kernel (voxels).
    sigma : float, default 1.5
        Gaussian width in voxels.

    Returns
    -------
    ndarray, shape ``(size, size, size)``, float64
        Kernel with zero sum (to rounding).

    Notes
    -----
    With ``r² = x² + y² + z²`` on the integer grid ``−(size−1)/2 … (size−1)/2``:
    ``h = exp(−r²/2σ²) / Σ exp(−r²/2σ²)``, ``H = (r²/σ⁴ − 3/σ²)·h``, then
    ``H ← H − mean(H)`` so that the filter annihilates constants.

    Examples
    --------
    >>> H = hfen_kernel()
    >>> H.shape, bool(abs(H.sum()) < 1e-15)
    ((15, 15, 15), True)
    """
    if int(size) != size or size < 3 or size % 2 != 1:
        raise ValueError(f'size must be an odd integer >= 3; got {size!r}')
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f'sigma must be positive and finite (voxels); got {sigma!r}')
    half = (int(size) - 1) // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    x, y, z = np.meshgrid(ax, ax, ax, indexing='ij')
    r2 = x * x + y * y + z * z
    h = np.exp(-r2 / (2.0 * sigma * sigma))
    h /= h.sum()
    H = (r2 / sigma**4 - 3.0 / sigma**2) * h
    H -= H.mean()
    return H


def _convolve_same_zero(x, kernel):
    """``x ⊛ kernel`` with zero boundary and 'same' output (= ``ndimage.convolve``, constant 0).

    Done by FFT on a grid padded by the kernel half-width, so nothing wraps around.
    """
    half = tuple((k - 1) // 2 for k in kernel.shape)
    pshape = fft.fast_shape(x.shape, half)
    kpad = np.zeros(pshape, dtype=np.float64)
    kpad[tuple(slice(0, k) for k in kernel.shape)] = kernel
    kpad = np.roll(kpad, tuple(-h for h in half), axis=(0, 1, 2))
    out = fft.irfftn(fft.rfftn(fft.pad(x, pshape)) * fft.rfftn(kpad), pshape)
    return np.ascontiguousarray(fft.crop(out, x.shape))


def hfen(x, y, mask=None, *, variant: str = '2016') -> float:
    """High-frequency error norm (%): NRMSE of Laplacian-of-Gaussian filtered images.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference (same shape, finite).
    mask : array_like of bool, optional
        ``variant='2016'``: both images are zeroed outside the mask before filtering (the
        challenge evaluated masked images) and the norms run over the whole filtered volume.
        ``variant='qsmci'``: the unmasked images are filtered and the norms run over the
        mask.  Default: all voxels.
    variant : {'2016', 'qsmci'}
        ``'2016'``: ``compute_hfen.m`` -- the 15³ kernel of :func:`hfen_kernel` (σ = 1.5
        voxels), 'same' convolution with a zero boundary (``imfilter``; here by FFT, equal to
        ``scipy.ndimage.convolve(mode='constant')`` to rounding).
        ``'qsmci'``: QSM-CI ``eval/qsm_eval.py`` -- ``scipy.ndimage.gaussian_laplace``
        (σ = 1.5, ``truncate=5``: 17-voxel support, reflecting boundary).

    Returns
    -------
    float
        HFEN in percent.

    Notes
    -----
    ``HFEN = 100 · ‖LoG(x) − LoG(y)‖₂ / ‖LoG(y)‖₂`` (no demeaning; the LoG kernel has zero
    sum so constant offsets barely matter).  The two variants differ in kernel support,
    boundary handling and where the mask enters; report which one is used.

    The LoG is a band-pass, not a high-pass: its response ``|k|² exp(−σ²|k|²/2)`` peaks at
    a wavelength ``2πσ/√2 ≈ 6.7`` voxels and almost vanishes at the Nyquist frequency, so
    voxel-scale (checkerboard) noise contributes little to HFEN.

    References
    ----------
    Langkammer C, et al. Magn Reson Med 2018;79:1661-1673 (2016 challenge, HFEN).
    Ravishankar S, Bresler Y. MR image reconstruction from highly undersampled k-space data
    by dictionary learning. IEEE Trans Med Imaging 2011;30:1028-1041 (HFEN).

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(size=(12, 12, 12))
    >>> hfen(y, y), hfen(y, y, variant='qsmci')
    (0.0, 0.0)
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(mask, xa.shape)
    if variant == '2016':
        if mask is not None:
            xa = np.where(m, xa, 0.0)
            ya = np.where(m, ya, 0.0)
        H = hfen_kernel()
        lx = _convolve_same_zero(xa, H)
        ly = _convolve_same_zero(ya, H)
        return _ratio_percent(np.linalg.norm(lx - ly), np.linalg.norm(ly),
                              'Laplacian-of-Gaussian image')
    if variant == 'qsmci':
        lx = ndimage.gaussian_laplace(xa, sigma=1.5, truncate=5.0)
        ly = ndimage.gaussian_laplace(ya, sigma=1.5, truncate=5.0)
        return _ratio_percent(np.linalg.norm(lx[m] - ly[m]), np.linalg.norm(ly[m]),
                              'Laplacian-of-Gaussian image (inside the mask)')
    raise ValueError(f"variant must be '2016' or 'qsmci'; got {variant!r}")


# --------------------------------------------------------------------------- SSIM family

def gaussian_window_1d(sigma: float = 1.5, radius: int = 2) -> np.ndarray:
    """Normalised 1-D Gaussian ``exp(−t²/2σ²)``, ``t = −radius … radius``.

    The 3-D SSIM windows are outer products of this vector: it equals the normalised
    ``gkernel(1.5, [2 2 2])`` of ``compute_ssim.m`` (radius 2, 5³) and the
    ``imgaussfilt3(·, 1.5, 'FilterSize', 7)`` kernel of ``compute_xsim.m`` (radius 3, 7³).

    >>> w = gaussian_window_1d(1.5, 2)
    >>> w.shape, round(float(w.sum()), 12)
    ((5,), 1.0)
    """
    t = np.arange(-int(radius), int(radius) + 1, dtype=np.float64)
    w = np.exp(-t * t / (2.0 * sigma * sigma))
    return w / w.sum()


def _smooth(x, w, mode):
    for axis in range(x.ndim):
        x = ndimage.correlate1d(x, w, axis=axis, mode=mode, cval=0.0)
    return x


def _ssim_map(a, b, w, c1, c2, mode):
    mu_a = _smooth(a, w, mode)
    mu_b = _smooth(b, w, mode)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _smooth(a * a, w, mode) - mu_aa
    var_b = _smooth(b * b, w, mode) - mu_bb
    cov = _smooth(a * b, w, mode) - mu_ab
    return ((2.0 * mu_ab + c1) * (2.0 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))


def ssim_2016(x, y, mask=None, *, full: bool = False):
    """SSIM_2016: the 2016 challenge SSIM on images rescaled to 0-255 (``compute_ssim.m``).

    **Not comparable with** :func:`xsim` (typical values ≈ 0.85 vs ≈ 0.45); always report
    which SSIM was used.  Prefer XSIM for new evaluations (the rescaling lets extreme
    artefacts compress the dynamic range and inflate SSIM_2016).

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction (first image) and reference, in ppm, zero outside the brain.
    mask : array_like of bool, optional
        If given, both images are first zeroed outside the mask and the SSIM map is averaged
        over the mask.  If omitted (exactly ``compute_ssim.m``), the average runs over the
        non-zero voxels of the rescaled first image (note: a voxel equal to the joint minimum
        becomes 0 and drops out of that set, as in the original).
    full : bool, default False
        Also return the SSIM map.

    Returns
    -------
    float, or (float, ndarray) when ``full``
        Mean SSIM (1 for identical images).

    Notes
    -----
    ``m = min(min x, min y)`` is subtracted from the **non-zero** voxels of both images,
    both are scaled by ``255 / max`` (joint maximum), then with a 5³ Gaussian window
    (σ = 1.5 voxels, normalised), 'same' convolution with zero boundary (``convn``), L = 255,
    ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``:

    ``SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``.

    References
    ----------
    Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error
    visibility to structural similarity. IEEE Trans Image Process 2004;13:600-612.
    Langkammer C, et al. Magn Reson Med 2018;79:1661-1673 (2016 challenge).

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(size=(10, 10, 10))
    >>> ssim_2016(y, y)
    1.0
    """
    xa, ya = _pair(x, y)
    if mask is not None:
        m = _nonempty_mask(mask, xa.shape)
        xa = np.where(m, xa, 0.0)
        ya = np.where(m, ya, 0.0)
    lo = min(xa.min(), ya.min())
    xa = np.where(xa != 0, xa - lo, 0.0)
    ya = np.where(ya != 0, ya - lo, 0.0)
    hi = max(xa.max(), ya.max())
    if not hi > 0:
        raise ValueError('ssim_2016 needs images with a non-zero dynamic range; after the '
                         'joint minimum is removed both are zero everywhere')
    xa *= 255.0 / hi
    ya *= 255.0 / hi
    if mask is None:
        m = xa != 0
        if not m.any():
            raise ValueError('ssim_2016 averages over the non-zero voxels of the rescaled '
                             'first image, and there are none; pass a mask')
    L = 255.0
    smap = _ssim_map(xa, ya, gaussian_window_1d(1.5, 2), (0.01 * L) ** 2, (0.03 * L) ** 2,
                     'constant')
    value = float(smap[m].mean())
    return (value, smap) if full else value


def xsim(x, y, mask=None, *, full: bool = False):
    """XSIM: SSIM optimised for QSM on native ppm (Milovic, ``compute_xsim.m`` v2.0, 2022).

    **Not comparable with** :func:`ssim_2016` (typical values ≈ 0.45 vs ≈ 0.85); always
    report which SSIM was used.  This is the ``imgaussfilt3`` (Gaussian, 7³) version of the
    reference MATLAB code; the QSM-CI port uses a 5³ uniform window and gives other numbers.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference in ppm (no rescaling is applied).
    mask : array_like of bool, optional
        Voxels over which the SSIM map is averaged (default: ``y != 0``).  The images are
        filtered as given (not masked).
    full : bool, default False
        Also return the SSIM map.

    Returns
    -------
    float, or (float, ndarray) when ``full``
        Mean XSIM (1 for identical images).

    Notes
    -----
    SSIM formula (see :func:`ssim_2016`) with L = 1 ppm, ``K = (0.01, 0.001)``
    (``C1 = 1e-4``, ``C2 = 1e-6``; the small K2 "promotes detection of streaking
    artifacts"), local statistics from a normalised Gaussian of σ = 1.5 voxels on a 7³
    support (``imgaussfilt3(·, 1.5, 'FilterSize', 7)``), and replicated borders, the
    default ``'Padding'`` of ``imgaussfilt3`` (``mode='nearest'`` here).

    References
    ----------
    Milovic C, Tejos C, Silva J, Shmueli K, Irarrazaval P. XSIM: a structural similarity
    index measure optimized for MRI QSM. Magn Reson Med 2025; doi:10.1002/mrm.30271.
    (Proc ISMRM 2022, abstract 2367.)

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(scale=0.05, size=(10, 10, 10))
    >>> xsim(y, y)
    1.0
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(ya != 0 if mask is None else mask, xa.shape,
                       'mask' if mask is not None else 'mask (default: y != 0)')
    smap = _ssim_map(xa, ya, gaussian_window_1d(1.5, 3), 0.01**2, 0.001**2, 'nearest')
    value = float(smap[m].mean())
    return (value, smap) if full else value


# --------------------------------------------------------------------------- regional metrics

def _labels(labels, shape):
    lab = np.asarray(labels)
    if lab.shape != tuple(shape):
        raise ValueError(f'labels has shape {lab.shape}; expected {tuple(shape)} (same grid '
                         'as the images)')
    if np.issubdtype(lab.dtype, np.integer):
        return lab
    if lab.dtype == bool or not np.issubdtype(lab.dtype, np.floating):
        raise TypeError(f'labels must be an integer array; got dtype {lab.dtype}')
    if not np.all(np.isfinite(lab)) or np.any(lab != np.rint(lab)):
        raise ValueError('labels must hold whole numbers (a segmentation); got non-integer '
                         'or non-finite values')
    return lab.astype(np.int64)


def _label_ids(lab, label_ids):
    if label_ids is None:
        ids = [int(v) for v in np.unique(lab) if v != 0]
        if not ids:
            raise ValueError('labels contains no non-zero label')
        return ids
    ids = [int(v) for v in np.atleast_1d(label_ids)]
    if not ids:
        raise ValueError('label_ids is empty')
    return ids


def regional_means(x, labels, *, label_ids=None, mask=None) -> dict[int, float]:
    """Mean of ``x`` in each labelled region.

    Parameters
    ----------
    x : array_like, 3-D
        Image (e.g. χ in ppm).
    labels : array_like of int, 3-D
        Segmentation on the same grid (0 = background).
    label_ids : sequence of int, optional
        Labels to report (default: every non-zero label present).
    mask : array_like of bool, optional
        Restrict every region to this mask.

    Returns
    -------
    dict
        ``{label: mean}``; ``nan`` for a requested label with no voxel.

    Examples
    --------
    >>> lab = np.zeros((4, 4, 4), int); lab[:2] = 1; lab[2:] = 2
    >>> x = np.where(lab == 1, 0.1, -0.05)
    >>> {k: round(v, 6) for k, v in regional_means(x, lab).items()}
    {1: 0.1, 2: -0.05}
    """
    xa = _volume(x, 'x')
    lab = _labels(labels, xa.shape)
    sel = as_mask(mask, xa.shape)
    out = {}
    for i in _label_ids(lab, label_ids):
        r = (lab == i) & sel
        out[i] = float(xa[r].mean()) if r.any() else float('nan')
    return out


class RegionalRegression(NamedTuple):
    """Least-squares line ``recon_mean = slope · reference_mean + intercept`` over ROIs."""

    slope: float
    intercept: float
    label_ids: tuple[int, ...]
    reference_means: np.ndarray
    recon_means: np.ndarray

    @property
    def slope_error(self) -> float:
        """``|1 − slope|`` (Challenge 2.0 "DGM slope error" when over :data:`DGM_LABELS`)."""
        return abs(1.0 - self.slope)


def regional_regression(x, y, labels, label_ids=None, *, mask=None) -> RegionalRegression:
    """Regress the ROI means of the reconstruction on those of the reference.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference (same shape).
    labels : array_like of int, 3-D
        Segmentation on the same grid.
    label_ids : sequence of int, optional
        Regions used (default: every non-zero label).  Labels with no voxel are skipped.
    mask : array_like of bool, optional
        Restrict every region to this mask.

    Returns
    -------
    RegionalRegression
        ``slope``, ``intercept``, the labels used and both mean vectors.

    Raises
    ------
    ValueError
        With fewer than two usable regions or when the reference means are all equal.

    Notes
    -----
    With ROI means ``r_i`` (reference) and ``q_i`` (reconstruction):
    ``slope = Σ (r_i − r̄)(q_i − q̄) / Σ (r_i − r̄)²``, ``intercept = q̄ − slope · r̄``.

    Examples
    --------
    >>> lab = np.repeat(np.arange(1, 5), 16).reshape(4, 4, 4)
    >>> y = 0.05 * lab.astype(float)
    >>> fit = regional_regression(0.8 * y + 0.01, y, lab)
    >>> round(fit.slope, 12), round(fit.intercept, 12)
    (0.8, 0.01)
    """
    xa, ya = _pair(x, y)
    lab = _labels(labels, xa.shape)
    sel = as_mask(mask, xa.shape)
    used, r, q = [], [], []
    for i in _label_ids(lab, label_ids):
        roi = (lab == i) & sel
        if roi.any():
            used.append(i)
            r.append(ya[roi].mean())
            q.append(xa[roi].mean())
    if len(used) < 2:
        raise ValueError(f'regional regression needs at least 2 non-empty regions; found '
                         f'{len(used)} among labels {list(_label_ids(lab, label_ids))}')
    r, q = np.asarray(r), np.asarray(q)
    rc = r - r.mean()
    den = float(np.dot(rc, rc))
    if not den > 0:
        raise ValueError('the reference ROI means are all equal, so the regression slope is '
                         'undefined')
    slope = float(np.dot(rc, q - q.mean()) / den)
    intercept = float(q.mean() - slope * r.mean())
    return RegionalRegression(slope, intercept, tuple(used), r, q)


def dgm_slope_error(x, y, labels, label_ids=DGM_LABELS, *, mask=None) -> float:
    """Challenge 2.0 DGM slope error ``|1 − slope|`` of recon vs reference ROI means.

    See :func:`regional_regression` (same parameters); ``label_ids`` defaults to the six
    deep-grey-matter labels :data:`DGM_LABELS`.

    Examples
    --------
    >>> lab = np.repeat(np.arange(1, 7), 8).reshape(3, 4, 4)
    >>> y = 0.03 * lab.astype(float)
    >>> round(dgm_slope_error(0.8 * y + 0.01, y, lab), 12)
    0.2
    """
    return regional_regression(x, y, labels, label_ids, mask=mask).slope_error


def xsim_qsmci(x, y, mask=None) -> float:
    """XSIM as QSM-CI computes it (``eval/qsm_eval.py``, a port of QSM.rs): its leaderboard's
    XSIM.

    **Not equal to** :func:`xsim` (the reference MATLAB ``compute_xsim.m``): same constants
    (L = 1 ppm, ``C1 = 1e-4``, ``C2 = 1e-6``) and native ppm, but local statistics over a
    5³ **uniform** window whose voxels outside the volume are left out (truncated windows),
    and voxels where the SSIM denominator is 0 are skipped.  Report which one is used.

    Parameters
    ----------
    x, y : array_like, 3-D
        Reconstruction and reference in ppm (the images are filtered as given).
    mask : array_like of bool, optional
        Voxels over which the SSIM map is averaged (default: ``y != 0``).

    Returns
    -------
    float
        Mean XSIM (1 for identical images; 0 when no voxel has a non-zero denominator, as in
        QSM-CI).

    Notes
    -----
    With window sums ``S(·)`` over the in-volume part of the 5³ neighbourhood and ``n`` its
    voxel count: ``μ = S(x)/n``, ``σ² = S(x²)/n − μ²``, ``σxy = S(xy)/n − μx μy``, then the
    SSIM formula of :func:`ssim_2016`.

    References
    ----------
    Milovic C, et al. Magn Reson Med 2025; doi:10.1002/mrm.30271 (XSIM).
    QSM-CI, https://github.com/QSMxT/QSM-CI (``qsm_ci.qsm_eval.xsim``).

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(scale=0.05, size=(10, 10, 10))
    >>> xsim_qsmci(y, y)
    1.0
    """
    xa, ya = _pair(x, y)
    m = _nonempty_mask(ya != 0 if mask is None else mask, xa.shape,
                       'mask' if mask is not None else 'mask (default: y != 0)')
    k = 5

    def wsum(a):
        return ndimage.uniform_filter(a, size=k, mode='constant', cval=0.0) * k**3

    cnt = wsum(np.ones_like(xa))
    cnt[cnt == 0] = 1.0
    mu_x, mu_y = wsum(xa) / cnt, wsum(ya) / cnt
    var_x = wsum(xa * xa) / cnt - mu_x * mu_x
    var_y = wsum(ya * ya) / cnt - mu_y * mu_y
    cov = wsum(xa * ya) / cnt - mu_x * mu_y
    c1, c2 = 0.01**2, 0.001**2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    valid = m & (den > 0.0)
    if not valid.any():
        return 0.0
    return float(np.mean(num[valid] / den[valid]))
