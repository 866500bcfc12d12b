"""FFT helpers: fast padded sizes, exact pad/crop, and counted transforms.

All numerics call the transforms below (thin wrappers over :mod:`scipy.fft` using every
available core) so that benchmarks can record how many FFTs each step needs, with
:func:`count_ffts`.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import numpy as np
import scipy.fft as sfft

__all__ = ['MaskBox', 'count_ffts', 'crop', 'fast_shape', 'fftn', 'ifftn', 'irfftn', 'pad',
           'rfftn', 'workers']

_COUNTS: list[Counter] = []


def workers() -> int:
    """Number of FFT worker threads (``QSMPREP_FFT_WORKERS`` or all cores)."""
    env = os.environ.get('QSMPREP_FFT_WORKERS')
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


@contextlib.contextmanager
def count_ffts():
    """Count the FFTs run inside the ``with`` block.

    >>> import numpy as np
    >>> with count_ffts() as n:
    ...     _ = irfftn(rfftn(np.zeros((4, 4, 4))), (4, 4, 4))
    >>> n['total']
    2
    """
    counter = Counter()
    _COUNTS.append(counter)
    try:
        yield counter
    finally:
        _COUNTS.remove(counter)


def _tick(kind: str) -> None:
    for c in _COUNTS:
        c[kind] += 1
        c['total'] += 1


def rfftn(x, s=None, axes=None):
    """Real-to-complex n-D FFT (counted)."""
    _tick('rfftn')
    return sfft.rfftn(x, s=s, axes=axes, workers=workers())


def irfftn(x, s, axes=None):
    """Complex-to-real inverse n-D FFT with output shape ``s`` (counted)."""
    _tick('irfftn')
    return sfft.irfftn(x, s=s, axes=axes, workers=workers())


def fftn(x, s=None, axes=None):
    """Complex n-D FFT (counted)."""
    _tick('fftn')
    return sfft.fftn(x, s=s, axes=axes, workers=workers())


def ifftn(x, s=None, axes=None):
    """Complex inverse n-D FFT (counted)."""
    _tick('ifftn')
    return sfft.ifftn(x, s=s, axes=axes, workers=workers())


def fast_shape(shape, pad_width=0, *, real: bool = True) -> tuple[int, ...]:
    """Smallest FFT-friendly shape ``>= shape + 2*pad_width`` (per axis).

    >>> fast_shape((210, 224, 160), 12)
    (240, 250, 192)
    """
    pw = np.broadcast_to(np.asarray(pad_width, dtype=int), (len(shape),))
    if np.any(pw < 0):
        raise ValueError(f'pad_width must be >= 0; got {pad_width!r}')
    return tuple(int(sfft.next_fast_len(int(n) + 2 * int(p), real=real))
                 for n, p in zip(shape, pw, strict=True))


def _offsets(shape, padded_shape):
    if len(shape) != len(padded_shape) or any(p < n for n, p in zip(shape, padded_shape,
                                                                     strict=True)):
        raise ValueError(f'padded shape {tuple(padded_shape)} must be >= shape {tuple(shape)}')
    return tuple((p - n) // 2 for n, p in zip(shape, padded_shape, strict=True))


def pad(x, padded_shape, *, value=0):
    """Centre ``x`` in an array of ``padded_shape`` (before = ``(P - N) // 2``).

    >>> import numpy as np
    >>> x = np.arange(6.).reshape(2, 3)
    >>> bool(np.array_equal(crop(pad(x, (5, 4)), x.shape), x))
    True
    """
    x = np.asarray(x)
    off = _offsets(x.shape, padded_shape)
    out = np.full(padded_shape, value, dtype=x.dtype)
    out[tuple(slice(o, o + n) for o, n in zip(off, x.shape, strict=True))] = x
    return out


def crop(x, shape):
    """Exact inverse of :func:`pad`: the centred ``shape`` block of ``x`` (a view)."""
    off = _offsets(shape, np.shape(x))
    return x[tuple(slice(o, o + n) for o, n in zip(off, shape, strict=True))]


class MaskBox:
    """The bounding box of a 3-D mask, padded to a fast FFT shape: solvers that only need
    the mask's neighbourhood work on ``pshape`` instead of the whole grid.

    ``pad`` is the zero padding per side (voxels) around the box; :meth:`take` cuts an
    array to the box and pads it, :meth:`unpad` embeds a padded result back into the full
    grid.

    >>> m = np.zeros((20, 20, 20), bool); m[5:9, 6:10, 7:12] = True
    >>> b = MaskBox(m, 3)
    >>> b.inner, all(p >= i + 6 for p, i in zip(b.pshape, b.inner))
    ((4, 4, 5), True)
    >>> x = np.random.default_rng(0).random((20, 20, 20))
    >>> bool(np.array_equal(b.unpad(b.take(x, np.float64))[m], x[m]))
    True
    """

    def __init__(self, mask, pad: int = 0):
        mask = np.asarray(mask, bool)
        if not mask.any():
            raise ValueError('the mask is empty')
        idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d)))
               for d in range(3)]
        self.box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
        self.inner = tuple(s.stop - s.start for s in self.box)
        self.pshape = fast_shape(self.inner, pad)
        self.shape = mask.shape

    def take(self, x, dtype=None):
        """``x`` cut to the box (as ``dtype``) and zero-padded to ``pshape``."""
        x = np.asarray(x[self.box], dtype=dtype)
        return pad(x, self.pshape)

    def unpad(self, x, fill=0):
        """Embed the padded array ``x`` back into the full grid (``fill`` elsewhere)."""
        out = np.full(self.shape, fill, dtype=x.dtype)
        out[self.box] = crop(x, self.inner)
        return out
