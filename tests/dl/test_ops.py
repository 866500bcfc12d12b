"""TensorFlow dipole kernel and MoDL-QSM operators against the NumPy numerics."""

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from qsmprep.dl import ops  # noqa: E402
from qsmprep.dl.layers import conv3d_same  # noqa: E402
from qsmprep.numerics import fft  # noqa: E402
from qsmprep.numerics.dipole import dipole_kernel  # noqa: E402

B0S = np.array([[np.sin(0.4), 0.0, np.cos(0.4)], [0.3, -0.2, 0.93], [0.0, 0.0, 1.0]])
B0S /= np.linalg.norm(B0S, axis=1, keepdims=True)
VS = np.array([[1.0, 1.0, 1.0], [1.0, 1.5, 2.0], [2.0, 2.0, 2.0]])


@pytest.mark.parametrize('grid', [(8, 10, 6), (7, 9, 5), (16, 12, 10)])
def test_tf_kernel_equals_numpy_kernel(grid):
    D = ops.dipole_kernel(grid, B0S, VS).numpy()
    assert D.shape == (3, grid[0], grid[1], grid[2] // 2 + 1)
    for i in range(3):
        ref = dipole_kernel(grid, VS[i], B0S[i], rfft=True, nyquist='symmetrize')
        np.testing.assert_allclose(D[i], ref, atol=2e-7)


def test_padded_grid():
    assert [int(v) for v in ops.padded_grid((48, 48, 48))] == [96, 96, 96]
    assert [int(v) for v in ops.padded_grid((21, 30, 8), margin=4, multiple=8)] == [32, 40, 16]


def _numpy_conv(x, grid, vs, b0):
    D = dipole_kernel(grid, vs, b0)
    return fft.crop(fft.irfftn(fft.rfftn(fft.pad(x, grid)) * D, grid), x.shape)


def test_dipole_conv_equals_padded_numpy_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 10, 8))
    grid = [int(v) for v in ops.padded_grid(x.shape[1:], margin=6, multiple=4)]
    D = ops.dipole_kernel(grid, B0S[:2], VS[:2])
    y = ops.dipole_conv(tf.constant(x, tf.float32), D, grid).numpy()
    for i in range(2):
        # rfft3d pads at the end, fft.pad centres: a circular shift, same cropped result
        ref = _numpy_conv(x[i], grid, VS[i], B0S[i])
        np.testing.assert_allclose(y[i], ref, atol=1e-5 * np.abs(ref).max())


def test_modl_operator_adjointness_matches_numpy():
    rng = np.random.default_rng(1)
    shape = (10, 12, 8)
    grid = [int(v) for v in ops.padded_grid(shape, margin=4, multiple=4)]
    x = rng.standard_normal((1, *shape, 2))
    y = rng.standard_normal((1, *shape, 1))
    mask = (rng.random((1, *shape, 1)) > 0.3).astype(float)
    D = ops.dipole_kernel(grid, B0S[1:2], VS[1:2])
    Ax = ops.modl_forward(tf.constant(x, tf.float32), D, grid, mask).numpy()
    AHy = ops.modl_adjoint(tf.constant(y, tf.float32), D, grid, mask).numpy()
    lhs, rhs = np.vdot(Ax, y), np.vdot(x, AHy)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    # the same operators in float64 NumPy
    conv = _numpy_conv(x[0, ..., 0], grid, VS[1], B0S[1])
    Ax_np = (conv + x[0, ..., 1]) * mask[0, ..., 0]
    np.testing.assert_allclose(Ax[0, ..., 0], Ax_np, atol=1e-5 * np.abs(Ax_np).max())
    my = y[0, ..., 0] * mask[0, ..., 0]
    AHy_np = np.stack([_numpy_conv(my, grid, VS[1], B0S[1]), my], -1)
    np.testing.assert_allclose(AHy[0], AHy_np, atol=1e-5 * np.abs(AHy_np).max())
    lhs64, rhs64 = np.vdot(Ax_np, y[0, ..., 0]), np.vdot(x[0], AHy_np)
    assert abs(lhs64 - rhs64) <= 1e-10 * abs(lhs64)
    np.testing.assert_allclose(lhs, lhs64, rtol=1e-5)


