"""Sliding-window inference equals whole-volume inference for a fully convolutional stand-in
(NumPy only)."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.dl.windows import axis_weights, slicewise, sliding_window


def _fcn(x, kernels):
    """Fully convolutional stand-in: 'same' zero-padded 3ⁿ correlations with ReLU between;
    receptive-field radius = number of layers."""
    for i, k in enumerate(kernels):
        x = ndimage.correlate(x, k, mode='constant')
        if i < len(kernels) - 1:
            x = np.maximum(x, 0.0)
    return x


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.standard_normal((29, 23, 17)), [rng.standard_normal((3, 3, 3)) for _ in range(3)]


def test_axis_weights_taper_only_inner_faces():
    w = axis_weights(12, trim=2, ramp=3)
    assert w[:2].tolist() == [0, 0] and w[-2:].tolist() == [0, 0] and w[5] == 1
    assert np.all(np.diff(w[:6]) >= 0)
    assert np.all(axis_weights(6, trim=2, ramp=3, taper_start=False, taper_end=False) == 1)


@pytest.mark.parametrize('patch,overlap,batch', [((12, 10, 9), (8, 7, 6), 3),
                                                 ((16, 16, 16), (7, 7, 7), 1)])
def test_sliding_window_equals_whole_volume(volume, patch, overlap, batch):
    x, kernels = volume
    whole = _fcn(x, kernels)
    calls = []

    def predict(b):
        calls.append(b['field'].shape[0])
        return np.stack([_fcn(v[..., 0], kernels) for v in b['field']])[..., None]

    out = sliding_window(predict, {'field': x[..., None]}, patch_shape=patch, overlap=overlap,
                         trim=3, batch_size=batch)
    assert out.shape == (*x.shape, 1)
    assert set(calls) == {batch}  # the last batch is padded to the same size
    np.testing.assert_allclose(out[..., 0], whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    # without trimming, the patch borders differ from the whole-volume result
    naive = sliding_window(predict, {'field': x[..., None]}, patch_shape=patch,
                           overlap=overlap, trim=0, ramp=0, batch_size=batch)
    assert np.abs(naive[..., 0] - whole).max() > 1e-3 * np.abs(whole).max()


def test_volume_smaller_than_patch_and_constants(volume):
    x, kernels = volume
    seen = {}

    def predict(b):
        seen['c'] = b['c']
        return np.stack([_fcn(v[..., 0], kernels) for v in b['field']])[..., None] + 0

    out = sliding_window(predict, {'field': x[:10, :10, :10, None]}, patch_shape=(16,) * 3,
                         overlap=(8,) * 3, trim=3, constants={'c': [1.0, 2.0, 3.0]})
    full = _fcn(np.pad(x[:10, :10, :10], ((0, 6),) * 3), kernels)[:10, :10, :10]
    np.testing.assert_allclose(out[..., 0], full, rtol=1e-5, atol=1e-6)
    assert seen['c'].shape == (1, 3)


def test_overlap_must_cover_trim(volume):
    x, _ = volume
    with pytest.raises(ValueError, match='overlap'):
        sliding_window(lambda b: b['field'], {'field': x[..., None]}, patch_shape=(8,) * 3,
                       overlap=(3,) * 3, trim=2)


def test_slicewise_equals_per_slice(volume):
    x, _ = volume
    k2 = np.random.default_rng(1).standard_normal((3, 3))

    def f2(img):
        return ndimage.correlate(np.maximum(ndimage.correlate(img, k2, mode='constant'), 0), k2,
                                 mode='constant')

    def predict2d(b):
        assert b['field'].ndim == 4
        return np.stack([f2(v[..., 0]) for v in b['field']])[..., None]

    for axis in (0, 2):
        out = slicewise(predict2d, {'field': x[..., None]}, axis=axis, crop=(16, 16),
                        overlap=(6, 6), trim=2, batch_size=4)
        ref = np.stack([f2(s) for s in np.moveaxis(x, axis, 0)], axis=axis)
        np.testing.assert_allclose(out[..., 0], ref, rtol=1e-5, atol=1e-5)
