"""The published MoDL-QSM as a user-supplied model (qsmprep.dl.published), tested with a
SYNTHETIC weights file of the published layout (Keras-2 ``save_weights`` HDF5: group and
dataset names and shapes as in ``logs/last.h5``) holding random weights made here, and a
synthetic ``NormFactor.mat`` with made-up statistics.  No published weight or value is used.

Oracles: an independent NumPy implementation of the CNN from the file's arrays (the layer
structure of the paper), the per-frequency closed form of the unrolled gradient steps with an
identity denoiser, and band-limited cosines for the Fourier resampling.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import nibabel as nb
import numpy as np
import pytest
from scipy.io import savemat

from qsmprep.dl import published as pub
from qsmprep.io.errors import MissingInputError, UsageError
from qsmprep.numerics.dipole import dipole_kernel

h5py = pytest.importorskip('h5py')


# --------------------------------------------------------------------------- synthetic file

def _synthetic_arrays(rng):
    """Random arrays of the published shapes, keyed by their Keras-2 weight names."""
    arrays = {}
    for i, shape in enumerate(pub.CONV_SHAPES, start=1):
        fan_in = int(np.prod(shape[:-1]))
        arrays[f'conv3d_{i}/kernel:0'] = rng.normal(0, np.sqrt(1.0 / fan_in), shape)
    arrays[f'conv3d_{len(pub.CONV_SHAPES)}/bias:0'] = rng.normal(0, 0.1, 2)
    for j in range(1, 2 * pub.BLOCKS + 1):
        arrays[f'batch_normalization_{j}/gamma:0'] = rng.uniform(0.5, 1.5, pub.WIDTH)
        arrays[f'batch_normalization_{j}/beta:0'] = rng.normal(0, 0.1, pub.WIDTH)
        arrays[f'batch_normalization_{j}/moving_mean:0'] = rng.normal(0, 0.1, pub.WIDTH)
        arrays[f'batch_normalization_{j}/moving_variance:0'] = rng.uniform(0.5, 2.0, pub.WIDTH)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


LAYERS = ['input_2', 'input_4', 'lambda_2', 'my_layer_1', 'multiply_1', 'input_3', 'lambda_5',
          'lambda_1', 'multiply_2', 'model_1', 'multiply_3', 'lambda_6', 'lambda_7', 'add_9',
          'cropping3d_1']


def write_weights(path, *, seed=0, step=0.8, arrays=None, extra_step=False,
                  alphabetical=False):
    """A Keras-2 weights file of the published layout with random weights."""
    rng = np.random.default_rng(seed)
    arrays = _synthetic_arrays(rng) if arrays is None else arrays
    # Keras 2 lists the trainable weights first (layers in creation order), then the BN
    # moving statistics
    order = ['conv3d_1']
    for b in range(pub.BLOCKS):
        order += [f'conv3d_{2 * b + 2}', f'batch_normalization_{2 * b + 1}',
                  f'conv3d_{2 * b + 3}', f'batch_normalization_{2 * b + 2}']
    order += [f'conv3d_{2 * pub.BLOCKS + i}' for i in (2, 3, 4)]
    names = [f'{la}/{v}:0' for la in order for v in ('kernel', 'bias', 'gamma', 'beta')
             if f'{la}/{v}:0' in arrays]
    names += [f'{la}/{v}:0' for la in order for v in ('moving_mean', 'moving_variance')
              if f'{la}/{v}:0' in arrays]
    if alphabetical:  # conv3d_1, conv3d_10, …: the listing order is not the network order
        names = sorted(names)
    with h5py.File(path, 'w') as f:
        f.attrs['backend'] = b'tensorflow'
        f.attrs['keras_version'] = b'2.2.5'
        f.attrs['layer_names'] = np.array([n.encode() for n in LAYERS])
        for layer in LAYERS:
            g = f.create_group(layer)
            if layer == 'model_1':
                g.attrs['weight_names'] = np.array([n.encode() for n in names])
                for n in names:
                    g.create_dataset(n, data=arrays[n])
            elif layer == 'my_layer_1' or (extra_step and layer == 'multiply_1'):
                g.attrs['weight_names'] = np.array([f'{layer}/step:0'.encode()])
                g.create_dataset(f'{layer}/step:0', data=np.float32(step))
            else:
                g.attrs['weight_names'] = np.array([], dtype=np.float64)
    return arrays


def write_norm(path, mean=(0.01, -0.002), std=(0.03, 0.005)):
    savemat(str(path), {'CosTrnMean': np.array([mean]), 'CosTrnStd': np.array([std])})
    return np.array(mean), np.array(std)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('modlqsm')
    (root / 'logs').mkdir()
    arrays = write_weights(root / 'logs' / 'last.h5', seed=1, step=0.8)
    mean, std = write_norm(root / 'NormFactor.mat')  # the repository layout: one folder up
    return {'weights': root / 'logs' / 'last.h5', 'norm': root / 'NormFactor.mat',
            'arrays': arrays, 'mean': mean, 'std': std}


@pytest.fixture(scope='module')
def model(files):
    pytest.importorskip('tensorflow')
    return pub.load_published(files['weights'])


# --------------------------------------------------------------------------- oracles

def _conv_same(x, w, b=None):
    """Cross-correlation with zero 'same' padding (TensorFlow's Conv3D), channels last."""
    r = [s // 2 for s in w.shape[:3]]
    xp = np.pad(x, [(r[0], r[0]), (r[1], r[1]), (r[2], r[2]), (0, 0)])
    out = np.zeros((*x.shape[:3], w.shape[-1]))
    for i, j, k in itertools.product(*(range(s) for s in w.shape[:3])):
        out += xp[i:i + x.shape[0], j:j + x.shape[1], k:k + x.shape[2]] @ w[i, j, k]
    return out if b is None else out + b


def _cnn_oracle(x, a):
    """The paper's CNN G evaluated from the Keras-2 arrays (float64)."""
    a = {k: v.astype(np.float64) for k, v in a.items()}

    def bn(y, j):
        p = f'batch_normalization_{j}/'
        return (a[p + 'gamma:0'] * (y - a[p + 'moving_mean:0'])
                / np.sqrt(a[p + 'moving_variance:0'] + 1e-3) + a[p + 'beta:0'])

    relu = lambda y: np.maximum(y, 0)  # noqa: E731
    x = relu(_conv_same(x, a['conv3d_1/kernel:0']))
    for b in range(pub.BLOCKS):
        y = relu(bn(_conv_same(x, a[f'conv3d_{2 * b + 2}/kernel:0']), 2 * b + 1))
        y = bn(_conv_same(y, a[f'conv3d_{2 * b + 3}/kernel:0']), 2 * b + 2)
        x = relu(x + y)
    x = relu(_conv_same(x, a['conv3d_18/kernel:0']))
    x = relu(_conv_same(x, a['conv3d_19/kernel:0']))
    return _conv_same(x, a['conv3d_20/kernel:0'], a['conv3d_20/bias:0'])


def _landweber_closed_form(y, shape, b0, step, iterations):
    """Identity denoiser, full mask: x^k = (I − tAᴴA) x^{k−1} + tAᴴy per frequency, with
    AᴴA = [[D², D], [D, 1]] and Aᴴŷ = [Dŷ, ŷ]; returns (X, Y, Z, 2)."""
    D = dipole_kernel(shape, 1.0, b0, rfft=False)
    yk = np.fft.fftn(y)
    rhs = np.stack([D * yk, yk])
    M = np.array([[D * D, D], [D, np.ones_like(D)]])
    x = step * rhs
    for _ in range(iterations - 1):
        x = x - step * np.einsum('ij...,j...->i...', M, x) + step * rhs
    return np.stack([np.real(np.fft.ifftn(c)) for c in x], axis=-1)


def _bandlimited(shape, rng, keep=0.3):
    """Real random field whose spectrum is zero beyond ``keep`` of the band (Nyquist incl.)."""
    k = np.fft.rfftn(rng.normal(size=shape))
    for d, n in enumerate(shape):
        f = np.abs(np.fft.fftfreq(n) if d < 2 else np.fft.rfftfreq(n))
        sh = [1, 1, 1]
        sh[d] = -1
        k = k * (f <= keep * 0.5).reshape(sh)
    return np.fft.irfftn(k, shape, axes=(0, 1, 2))


# --------------------------------------------------------------------------- tests

def test_weights_load_exactly_every_array_assigned(files, model):
    """Every dataset of the file lands in exactly one variable, unchanged; none is left."""
    with h5py.File(files['weights'], 'r') as f:
        datasets = {}

        def visit(name, obj):  # returns None: visititems goes on
            if isinstance(obj, h5py.Dataset):
                datasets[name] = obj[()]

        f.visititems(visit)
    variables = {v.path: v for v in model.denoiser.weights}
    assert set(model.assigned) == set(variables)  # every variable got an array
    assert len(set(model.assigned.values())) == len(model.assigned)  # one array each
    assert set(model.assigned.values()) | {'my_layer_1/my_layer_1/step:0'} == set(datasets)
    for var, src in model.assigned.items():
        np.testing.assert_array_equal(np.asarray(variables[var]), datasets[src])
    assert model.step == pytest.approx(0.8)
    np.testing.assert_array_equal(model.mean, files['mean'])
    np.testing.assert_array_equal(model.std, files['std'])
    assert model.norm_file == files['norm']
    n_values = sum(int(np.prod(v.shape)) for v in variables.values()) + 1
    assert n_values == 448_259  # the published network's size (physics reference §11.2)


def test_layer_order_from_layer_numbers_not_listing_order(tmp_path, files):
    write_weights(tmp_path / 'last.h5', seed=1, alphabetical=True)
    w = pub.read_weights(tmp_path / 'last.h5')
    for i, (kernel, _) in enumerate(w.conv, start=1):
        np.testing.assert_array_equal(kernel, files['arrays'][f'conv3d_{i}/kernel:0'])
    for j, d in enumerate(w.bn, start=1):
        np.testing.assert_array_equal(d['gamma'],
                                      files['arrays'][f'batch_normalization_{j}/gamma:0'])


def test_keras_port_equals_numpy_oracle_of_the_paper_architecture(files, model):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 6, 5, 2))
    got = np.asarray(model.denoiser(x[None].astype(np.float32), training=False))[0]
    want = _cnn_oracle(x, files['arrays'])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_tiled_denoiser_equals_whole_volume(model):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 6, 5, 2)).astype(np.float32)
    assert pub.tile_layout(x.shape[:3], 2000) == ([63, 6, 5], [36, 0, 0], [18, 0, 0])
    whole = np.asarray(model.denoiser(x[None], training=False))[0]
    tiled = pub._tiled(model.denoiser, max_voxels=2000)(x)  # three slabs of 63
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize('b0', [(0.0, 0.0, 1.0), (0.0, np.sin(0.4), np.cos(0.4))])
def test_unrolled_operator_matches_closed_form(b0):
    """Identity G, full mask: the three passes are gradient steps with A = [D, I]."""
    rng = np.random.default_rng(4)
    shape = (12, 10, 8)
    y = _bandlimited(shape, rng, keep=0.6)
    mean, std = np.array([0.01, -0.002]), np.array([0.03, 0.005])
    got = pub.unrolled_inference(y, np.ones(shape), dipole_kernel(shape, 1.0, b0,
                                                                 dtype=np.float32),
                                 lambda z: z, step=0.7, mean=mean, std=std)
    want = _landweber_closed_form(y, shape, b0, 0.7, pub.ITERATIONS)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_unrolled_denormalises_and_masks():
    """G = 0 in normalised units: every pass returns the label mean inside the mask."""
    shape = (8, 8, 8)
    mask = np.zeros(shape)
    mask[2:6, 2:6, 2:6] = 1
    mean, std = np.array([0.01, -0.002]), np.array([0.03, 0.005])
    x = pub.unrolled_inference(np.ones(shape), mask, dipole_kernel(shape, dtype=np.float32),
                               np.zeros_like, step=1.0, mean=mean, std=std)
    np.testing.assert_allclose(x[mask > 0], np.broadcast_to(mean, (64, 2)), rtol=1e-6)
    assert np.all(x[mask == 0] == 0)