def test_custom_gradient_is_the_adjoint():
    rng = np.random.default_rng(2)
    shape = (8, 8, 6)
    grid = [16, 16, 16]
    D = ops.dipole_kernel(grid, B0S[:1], VS[:1])
    x = tf.Variable(rng.standard_normal((1, *shape, 1)), dtype=tf.float32)
    r = tf.constant(rng.standard_normal((1, *shape, 1)), tf.float32)
    with tf.GradientTape() as tape:
        s = tf.reduce_sum(ops.modl_forward(x, D, grid) * r)
    g = tape.gradient(s, x).numpy()
    ref = ops.modl_adjoint(r, D, grid, channels=1).numpy()
    np.testing.assert_allclose(g, ref, atol=1e-5 * np.abs(ref).max())


def test_fast_conv3d_gradient_equals_native():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((2, 7, 6, 5, 3)), tf.float32)
    w = tf.constant(rng.standard_normal((3, 3, 3, 3, 4)), tf.float32)
    up = tf.constant(rng.standard_normal((2, 7, 6, 5, 4)), tf.float32)
    grads = []
    for fn in (conv3d_same, lambda a, b: tf.nn.conv3d(a, b, [1] * 5, 'SAME')):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = fn(x, w)
            s = tf.reduce_sum(y * up)
        grads.append([y, *tape.gradient(s, [x, w])])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_cheap_padding_is_close_to_full_matrix():
    """The documented claim of qsmprep.dl.ops: a 48³ patch padded to 96³ vs 210×224×160."""
    from scipy import ndimage

    chi = ndimage.gaussian_filter(np.random.default_rng(4).standard_normal((48,) * 3), 2)
    cheap = _numpy_conv(chi, [int(v) for v in ops.padded_grid(chi.shape)], 1.0, (0, 0, 1))
    full = _numpy_conv(chi, (210, 224, 160), 1.0, (0, 0, 1))
    assert 100 * np.linalg.norm(cheap - full) / np.linalg.norm(full) < 1.5


@pytest.mark.parametrize('onednn', [False, True])
def test_fast_conv3d_layer_gradient_on_either_kernel_path(monkeypatch, onednn):
    """FastConv3D takes conv3d_same's gradient without oneDNN and the native one with it;
    both equal keras.layers.Conv3D's (up to float32 rounding)."""
    import keras

    from qsmprep.dl import layers

    monkeypatch.setattr(layers, 'onednn_enabled', lambda: onednn)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((2, 6, 7, 5, 3)), tf.float32)
    up = tf.constant(rng.standard_normal((2, 6, 7, 5, 4)), tf.float32)
    fast = layers.FastConv3D(4, 3, padding='same')
    ref = keras.layers.Conv3D(4, 3, padding='same')
    fast.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(fast.get_weights())
    out = []
    for layer in (fast, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.reduce_sum(layer(x) * up)
        out.append(tape.gradient(s, [x, *layer.trainable_variables]))
    for a, b in zip(*out, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_configure_tensorflow_turns_onednn_on_unless_told_otherwise():
    """TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import: check in fresh processes."""
    import os
    import subprocess
    import sys

    code = ('from qsmprep.dl.train import configure_tensorflow; configure_tensorflow(1); '
            'from qsmprep.dl.layers import onednn_enabled; print(onednn_enabled())')
    env = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
    seen = []
    for extra in ({}, {'TF_ENABLE_ONEDNN_OPTS': '0'}):
        run = subprocess.run([sys.executable, '-c', code], env={**env, **extra},
                             capture_output=True, text=True, check=True)
        seen.append(run.stdout.strip().splitlines()[-1])
    assert seen == ['True', 'False']
