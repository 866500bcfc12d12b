"""Models: serialization round trip, overfitting a tiny batch, Swin-UNet non-collapse."""

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

from qsmprep.dl import losses  # noqa: E402
from qsmprep.dl.config import label_normalization  # noqa: E402
from qsmprep.dl.data import ShardReader, read_manifest  # noqa: E402
from qsmprep.dl.models import build_fcn, build_model, build_modl, build_swin_unet  # noqa: E402
from qsmprep.dl.tfdata import to_model_inputs  # noqa: E402

SMALL_MODL = {'width': 4, 'levels': 1, 'iterations': 2, 'margin': 8}
SMALL_SWIN = {'embed_dim': 8, 'depths': (2, 1, 1, 1), 'heads': (1, 1, 2, 2), 'window': 8,
              'patch': 2, 'mlp_ratio': 2.0}


def _batch(root, n, ndim, channels):
    r = ShardReader(root, 'train')
    idx = np.linspace(0, len(r) - 1, n).astype(int)
    return to_model_inputs(r.get(idx), ndim=ndim, label_channels=channels)


def _fit(model, inputs, label, *, steps, lr, scale, ssim_weight=0.0):
    keras.utils.set_random_seed(0)
    opt = keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pred = model(inputs, training=True)
            loss = losses.training_loss(label, pred, inputs['mask'], scale=scale,
                                        ssim_weight=ssim_weight)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return [float(step()) for _ in range(steps)]


@pytest.mark.parametrize('kind', ['modl', 'swin', 'fcn'])
def test_save_load_gives_identical_outputs(tmp_path, kind, dataset3d, dataset2d):
    man = read_manifest(dataset2d if kind == 'swin' else dataset3d)
    params = {'modl': SMALL_MODL, 'swin': {**SMALL_SWIN, 'crop': (32, 32)},
              'fcn': {'width': 4, 'depth': 2}}[kind]
    model = build_model(kind, man, **params)
    ndim = 2 if kind == 'swin' else 3
    inputs, _ = _batch(dataset2d if kind == 'swin' else dataset3d, 2, ndim, None)
    inputs = {k: v for k, v in inputs.items() if k in model.input}
    before = model(inputs, training=False).numpy()
    model.save(tmp_path / 'm.keras')
    loaded = keras.models.load_model(tmp_path / 'm.keras', compile=False)
    after = loaded(inputs, training=False).numpy()
    assert np.any(before != 0)
    np.testing.assert_array_equal(before, after)
    assert len(loaded.get_weights()) == len(model.get_weights())


def test_modl_structure_and_normalisation():
    m = build_modl(channels=2, iterations=3, label_mean=[0.01, 0.0], label_std=[0.05, 0.01],
                   **{k: v for k, v in SMALL_MODL.items() if k != 'iterations'})
    # one shared CNN and one step size t, however many iterations
    assert sum(isinstance(layer, keras.Model) for layer in m.layers) == 1
    assert [w.path for w in m.weights if w.path.endswith('/t')] == ['gradient_step/t']
    x = {'field': tf.zeros((1, 8, 8, 8, 1)), 'mask': tf.ones((1, 8, 8, 8, 1)),
         'b0': tf.constant([[0.0, 0.0, 1.0]]), 'voxel_size': tf.ones((1, 3))}
    assert m(x).shape == (1, 8, 8, 8, 2)
    x['mask'] = tf.zeros((1, 8, 8, 8, 1))
    assert np.all(m(x).numpy() == 0)  # zero outside the mask
    with pytest.raises(ValueError, match='channels'):
        build_modl(channels=3)


@pytest.mark.slow
def test_modl_overfits_a_tiny_batch(dataset3d):
    man = read_manifest(dataset3d)
    inputs, label = _batch(dataset3d, 2, 3, 2)
    model = build_model('modl', man, **SMALL_MODL)
    scale = label_normalization(man, 2)[1]
    hist = _fit(model, inputs, label, steps=60, lr=3e-3, scale=scale)
    # stated factor: the masked L1 (normalised units) falls at least 3x in 60 Adam steps
    assert hist[-1] < hist[0] / 3, hist[::10]


@pytest.mark.slow
def test_swin_unet_does_not_collapse(dataset2d):
    """The thesis' Swin-UNet produced near-zero maps; with normalised inputs/labels, a masked
    loss and shallow down-sampling the output keeps the label's contrast."""
    man = read_manifest(dataset2d)
    inputs, label = _batch(dataset2d, 8, 2, 1)
    model = build_model('swin', man, crop=(32, 32), **SMALL_SWIN)
    hist = _fit(model, inputs, label, steps=40, lr=2e-3, ssim_weight=0.05,
                scale=man['normalization']['label']['std'])
    pred = model(inputs, training=False).numpy()
    m = inputs['mask'] > 0
    ratio = pred[m].std() / label[m].std()
    assert ratio > 0.5, (ratio, hist[::10])
    assert hist[-1] < 0.6 * hist[0]
    corr = np.corrcoef(pred[m], label[m])[0, 1]
    assert corr > 0.7, corr


def test_swin_blocks_shift_and_window_rules():
    m = build_swin_unet(crop=(32, 32), **SMALL_SWIN)
    blocks = {layer.name: layer for layer in m.layers if layer.name.startswith('enc')}
    assert blocks['enc0_block1'].shift_size == 4 and blocks['enc0_block0'].shift_size == 0
    # stage 3 runs at 32 / (2·8) = 2×2: the window shrinks to the map and the shift is dropped
    assert blocks['enc3_block0'].win == 2
    with pytest.raises(ValueError):
        build_swin_unet(crop=(40, 40), **SMALL_SWIN)


def test_fcn_is_fully_convolutional():
    m = build_fcn(ndim=3, width=4, depth=2)
    for shape in ((1, 8, 9, 10, 1), (2, 5, 5, 5, 1)):
        x = {'field': tf.ones(shape), 'mask': tf.ones(shape), 'b0': tf.zeros((shape[0], 3)),
             'voxel_size': tf.ones((shape[0], 3))}
        assert m({k: v for k, v in x.items() if k in m.input}).shape == shape


#: Builder keywords that build_model sets from the dataset manifest (or that name the model).
FROM_MANIFEST = {'channels', 'crop', 'ndim', 'field_std', 'label_mean', 'label_std', 'name'}


@pytest.mark.parametrize(('kind', 'builder'), [('modl', build_modl),
                                               ('swin', build_swin_unet), ('fcn', build_fcn)])
def test_default_params_name_every_tunable_builder_keyword(kind, builder):
    """--dl-model-params / --model-params accept exactly the builder's hyper-parameters: the
    defaults' keys are its keywords minus those taken from the manifest, with equal values."""
    import inspect

    from qsmprep.dl.config import DEFAULT_MODEL_PARAMS, TrainConfig

    sig = inspect.signature(builder).parameters
    assert set(DEFAULT_MODEL_PARAMS[kind]) == set(sig) - FROM_MANIFEST
    for name, value in DEFAULT_MODEL_PARAMS[kind].items():
        default = sig[name].default
        assert value == (list(default) if isinstance(default, tuple) else default), name
    with pytest.raises(ValueError, match='nope is not a parameter of the'):
        TrainConfig(model=kind, model_params={'nope': 1})