@pytest.mark.parametrize(('vs', 'shape_1mm'), [
    ((2.0, 2.0, 2.0), (32, 24, 20)),
    ((1.5, 1.5, 1.5), (24, 18, 14)),  # 15 mm → 15 voxels, odd → 14 (as the original)
    ((2.0, 1.5, 1.0), (32, 18, 10)),
    ((0.8, 0.8, 0.8), (12, 10, 8)),  # down-sampling: ceil(12.8) = 13 → 12, ceil(9.6)
])
def test_fourier_resample_round_trip_preserves_grid(vs, shape_1mm):
    rng = np.random.default_rng(5)
    shape = (16, 12, 10)
    x = _bandlimited(shape, rng, keep=0.5 if min(vs) < 1 else 0.8)
    up = pub.fourier_resample(x, vs, 1.0)
    assert up.shape == pub.resampled_shape(shape, vs) == shape_1mm
    back = pub.fourier_resample(up, 1.0, vs, shape=shape)  # as predict_published does
    np.testing.assert_allclose(back, x, atol=1e-10 * np.abs(x).max())


def test_fourier_resample_keeps_values_and_centre():
    """A cosine sampled at 2 mm, resampled to 1 mm, equals the cosine sampled at 1 mm, with
    the voxel at N/2 fixed; the original's unscaled variant is off by the voxel volume."""
    n, vs = 16, 2.0
    pos = (np.arange(n) - n // 2) * vs  # mm, voxel N/2 at 0
    pos1 = np.arange(2 * n) - n  # 1 mm grid, voxel 2N/2 at 0
    f = 1 / 16.0  # cycles/mm, inside both bands
    x = np.cos(2 * np.pi * f * pos)[:, None, None] * np.ones((n, 4, 4))
    up = pub.fourier_resample(x, (vs, 1.0, 1.0), 1.0)
    assert up.shape == (2 * n, 4, 4)
    np.testing.assert_allclose(up[:, 1, 2], np.cos(2 * np.pi * f * pos1), atol=1e-12)
    legacy = pub.fourier_resample(x, (vs, 1.0, 1.0), 1.0, legacy_scaling=True)
    np.testing.assert_allclose(legacy, up / vs, atol=1e-12)


def test_centre_to_shape():
    x = np.arange(6.0)[:, None, None] * np.ones((6, 2, 2))
    assert pub.centre_to_shape(x, (4, 2, 2))[:, 0, 0].tolist() == [1, 2, 3, 4]
    assert pub.centre_to_shape(x, (9, 2, 2))[:, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 0, 0]


def test_resampled_path_equals_native_grid_for_bandlimited_field():
    """Identity G, full mask: at 2 mm (resampled to 1 mm and back) the port gives what the
    same gradient steps give on the 2 mm grid itself (same frequencies, same D(k̂))."""
    rng = np.random.default_rng(6)
    shape = (12, 10, 8)
    y = _bandlimited(shape, rng, keep=0.6)
    dummy = pub.PublishedModel(denoiser=None, step=0.7, mean=np.array([0.01, -0.002]),
                               std=np.array([0.03, 0.005]), path=None, norm_file=None,
                               sha256='')
    got = pub.predict_published(dummy, y, np.ones(shape, bool), voxel_size=(2.0, 2.0, 2.0),
                                denoise=lambda z: z)
    want = _landweber_closed_form(y, shape, (0, 0, 1), 0.7, pub.ITERATIONS)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_predict_published_shapes_units_and_mask(model):
    rng = np.random.default_rng(7)
    shape = (11, 10, 9)  # odd axes
    mask = np.zeros(shape, bool)
    mask[3:8, 3:8, 2:7] = True
    field = rng.normal(0, 0.02, shape) * mask  # ppm
    out = pub.predict_published(model, field, mask, voxel_size=(2.0, 2.0, 2.0))
    assert out.shape == (*shape, 2) and out.dtype == np.float32
    assert np.isfinite(out).all() and np.all(out[~mask] == 0) and np.any(out[mask] != 0)
    native = pub.predict_published(model, field, mask, voxel_size=(1.0, 1.0, 1.0))
    assert native.shape == (*shape, 2) and np.all(native[~mask] == 0)
    seen = []

    def record(z):  # what the CNN sees: zero outside the resampled mask
        seen.append(z)
        return z

    pub.predict_published(model, field, mask, voxel_size=(2.0, 2.0, 2.0),
                          network_mask='resampled', denoise=record)
    inside = pub.fourier_resample(np.pad(mask, [(0, 1), (0, 0), (0, 1)]).astype(float),
                                  2.0, 1.0) > 0.5
    assert len(seen) == pub.ITERATIONS and np.all(seen[0][~inside] == 0)
    assert 0.9 < inside.sum() / (8 * mask.sum()) < 1.1
    with pytest.raises(ValueError, match='network_mask'):
        pub.predict_published(model, field, mask, voxel_size=(2.0, 2.0, 2.0),
                              network_mask='brain')


def test_load_model_and_predict_volume_dispatch(files, model):
    from qsmprep.dl.infer import load_model, predict_volume

    loaded, meta = load_model(files['weights'], threads=1)
    assert meta['kind'] == 'modlqsm-published' and meta['name'] == pub.DESC
    rng = np.random.default_rng(8)
    shape = (10, 10, 10)
    mask = np.zeros(shape, bool)
    mask[2:8, 2:8, 2:8] = True
    field = rng.normal(0, 0.02, shape) * mask
    want = pub.predict_published(model, field, mask, voxel_size=(1, 1, 1))
    for c in (0, 1):
        got = predict_volume(loaded, meta, field, mask, voxel_size=(1, 1, 1), channel=c)
        np.testing.assert_allclose(got, want[..., c], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match='whole volume only'):
        predict_volume(loaded, meta, field, mask, mode='patches')


def test_model_description_names_the_file_and_its_sha256(files):
    from qsmprep.interfaces.dl import model_description

    desc, text = model_description(files['weights'])
    digest = hashlib.sha256(files['weights'].read_bytes()).hexdigest()
    assert desc == 'modlqsmpublished'
    assert digest in text and 'published weights supplied by the user' in text
    assert str(files['weights'].absolute()) in text


def test_predict_chimap_node_writes_chi33(files, model, tmp_path):
    from qsmprep.interfaces.dl import PredictChimap

    shape = (12, 12, 10)
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 3:9, 2:8] = 1
    field = np.random.default_rng(9).normal(0, 0.02, shape) * mask
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nb.Nifti1Image(field.astype(np.float32), aff).to_filename(tmp_path / 'field.nii.gz')
    nb.Nifti1Image(mask, aff).to_filename(tmp_path / 'mask.nii.gz')
    node = PredictChimap(in_file=str(tmp_path / 'field.nii.gz'),
                         in_mask=str(tmp_path / 'mask.nii.gz'), model=str(files['weights']),
                         b0_direction=[0.0, 0.0, 1.0])
    res = node.run(cwd=str(tmp_path))
    chi = np.asarray(nb.load(res.outputs.out_file).dataobj)
    want = pub.predict_published(model, field, mask > 0, voxel_size=(2, 2, 2))[..., 0]
    np.testing.assert_allclose(chi, want, rtol=1e-5, atol=1e-7)


