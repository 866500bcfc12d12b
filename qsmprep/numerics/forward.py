"""Forward models: scalar χ → field, susceptibility tensor → field, apparent susceptibility.

Tensor component order everywhere in qsmprep (as STI Suite):
``[χ11, χ12, χ13, χ22, χ23, χ33]`` stored on the **last** axis, indices in the voxel-axis
frame of the array.  Fields and susceptibilities are in ppm.
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics import fft
from qsmprep.numerics._checks import as_direction, as_mask, as_volume
from qsmprep.numerics.dipole import dipole_kernel, kspace_products, nyquist_mask

__all__ = ['TENSOR_COMPONENTS', 'apparent_susceptibility', 'dipole_forward',
           'matrix_to_tensor', 'rotate_tensor', 'sti_rows', 'tensor_forward',
           'tensor_to_matrix']

#: Names of the six tensor components in storage order.
TENSOR_COMPONENTS = ('chi11', 'chi12', 'chi13', 'chi22', 'chi23', 'chi33')
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _pad_shape(shape, padding):
    return fft.fast_shape(shape, padding) if padding else tuple(shape)


def dipole_forward(chi, voxel_size=1.0, b0_direction=(0.0, 0.0, 1.0), *, padding: int = 0,
                   nyquist: str = 'symmetrize'):
    """Field shift (ppm) of a scalar susceptibility distribution ``chi`` (ppm).

    ``δ = F⁻¹[D · F(χ)]`` with the kernel of :func:`qsmprep.numerics.dipole.dipole_kernel`.
    ``padding`` voxels of zeros per side (then rounded up to a fast FFT size) reduce the
    periodic wrap-around of the FFT; ``padding=0`` makes the model exactly consistent with
    the inversions that use the same grid.  Uses 2 FFTs.

    >>> chi = np.zeros((16, 16, 16)); chi[8, 8, 8] = 1.0
    >>> f = dipole_forward(chi)
    >>> bool(abs(f.mean()) < 1e-12)  # D(0) = 0: the field has zero mean
    True
    """
    chi = as_volume(chi, 'chi')
    shape = chi.shape
    pshape = _pad_shape(shape, padding)
    D = dipole_kernel(pshape, voxel_size, b0_direction, nyquist=nyquist, dtype=chi.dtype)
    X = fft.rfftn(fft.pad(chi, pshape) if padding else chi)
    X *= D
    out = fft.irfftn(X, pshape)
    return np.ascontiguousarray(fft.crop(out, shape)) if padding else out


def sti_rows(shape, voxel_size, b0_direction, *, nyquist: str = 'symmetrize',
             dtype=np.float64, products=None):
    """k-space rows ``a(k)`` of the STI forward model for one B0 direction.

    ``δ̂(k) = Σ_c a_c(k) χ̂_c(k)`` with ``a`` derived from
    ``δ̂ = b̂ᵀχ̂b̂/3 − (b̂·k̂)(k̂ᵀχ̂b̂)`` (Liu, MRM 2010;63:1471) for the component order
    ``[χ11, χ12, χ13, χ22, χ23, χ33]`` (off-diagonal coefficients include the factor 2 of
    the symmetric tensor).

    Returns
    -------
    ndarray, shape ``(6, *half_spectrum_shape)``
    """
    b = as_direction(b0_direction)
    if products is None:
        products = kspace_products(shape, voxel_size, nyquist=nyquist, dtype=dtype)

    def kk(i, j):
        return products[(min(i, j), max(i, j))]

    # s_p = Σ_r b_r k_r k_p / |k|²
    s = [sum(b[r] * kk(r, p) for r in range(3)) for p in range(3)]
    rows = np.empty((6, *s[0].shape), dtype=dtype)
    for c, (p, q) in enumerate(_PAIRS):
        if p == q:
            rows[c] = b[p] * b[p] / 3.0 - s[p] * b[p]
        else:
            rows[c] = 2.0 * b[p] * b[q] / 3.0 - (s[p] * b[q] + s[q] * b[p])
    k0 = (0,) * 3
    rows[(slice(None), *k0)] = 0.0  # the mean is not measurable: D(0) := 0 convention
    if nyquist == 'zero':
        rows[:, nyquist_mask(shape)] = 0.0
    return rows


def tensor_forward(chi_tensor, voxel_size=1.0, b0_direction=(0.0, 0.0, 1.0), *,
                   nyquist: str = 'symmetrize'):
    """Field shift (ppm) of a susceptibility tensor field for one B0 direction.

    Uses 7 FFTs (6 forward, 1 inverse).  For an isotropic tensor ``χ·I`` the result equals
    :func:`dipole_forward` of ``χ``.

    Parameters
    ----------
    chi_tensor : ndarray, shape (X, Y, Z, 6)
        Tensor components ``[χ11, χ12, χ13, χ22, χ23, χ33]`` in ppm, voxel-axis frame.
    voxel_size : float or 3 floats
        Voxel size in mm.
    b0_direction : 3 floats
        Unit B0 vector in the voxel-axis frame.

    Examples
    --------

    >>> chi = np.zeros((8, 8, 8)); chi[4, 4, 4] = 1.0
    >>> T = np.zeros((8, 8, 8, 6)); T[..., 0] = T[..., 3] = T[..., 5] = chi
    >>> b = (0.0, 0.6, 0.8)
    >>> bool(np.allclose(tensor_forward(T, 1.0, b), dipole_forward(chi, 1.0, b)))
    True
    """
    T = as_volume(chi_tensor, 'chi_tensor', ndim=4)
    if T.shape[-1] != 6:
        raise ValueError(
            f'chi_tensor must have 6 components on the last axis; got shape {T.shape}')
    shape = T.shape[:3]
    rows = sti_rows(shape, voxel_size, b0_direction, nyquist=nyquist, dtype=T.dtype)
    acc = None
    for c in range(6):
        term = fft.rfftn(np.ascontiguousarray(T[..., c]))
        term *= rows[c]
        acc = term if acc is None else acc + term
    return fft.irfftn(acc, shape)


def apparent_susceptibility(chi_tensor, b0_direction, mask=None):
    """Apparent susceptibility ``b̂ᵀ χ b̂`` (ppm) for a B0 direction in the voxel frame.

    >>> T = np.zeros((1, 1, 1, 6)); T[..., 5] = 0.1  # χ33 only
    >>> float(apparent_susceptibility(T, (0, 0, 1))[0, 0, 0])
    0.1
    """
    T = as_volume(chi_tensor, 'chi_tensor', ndim=4)
    if T.shape[-1] != 6:
        raise ValueError(f'chi_tensor must have 6 components; got shape {T.shape}')
    b = as_direction(b0_direction)
    w = np.array([b[p] * b[q] * (1.0 if p == q else 2.0) for p, q in _PAIRS])
    out = T @ w
    if mask is not None:
        out = np.where(as_mask(mask, out.shape), out, 0.0)
    return out


def tensor_to_matrix(chi_tensor):
    """``(..., 6)`` components → ``(..., 3, 3)`` symmetric matrices.

    >>> tensor_to_matrix(np.arange(6.0)).tolist()
    [[0.0, 1.0, 2.0], [1.0, 3.0, 4.0], [2.0, 4.0, 5.0]]
    """
    T = np.asarray(chi_tensor)
    if T.shape[-1] != 6:
        raise ValueError(f'expected 6 components on the last axis; got shape {T.shape}')
    M = np.empty((*T.shape[:-1], 3, 3), dtype=T.dtype)
    for c, (p, q) in enumerate(_PAIRS):
        M[..., p, q] = T[..., c]
        M[..., q, p] = T[..., c]
    return M


def matrix_to_tensor(matrix):
    """``(..., 3, 3)`` symmetric matrices → ``(..., 6)`` components (upper triangle)."""
    M = np.asarray(matrix)
    if M.shape[-2:] != (3, 3):
        raise ValueError(f'expected (..., 3, 3) matrices; got shape {M.shape}')
    return np.stack([M[..., p, q] for p, q in _PAIRS], axis=-1)


def rotate_tensor(chi_tensor, rotation):
    """Rotate tensor components: ``χ' = R χ Rᵀ`` per voxel (values only, not positions).

    >>> R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90° about z
    >>> rotate_tensor(np.array([1.0, 0, 0, 0, 0, 0]), R).round(12).tolist()
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    """
    R = np.asarray(rotation, dtype=float)
    if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
        raise ValueError('rotation must be an orthonormal 3x3 matrix')
    M = tensor_to_matrix(chi_tensor)
    return matrix_to_tensor(R @ M @ R.T)


