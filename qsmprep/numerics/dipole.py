"""Dipole kernel in k-space.

Conventions (see ``docs/physics.md``):

* k-space coordinates in cycles/mm, ``k_d = numpy.fft.fftfreq(N_d, Δ_d)`` (last axis
  ``rfftfreq`` for the half spectrum used with :func:`qsmprep.numerics.fft.rfftn`);
* ``D(k) = 1/3 − (k·b̂)²/|k|²`` with ``D(0) = 0`` (the mean of χ is not recoverable);
* ``b̂`` is a unit vector in the **voxel-axis frame** of the array (the frame of the
  ``B0_dir`` sidecar key of qsm-forward / QSMxT / QSM-CI); it is computed from affines and
  world transforms by :mod:`qsmprep.numerics.geometry`.

Nyquist planes
--------------
On even-sized axes the index ``−N/2`` is its own Hermitian mirror.  For an oblique b̂ the
cross terms ``k_i k_j`` (i ≠ j) of ``(k·b̂)²`` flip sign between a Nyquist voxel and its
Hermitian partner, so the plain kernel is not Hermitian there and ``F⁻¹(D·Fχ)`` is not
real.  ``nyquist='symmetrize'`` (default) averages the kernel over the two signs of every
Nyquist coordinate, which simply drops those cross terms; ``'zero'`` sets the kernel to
zero on Nyquist planes (used by the per-k STI inversion); ``'none'`` keeps the raw
kernel.
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics._checks import as_direction, as_voxel_size

__all__ = ['dipole_kernel', 'kspace_coordinates', 'kspace_products', 'nyquist_mask']

_NYQUIST = ('symmetrize', 'zero', 'none')


def _check_shape(shape):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f'shape must be 3 positive integers; got {shape!r}')
    return shape


def kspace_coordinates(shape, voxel_size=1.0, *, rfft: bool = True, dtype=np.float64):
    """Broadcastable k-space coordinates (cycles/mm) and Nyquist flags per axis.

    Returns
    -------
    k : list of 3 arrays
        ``k[d]`` has length ``N_d`` along axis ``d`` (``N_z//2 + 1`` on the last axis when
        ``rfft``) and length 1 elsewhere.
    nyq : list of 3 boolean arrays
        Same shapes; True on the Nyquist plane of an even-sized axis.

    >>> k, nyq = kspace_coordinates((4, 4, 4), 1.0)
    >>> k[0].ravel().tolist(), k[2].ravel().tolist()
    ([0.0, 0.25, -0.5, -0.25], [0.0, 0.25, 0.5])
    """
    shape = _check_shape(shape)
    vs = as_voxel_size(voxel_size)
    k, nyq = [], []
    for d, (n, v) in enumerate(zip(shape, vs, strict=True)):
        if rfft and d == 2:
            kd = np.fft.rfftfreq(n, v)
        else:
            kd = np.fft.fftfreq(n, v)
        flag = np.zeros(kd.shape, dtype=bool)
        if n % 2 == 0:
            flag[n // 2] = True  # −N/2 for fftfreq, +N/2 for rfftfreq
        view = [1, 1, 1]
        view[d] = kd.size
        k.append(kd.astype(dtype).reshape(view))
        nyq.append(flag.reshape(view))
    return k, nyq


def nyquist_mask(shape, *, rfft: bool = True):
    """Boolean array, True on the Nyquist plane of any even-sized axis.

    >>> int(nyquist_mask((4, 3, 4)).sum())  # 3*3 (x plane) + 4*3 (z plane) - 3 (overlap)
    18
    """
    _, nyq = kspace_coordinates(shape, 1.0, rfft=rfft)
    return nyq[0] | nyq[1] | nyq[2]


def kspace_products(shape, voxel_size=1.0, *, rfft: bool = True, nyquist: str = 'symmetrize',
                    dtype=np.float64):
    """Normalised products ``k_i k_j / |k|²`` for ``i <= j`` (0 at k = 0).

    With ``nyquist='symmetrize'`` the cross products involving a Nyquist coordinate are 0
    (the average over its two signs), which makes every kernel built from these products
    Hermitian-consistent.

    Returns
    -------
    dict
        ``{(i, j): array}`` for the six pairs ``i <= j``.
    """
    if nyquist not in _NYQUIST:
        raise ValueError(f'nyquist must be one of {_NYQUIST}; got {nyquist!r}')
    k, nyq = kspace_coordinates(shape, voxel_size, rfft=rfft, dtype=dtype)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = np.where(k2 > 0, 1.0 / k2, 0.0).astype(dtype)
    out = {}
    for i in range(3):
        for j in range(i, 3):
            p = k[i] * k[j] * inv
            if i != j and nyquist == 'symmetrize':
                p = np.where(nyq[i] | nyq[j], 0.0, p).astype(dtype)
            out[(i, j)] = p
    return out


def dipole_kernel(shape, voxel_size=1.0, b0_direction=(0.0, 0.0, 1.0), *, rfft: bool = True,
                  nyquist: str = 'symmetrize', dtype=np.float64):
    """Unit dipole kernel ``D(k) = 1/3 − (k·b̂)²/|k|²`` on an FFT grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid size of the (padded) array the kernel multiplies.
    voxel_size : float or 3 floats
        Voxel size in mm (anisotropic voxels are handled by ``fftfreq(N_d, Δ_d)``).
    b0_direction : 3 floats
        Unit B0 vector in the voxel-axis frame.
    rfft : bool
        Half spectrum (last axis ``N_z//2 + 1``) for use with ``rfftn``/``irfftn``.
    nyquist : {'symmetrize', 'zero', 'none'}
        Treatment of the Nyquist planes of even axes (module docstring).
    dtype : numpy dtype
        Output dtype (float32 halves memory for full-size volumes).

    Returns
    -------
    ndarray
        ``D`` with ``D(0) = 0`` and ``−2/3 ≤ D ≤ 1/3``.

    Notes
    -----
    Salomir et al., Concepts Magn Reson B 2003;19B:26; Marques & Bowtell, Concepts Magn Reson
    B 2005;25B:65.

    Examples
    --------
    >>> D = dipole_kernel((8, 8, 8), 1.0, (0, 0, 1))
    >>> float(D[0, 0, 0]), float(D.min()), float(D.max())
    (0.0, -0.666..., 0.333...)
    """
    shape = _check_shape(shape)
    b = as_direction(b0_direction)
    if nyquist not in _NYQUIST:
        raise ValueError(f'nyquist must be one of {_NYQUIST}; got {nyquist!r}')
    k, nyq = kspace_coordinates(shape, voxel_size, rfft=rfft, dtype=dtype)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    if nyquist == 'symmetrize':
        # (k·b)² averaged over both signs of each Nyquist coordinate: cross terms vanish.
        kb_in = sum(np.where(nyq[d], 0.0, k[d] * b[d]) for d in range(3))
        kb2 = kb_in ** 2 + sum(np.where(nyq[d], (k[d] * b[d]) ** 2, 0.0) for d in range(3))
    else:
        kb2 = (k[0] * b[0] + k[1] * b[1] + k[2] * b[2]) ** 2
    with np.errstate(divide='ignore', invalid='ignore'):
        D = np.where(k2 > 0, 1.0 / 3.0 - kb2 / k2, 0.0)
    if nyquist == 'zero':
        D = np.where(nyq[0] | nyq[1] | nyq[2], 0.0, D)
    return np.ascontiguousarray(D, dtype=dtype)