def _keras3_like(path):
    with h5py.File(path, 'w') as f:
        f.create_group('layers').create_dataset('vars/0', data=np.zeros(3))


@pytest.mark.parametrize('kind', ['not_hdf5', 'keras3', 'narrow', 'no_step', 'two_steps'])
def test_wrong_h5_gives_clear_error(tmp_path, kind):
    path = tmp_path / 'other.h5'
    if kind == 'not_hdf5':
        path.write_text('not a model')
    elif kind == 'keras3':
        _keras3_like(path)
    elif kind == 'narrow':  # a different network: first convolution 2 → 16
        arrays = _synthetic_arrays(np.random.default_rng(0))
        arrays['conv3d_1/kernel:0'] = np.zeros((3, 3, 3, 2, 16), np.float32)
        write_weights(path, arrays=arrays)
    elif kind == 'no_step':
        write_weights(path)
        with h5py.File(path, 'a') as f:
            del f['my_layer_1/my_layer_1/step:0']
            f['my_layer_1'].attrs['weight_names'] = np.array([], dtype=np.float64)
    else:
        write_weights(path, extra_step=True)
    write_norm(tmp_path / 'NormFactor.mat')
    from qsmprep.interfaces.dl import model_description

    for call in (pub.read_weights, model_description):
        with pytest.raises(UsageError) as err:
            call(path)
        assert err.value.exit_code == 64
        msg = str(err.value)
        assert str(path) in msg and 'expected' in msg and 'MoDL-QSM' in msg
    assert not pub.is_published(path)


