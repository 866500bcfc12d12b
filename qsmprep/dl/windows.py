"""Sliding-window inference with overlap blending (NumPy only; the model is a callable).

Each patch prediction gets a separable weight that is 1 in its interior and, on every face
that lies *inside* the volume, is 0 over ``trim`` voxels and then rises linearly over
``ramp`` voxels; faces on the volume boundary are not tapered.  The blended output is
``Σ wᵢ·pᵢ / Σ wᵢ``.  For a model whose output at a voxel depends only on inputs within
``trim`` voxels (a fully convolutional network with receptive-field radius ``trim``), every
non-zero weight multiplies a prediction that equals the whole-volume prediction there, so the
blend reproduces whole-volume inference exactly (to rounding) — the property tested in
``tests/dl/test_windows.py``.  For MoDL-QSM (global coupling through the FFTs) the blend is
the usual linear feathering of the original ``model_test`` patch mode.
"""

from __future__ import annotations

import numpy as np

from qsmprep.dl.data import patch_origins

__all__ = ['axis_weights', 'slicewise', 'sliding_window']


def axis_weights(length: int, *, trim: int = 0, ramp: int = 0, taper_start: bool = True,
                 taper_end: bool = True) -> np.ndarray:
    """1-D blending weights of one patch axis.

    >>> np.round(axis_weights(8, trim=1, ramp=2), 3).tolist()
    [0.0, 0.333, 0.667, 1.0, 1.0, 0.667, 0.333, 0.0]
    >>> axis_weights(4, trim=1, ramp=1, taper_start=False).tolist()
    [1.0, 1.0, 0.5, 0.0]
    """
    i = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    ramp_w = np.clip((i - trim + 1) / (ramp + 1), 0.0, 1.0)
    if taper_start:
        w = np.minimum(w, ramp_w)
    if taper_end:
        w = np.minimum(w, ramp_w[::-1])
    return w


def sliding_window(predict, volumes: dict, *, patch_shape, overlap, trim=0, ramp=None,
                   batch_size: int = 1, constants: dict | None = None):
    """Predict a whole volume from overlapping patches.

    Parameters
    ----------
    predict : callable
        ``predict(batch) -> (B, *patch_shape, C)`` array, where ``batch`` holds every entry
        of ``volumes`` cut to ``(B, *patch_shape, …)`` and every entry of ``constants``
        repeated ``B`` times.
    volumes : dict of arrays
        Arrays sharing the leading 3 (spatial) axes; trailing axes are kept.
    patch_shape, overlap : 3 ints
        Patch size and overlap between neighbours (stride = patch − overlap).
    trim, ramp : int or 3 ints
        Blending (module docstring); ``ramp`` defaults to ``overlap − 2·trim``.
    batch_size : int
        Patches per ``predict`` call (the last batch is padded by repeating a patch, so
        ``predict`` always sees the same batch size).

    Returns
    -------
    ndarray, shape ``(*spatial, C)``, float32
    """
    names = list(volumes)
    shape = tuple(int(n) for n in np.shape(volumes[names[0]])[:3])
    patch = tuple(int(p) for p in np.broadcast_to(patch_shape, (3,)))
    ov = tuple(int(o) for o in np.broadcast_to(overlap, (3,)))
    trim = tuple(int(t) for t in np.broadcast_to(trim, (3,)))
    ramp = tuple(int(r) for r in np.broadcast_to(
        ramp if ramp is not None else [max(0, o - 2 * t) for o, t in zip(ov, trim,
                                                                        strict=True)], (3,)))
    for d in range(3):
        if ov[d] >= patch[d]:
            raise ValueError(f'overlap {ov} must be smaller than the patch {patch}')
        if shape[d] > patch[d] and ov[d] < 2 * trim[d]:
            raise ValueError(f'overlap {ov[d]} along axis {d} leaves voxels without a weight: '
                             f"it must be >= 2*trim = {2 * trim[d]}")
    padded = tuple(max(n, p) for n, p in zip(shape, patch, strict=True))
    vols = {}
    for k in names:
        v = np.asarray(volumes[k])
        if v.shape[:3] != shape:
            raise ValueError(f'{k} has spatial shape {v.shape[:3]}, expected {shape}')
        if padded != shape:
            v = np.pad(v, [(0, p - n) for n, p in zip(shape, padded, strict=True)] +
                       [(0, 0)] * (v.ndim - 3))
        vols[k] = v
    stride = tuple(p - o for p, o in zip(patch, ov, strict=True))
    origins = patch_origins(padded, patch, stride)
    consts = dict(constants or {})
    out = wsum = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        n_real = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n_real)
        batch = {k: np.stack([v[o[0]:o[0] + patch[0], o[1]:o[1] + patch[1],
                                o[2]:o[2] + patch[2]] for o in chunk]) for k, v in vols.items()}
        for k, c in consts.items():
            batch[k] = np.repeat(np.asarray(c)[None], batch_size, axis=0)
        pred = np.asarray(predict(batch), dtype=np.float32)
        if pred.shape[:4] != (batch_size, *patch):
            raise ValueError(f'predict returned shape {pred.shape}, expected '
                             f'({batch_size}, {patch}, C)')
        if out is None:
            out = np.zeros((*padded, *pred.shape[4:]), np.float32)
            wsum = np.zeros(padded, np.float64)
        for o, p in zip(chunk[:n_real], pred[:n_real], strict=True):
            w = 1.0
            for d in range(3):
                wd = axis_weights(patch[d], trim=trim[d], ramp=ramp[d], taper_start=o[d] > 0,
                                  taper_end=o[d] + patch[d] < padded[d])
                shp = [1, 1, 1]
                shp[d] = patch[d]
                w = w * wd.reshape(shp)
            sl = tuple(slice(a, a + b) for a, b in zip(o, patch, strict=True))
            out[sl] += (w.reshape(w.shape + (1,) * (p.ndim - 3)) * p).astype(np.float32)
            wsum[sl] += w
    if np.any(wsum <= 0):
        raise RuntimeError('some voxels got no blending weight (increase the overlap)')
    out = out / wsum.reshape(wsum.shape + (1,) * (out.ndim - 3)).astype(np.float32)
    return out[:shape[0], :shape[1], :shape[2]]


def slicewise(predict2d, volumes: dict, *, axis: int = 2, crop=(128, 128), overlap=(32, 32),
              trim=0, batch_size: int = 8):
    """Slice-by-slice 2D inference along ``axis`` with 2D tiles of ``crop`` and blending.

    ``predict2d(batch) -> (B, *crop, C)`` receives the ``volumes`` cut to ``(B, *crop, …)``
    tiles of single slices.  Implemented as :func:`sliding_window` on the volume with
    ``axis`` moved last and patches of ``(*crop, 1)``.
    """
    moved = {k: np.moveaxis(np.asarray(v), axis, 2) for k, v in volumes.items()}
    crop = tuple(int(c) for c in crop)
    ov = tuple(int(o) for o in overlap)
    tr = tuple(int(t) for t in np.broadcast_to(trim, (2,)))

    def predict(batch):
        b2 = {k: v[:, :, :, 0] for k, v in batch.items()}
        return np.asarray(predict2d(b2))[:, :, :, None]

    out = sliding_window(predict, moved, patch_shape=(*crop, 1), overlap=(*ov, 0),
                         trim=(*tr, 0), batch_size=batch_size)
    return np.moveaxis(out, 2, axis)
