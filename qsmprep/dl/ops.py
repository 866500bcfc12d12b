"""Dipole kernel and MoDL-QSM data-consistency operators in TensorFlow.

Conventions are those of :func:`qsmprep.numerics.dipole.dipole_kernel` (``k = fftfreq(N, Δ)``
cycles/mm, ``D(k) = 1/3 − (k·b̂)²/|k|²``, ``D(0) = 0``, b̂ in the voxel frame, Nyquist planes
*symmetrised*), evaluated per sample from its own B0 direction and voxel size, on the half
spectrum of :func:`tf.signal.rfft3d`.

Padding
-------
The original MoDL-QSM zero-pads every 48³ training patch into the full 210×224×160 matrix
before each FFT (7.5 M voxels for 0.11 M voxels of data).  Here a volume of ``n`` voxels per
axis is zero-padded to ``N = ceil((n + 2·margin) / multiple)·multiple`` (``margin = 24``,
``multiple = 8``: a 48³ patch → 96³, 8.5× fewer voxels than the full matrix; a 210×224×160
volume → 264×272×208).  Why this is enough:

* ``crop(F⁻¹[D·F(pad(x))])`` is the *periodic* convolution of the zero-extended ``x`` with the
  kernel.  Every separation between two voxels of the patch (≤ n − 1) is represented once;
  the nearest periodic image of a source lies ``N − n + 1 ≥ 2·margin + 1`` voxels away,
  where the dipole field (∝ 1/r³) of a patch-sized source is a small fraction of its
  near field: for a smooth random χ on a 48³ patch, the result differs from the one on the
  210×224×160 grid by about 0.7 % NRMSE (5 % at 64³, 0.13 % at 128³; checked in
  ``tests/dl/test_ops.py``), far less than the truncation the patch itself makes (sources
  outside a patch are never seen).
* The padding rule is the same in training and in sliding-window inference with the same
  patch size, so the network always sees one operator.  For whole-volume inference the
  margin is the same in voxels (the brain is already surrounded by the field of view).
* The patch is placed at the start of the padded grid (``rfft3d`` pads at the end), which
  is a circular shift of centred padding: with a periodic convolution the cropped result is
  identical.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ['dipole_conv', 'dipole_kernel', 'modl_adjoint', 'modl_forward', 'padded_grid']


def padded_grid(shape, margin: int = 24, multiple: int = 8):
    """FFT grid for a volume of spatial ``shape`` (ints or an int32 tensor of 3 values).

    >>> [int(v) for v in padded_grid((48, 48, 48))]
    [96, 96, 96]
    >>> [int(v) for v in padded_grid((210, 224, 160))]
    [264, 272, 208]
    """
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
    m = tf.constant(int(multiple), tf.int32)
    return ((shape + 2 * int(margin) + m - 1) // m) * m


def _frequencies(n, half: bool):
    """Integer frequencies ``m`` of ``fftfreq(n)`` (or ``rfftfreq``) and the Nyquist flag."""
    n = tf.cast(n, tf.int32)
    if half:
        m = tf.range(n // 2 + 1)
        nyq = tf.logical_and(tf.equal(n % 2, 0), tf.equal(m, n // 2))
    else:
        m = tf.range(n)
        m = tf.where(m < (n + 1) // 2, m, m - n)
        nyq = tf.logical_and(tf.equal(n % 2, 0), tf.equal(m, -(n // 2)))
    return tf.cast(m, tf.float32), nyq


def dipole_kernel(grid, b0_direction, voxel_size):
    """Half-spectrum dipole kernels ``(B, Nx, Ny, Nz//2 + 1)`` (float32), one per sample.

    Parameters
    ----------
    grid : 3 ints or int32 tensor
        FFT grid (:func:`padded_grid`).
    b0_direction : (B, 3) tensor
        Unit B0 vectors in the voxel frame (normalised here).
    voxel_size : (B, 3) tensor
        Voxel sizes in mm.

    Equals ``qsmprep.numerics.dipole.dipole_kernel(grid, voxel_size, b0, rfft=True,
    nyquist='symmetrize')`` for each sample.
    """
    grid = tf.cast(tf.convert_to_tensor(grid), tf.int32)
    b = tf.cast(b0_direction, tf.float32)
    b = b / tf.norm(b, axis=-1, keepdims=True)
    vs = tf.cast(voxel_size, tf.float32)
    kb_in = 0.0
    kb2_nyq = 0.0
    k2 = 0.0
    expand = ((2, 3), (1, 3), (1, 2))  # axes to add to (B, len) for spatial axis d
    for d in range(3):
        m, nyq = _frequencies(grid[d], half=(d == 2))
        n = tf.cast(grid[d], tf.float32)
        # k_d = m / (N_d Δ_d), per sample: (B, len) reshaped to broadcast along axis d
        k = m[None, :] / (n * vs[:, d:d + 1])
        nyq = nyq[None, :]
        for ax in expand[d]:
            k, nyq = tf.expand_dims(k, ax), tf.expand_dims(nyq, ax)
        kbd = k * tf.reshape(b[:, d], [-1, 1, 1, 1])
        kb_in = kb_in + tf.where(nyq, 0.0, kbd)
        kb2_nyq = kb2_nyq + tf.where(nyq, kbd * kbd, 0.0)
        k2 = k2 + k * k
    kb2 = kb_in * kb_in + kb2_nyq
    safe = tf.where(k2 > 0, k2, 1.0)
    return tf.where(k2 > 0, 1.0 / 3.0 - kb2 / safe, 0.0)


def _dipole_conv(x, kernel, grid):
    shape = tf.shape(x)
    spec = tf.signal.rfft3d(x, fft_length=grid)
    out = tf.signal.irfft3d(spec * tf.cast(kernel, tf.complex64), fft_length=grid)
    return out[:, :shape[1], :shape[2], :shape[3]]


@tf.custom_gradient
def _dipole_conv_sa(x, kernel, grid):
    def grad(dy):
        # crop∘F⁻¹DF∘pad is self-adjoint (D real and even), so its vector-Jacobian product
        # is the same operator; the kernel (a function of the data geometry) gets none.
        return _dipole_conv(dy, kernel, grid), None, None

    return _dipole_conv(x, kernel, grid), grad


def dipole_conv(x, kernel, grid):
    """``crop(F⁻¹[D·F(pad(x))])`` for real ``x`` of shape ``(B, X, Y, Z)``.

    TensorFlow has no gradient for ``rfft3d``/``irfft3d``; the operator is self-adjoint
    (D real and even in k), so its gradient is the operator itself (custom gradient, one
    FFT pair per backward pass).  No gradient flows into ``kernel``.
    """
    return _dipole_conv_sa(tf.cast(x, tf.float32), tf.stop_gradient(kernel),
                           tf.convert_to_tensor(grid))


def modl_forward(x, kernel, grid, mask=None):
    """MoDL-QSM forward operator ``A x = M·(D⊗x₀ [+ x₁])`` for ``x`` of shape
    ``(B, X, Y, Z, C)``, ``C`` ∈ {1, 2}; returns ``(B, X, Y, Z, 1)``."""
    y = dipole_conv(x[..., 0], kernel, grid)[..., None]
    if x.shape[-1] == 2:
        y = y + tf.cast(x[..., 1:2], tf.float32)
    return y if mask is None else y * tf.cast(mask, tf.float32)


def modl_adjoint(y, kernel, grid, mask=None, channels: int = 2):
    """Adjoint ``Aᴴ y = [D⊗(M y) [, M y]]`` (D is real and even, hence self-adjoint)."""
    y = tf.cast(y, tf.float32)
    if mask is not None:
        y = y * tf.cast(mask, tf.float32)
    out = [dipole_conv(y[..., 0], kernel, grid)[..., None]]
    if channels == 2:
        out.append(y)
    return tf.concat(out, axis=-1)