def test_h5_with_model_json_is_left_to_qsmprep_models(tmp_path):
    """A qsmprep ``*.weights.h5`` next to its model.json is not taken for the published file."""
    from qsmprep.dl.infer import _published_weights

    path = tmp_path / 'model.weights.h5'
    _keras3_like(path)
    (tmp_path / 'model.json').write_text(json.dumps({'kind': 'fcn'}))
    assert _published_weights(path) is None
    assert _published_weights(tmp_path) is None


def test_missing_or_bad_norm_factor(tmp_path):
    write_weights(tmp_path / 'last.h5')
    with pytest.raises(MissingInputError) as err:
        pub.description(tmp_path / 'last.h5')
    assert err.value.exit_code == 66 and 'NormFactor.mat' in str(err.value)
    savemat(str(tmp_path / 'NormFactor.mat'), {'CosTrnMean': np.zeros((1, 3))})
    with pytest.raises(UsageError, match='CosTrnMean and CosTrnStd'):
        pub.description(tmp_path / 'last.h5')
    write_norm(tmp_path / 'NormFactor.mat', std=(0.03, 0.0))
    with pytest.raises(UsageError, match='std > 0'):
        pub.description(tmp_path / 'last.h5')


def test_evaluate_takes_the_published_weights(files, model):
    """qsmprep-train evaluate accepts the .h5 as a method and predicts through the port."""
    from qsmprep.dl.evaluate import resolve_methods

    (method,) = resolve_methods([str(files['weights'])])
    assert method.name == 'modlqsmpublished' and method.kind == 'model'
    assert len(method.meta['sha256']) == 64
    from types import SimpleNamespace

    rng = np.random.default_rng(3)
    mask = np.zeros((16, 16, 16), bool)
    mask[3:13, 3:13, 3:13] = True
    case = SimpleNamespace(field=rng.normal(0, 0.01, mask.shape) * mask, mask=mask,
                           b0_direction=(0.0, 0.0, 1.0), voxel_size=(1.0, 1.0, 1.0))
    chi, _ = method.predict(case)
    assert chi.shape == mask.shape and np.isfinite(chi).all() and not chi[~mask].any()
    assert np.abs(chi[mask]).max() > 0
