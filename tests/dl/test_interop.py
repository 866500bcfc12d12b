"""Interoperability: a saved ``.keras`` model loads with ``keras.saving.load_model(path)`` in a
fresh process after one ``import qsmprep.dl.layers`` (which registers the custom layers), and
``.weights.h5`` files load into a freshly built model.

Keras 3 (checked with 3.15) imports the module recorded in a layer's config only for its own
packages (``keras``, ``keras_hub``, ``keras_cv``, ``keras_nlp``); for any other package the
class has to be registered first.  The test pins that behaviour too, so the documented
instructions (docs/learning.md) stay true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip('keras')
pytest.importorskip('tensorflow')

from qsmprep.dl.models import build_fcn, build_modl, build_swin_unet  # noqa: E402

#: Runs in a fresh interpreter: only keras is imported by the script itself.
LOADER = r'''
import json, sys
import numpy as np
import keras
mods = sorted(m for m in sys.modules if m.startswith('qsmprep'))
if sys.argv[4] == 'import':
    import qsmprep.dl.layers  # noqa: F401  (registers the custom layers)
try:
    model = keras.saving.load_model(sys.argv[1])
except TypeError as exc:
    print(json.dumps({'error': str(exc)[:200]}))
    sys.exit(0)
names = sorted({type(layer).__module__ + '.' + type(layer).__name__ for layer in model.layers
                if type(layer).__module__.startswith('qsmprep')})
data = np.load(sys.argv[2])
x = {k: data[k] for k in data.files}
out = model.predict(x if len(model.inputs) > 1 else x[sorted(x)[0]], verbose=0)
out = out[0] if isinstance(out, (list, tuple)) else out
np.save(sys.argv[3], np.asarray(out))
print(json.dumps({'before': mods, 'custom': names}))
'''


@pytest.mark.slow
@pytest.mark.parametrize('build', [
    lambda: build_fcn(width=4, depth=1),
    lambda: build_modl(width=4, levels=1, iterations=1, margin=8),
    lambda: build_swin_unet(crop=(32, 32), embed_dim=8, depths=(1, 1, 1, 1),
                            heads=(1, 1, 2, 2), window=8, patch=2),
], ids=['fcn', 'modl', 'swin'])
def test_model_loads_with_plain_keras_in_a_fresh_process(tmp_path, build):
    model = build()
    rng = np.random.default_rng(0)
    x = {}
    for t in model.inputs:
        if len(t.shape) == 2:  # B0 direction
            x[t.name] = np.array([[0.0, 0.0, 1.0]], np.float32)
        else:
            spatial = (16, 16, 16) if len(t.shape) == 5 else (32, 32)
            x[t.name] = rng.normal(size=(1, *spatial, t.shape[-1])).astype(np.float32)
    path = tmp_path / 'model.keras'
    model.save(str(path))
    model.save_weights(str(tmp_path / 'model.weights.h5'))
    np.savez(tmp_path / 'x.npz', **x)
    feed = x if len(model.inputs) > 1 else x[sorted(x)[0]]
    ref = model.predict(feed, verbose=0)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'CUDA_VISIBLE_DEVICES': '-1'}

    def load(mode):
        proc = subprocess.run([sys.executable, '-c', LOADER, str(path), str(tmp_path / 'x.npz'),
                               str(tmp_path / 'y.npy'), mode], capture_output=True, text=True,
                              env=env, cwd=str(tmp_path), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    plain = load('plain')  # Keras does not import a third-party module by itself
    assert 'error' in plain, plain  # TypeError: could not be deserialized
    info = load('import')
    assert info['before'] == []  # the script imported no qsmprep module itself
    assert info['custom'], 'expected qsmprep layers in the model'
    np.testing.assert_allclose(np.load(tmp_path / 'y.npy'), ref, rtol=1e-4, atol=1e-5)
    # weights alone round-trip into a freshly built model
    again = build()
    again.load_weights(str(tmp_path / 'model.weights.h5'))
    for a, b in zip(again.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
