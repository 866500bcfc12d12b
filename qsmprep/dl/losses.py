"""Masked losses and metrics in TensorFlow (2D or 3D, channels last).

All take ``(y_true, y_pred, mask)`` with shapes ``(B, *S, C)``, ``(B, *S, C)`` and
``(B, *S, 1)``; values outside the mask never contribute.

* :func:`masked_l1` — mean ``|Δ_c|/σ_c`` over masked voxels and channels (``σ_c``: the
  label std of channel ``c``, i.e. L1 in normalised units, as MoDL-QSM's ``mae`` on
  normalised labels).
* :func:`masked_ssim` — mean SSIM over masked voxels of channel 0 (Gaussian window σ = 1.5,
  radius 2 per axis; K = (0.01, 0.03); ``L`` = the label's masked dynamic range per sample;
  a training/validation measure, not the 2016-challenge SSIM of
  :func:`qsmprep.numerics.metrics.ssim_2016`).
* :func:`nrmse` — ``100·‖M(x − y)‖/‖M y‖`` of channel 0, per sample.
* :func:`hfen` — NRMSE of Laplacian-of-Gaussian filtered channel 0 (σ = 1.5; 15³ kernel of
  :func:`qsmprep.numerics.metrics.hfen_kernel` in 3D, its 2D analogue in 2D; images masked
  first, zero boundary), per sample.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ['hfen', 'laplacian_of_gaussian', 'masked_l1', 'masked_ssim', 'nrmse',
           'training_loss']

_EPS = 1e-12


def _f32(*xs):
    return [tf.cast(x, tf.float32) for x in xs]


def masked_l1(y_true, y_pred, mask, scale=None):
    """Mean absolute error over masked voxels, channel ``c`` divided by ``scale[c]``."""
    y_true, y_pred, mask = _f32(y_true, y_pred, mask)
    diff = tf.abs(y_pred - y_true) * mask
    if scale is not None:
        diff = diff / tf.constant(np.asarray(scale, np.float32))
    channels = tf.cast(tf.shape(y_true)[-1], tf.float32)
    return tf.reduce_sum(diff) / (tf.reduce_sum(mask) * channels + _EPS)


def _gauss_1d(sigma=1.5, radius=2):
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-t * t / (2 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def _smooth(x):
    """Separable Gaussian smoothing of ``x`` (B, *S, 1), zero boundary, 'same'."""
    g = _gauss_1d()
    nd = len(x.shape) - 2
    for axis in range(nd):
        x = _conv1d_axis(x, g, axis, nd)
    return x


def _per_sample_sum(x):
    return tf.reduce_sum(x, axis=list(range(1, len(x.shape))))


def masked_ssim(y_true, y_pred, mask, *, per_sample=False):
    """Mean SSIM of channel 0 over the mask (module docstring)."""
    y_true, y_pred, mask = _f32(y_true, y_pred, mask)
    x, y = y_pred[..., :1] * mask, y_true[..., :1] * mask
    axes = list(range(1, len(y.shape)))
    big = tf.reduce_max(tf.where(mask > 0, y, -1e30), axis=axes, keepdims=True)
    small = tf.reduce_min(tf.where(mask > 0, y, 1e30), axis=axes, keepdims=True)
    L = tf.maximum(big - small, 1e-6)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    mx, my = _smooth(x), _smooth(y)
    sxx = _smooth(x * x) - mx * mx
    syy = _smooth(y * y) - my * my
    sxy = _smooth(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    num, den = _per_sample_sum(s * mask), _per_sample_sum(mask)
    if per_sample:
        return num / (den + _EPS)
    return tf.reduce_sum(num) / (tf.reduce_sum(den) + _EPS)


def nrmse(y_true, y_pred, mask):
    """Per-sample ``100·‖M(x − y)‖/‖M y‖`` of channel 0 (B,)."""
    y_true, y_pred, mask = _f32(y_true, y_pred, mask)
    d = (y_pred[..., :1] - y_true[..., :1]) * mask
    r = y_true[..., :1] * mask
    return 100.0 * tf.sqrt(_per_sample_sum(d * d) / (_per_sample_sum(r * r) + _EPS))


def _log_terms(ndim: int, sigma: float = 1.5, half: int = 7):
    """Separable form of the zero-mean LoG kernel of
    :func:`qsmprep.numerics.metrics.hfen_kernel` (15³, σ = 1.5; its 2D analogue in 2D):
    ``H = Σ_d a(x_d)·Π_{e≠d} g(x_e) / S − c`` with ``g = exp(−x²/2σ²)``,
    ``a = (x²/σ⁴ − 1/σ²)·g``, ``S = (Σg)ⁿ`` and ``c`` the mean of the first sum.  Returns
    the 1-D kernels ``(a, g, box)`` (float32) and ``c``."""
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-x * x / (2 * sigma * sigma))
    a = (x * x / sigma ** 4 - 1 / sigma ** 2) * g
    norm = g.sum()
    a, g = a / norm, g / norm
    c = ndim * a.sum() * g.sum() ** (ndim - 1) / x.size ** ndim
    return a.astype(np.float32), g.astype(np.float32), float(c)


def _conv1d_axis(x, k, axis, nd):
    """Zero-boundary 'same' correlation of ``x`` (B, *S, 1) with the 1-D kernel ``k`` along
    spatial ``axis``, as a sum of shifted slices (much faster on CPU than a 1-channel
    ``conv3d``)."""
    r = (k.size - 1) // 2
    pads = [[0, 0]] * (nd + 2)
    pads[axis + 1] = [r, r]
    xp = tf.pad(x, pads)
    n = tf.shape(x)[axis + 1]
    out = 0.0
    for t in range(k.size):
        if k[t] == 0:
            continue
        begin = [0] * (nd + 2)
        begin[axis + 1] = t
        size = [-1] * (nd + 2)
        size[axis + 1] = n
        out = out + float(k[t]) * tf.slice(xp, begin, size)
    return out


def laplacian_of_gaussian(x):
    """Zero-boundary 'same' filtering of ``x`` (B, *S, 1) with the HFEN LoG kernel
    (separable evaluation of the 15ⁿ kernel: 4·n one-dimensional passes)."""
    nd = len(x.shape) - 2
    a, g, c = _log_terms(nd)
    out = 0.0
    for d in range(nd):
        y = x
        for e in range(nd):
            y = _conv1d_axis(y, a if e == d else g, e, nd)
        out = out + y
    box = x
    for e in range(nd):
        box = _conv1d_axis(box, np.ones(a.size, np.float32), e, nd)
    return out - c * box


def hfen(y_true, y_pred, mask):
    """Per-sample HFEN (%) of channel 0 (module docstring)."""
    y_true, y_pred, mask = _f32(y_true, y_pred, mask)
    lx = laplacian_of_gaussian(y_pred[..., :1] * mask)
    ly = laplacian_of_gaussian(y_true[..., :1] * mask)
    return 100.0 * tf.sqrt(_per_sample_sum((lx - ly) ** 2) / (_per_sample_sum(ly * ly) + _EPS))


def training_loss(y_true, y_pred, mask, *, scale=None, ssim_weight: float = 0.0):
    """``(1 − w)·L1 + w·(1 − SSIM)`` (``w = ssim_weight``; 0.05 for the 2D model as in the
    thesis, 0 for MoDL-QSM)."""
    loss = masked_l1(y_true, y_pred, mask, scale)
    if ssim_weight:
        loss = (1.0 - ssim_weight) * loss + ssim_weight * (1.0 - masked_ssim(y_true, y_pred,
                                                                             mask))
    return loss
